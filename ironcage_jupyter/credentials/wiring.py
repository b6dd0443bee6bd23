"""How the wrapper kernel plugs in the credential session and the output firewall.

``install(kernel, session)`` makes every call the kernel needs, through the kernel's public hooks
(``relay.screen``, ``child.env_overrides``, the pipeline's stage list, the ``%ironcage`` subcommand
registry). It is the reference for the lead's wiring in ``kernel.py``: each step below says which
kernel hook it uses. The leak tests through the real kernel run with it installed.
"""

from __future__ import annotations

import asyncio
import shlex
from typing import TYPE_CHECKING, Any

from ..magics import MagicResult, subcommand
from ..pipeline import Block, CellRequest
from ..relay import Route
from .broker import CredentialRefused
from .session import CredentialSession

if TYPE_CHECKING:
    from ..kernel import IronCageKernel

SILENT_TIMEOUT_S = 30.0


async def run_silent_in_child(kernel: IronCageKernel, code: str, timeout: float = SILENT_TIMEOUT_S) -> None:
    """Run trusted bookkeeping code in the child: silent, not in history, outputs not forwarded.
    Raises when the child does not confirm (the caller then blocks the cell: fail closed)."""
    await kernel.ensure_child()
    route = Route(kind="ironcage-silent", parent=None, forward_outputs=False)
    kernel.relay.send(
        "shell",
        "execute_request",
        {
            "code": code,
            "silent": True,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": False,
        },
        route,
    )
    reply = await asyncio.wait_for(route.done(), timeout)
    status = reply["content"].get("status")
    if status != "ok":
        raise RuntimeError(f"the child did not apply the credential environment (status {status})")


def _publish(kernel: IronCageKernel, msg_type: str, content: dict[str, Any], parent: Any) -> None:
    kernel._publish_from_child(msg_type, content, parent, {}, [])


def _notice(kernel: IronCageKernel, text: str, parent: Any) -> None:
    _publish(kernel, "stream", {"name": "stderr", "text": text.rstrip("\n") + "\n"}, parent)


class CredentialStage:
    """Before execute: start the firewall's cell; for ``with-secret`` cells, inject the secrets."""

    name = "credentials"
    always = False

    def __init__(self, kernel: IronCageKernel, session: CredentialSession) -> None:
        self.kernel = kernel
        self.session = session

    async def run(self, cell: CellRequest) -> None:
        self.session.start_cell(cell.cell_id)
        if self.session.restart_required:
            cell.block = Block(
                ename="RestartRequired",
                evalue="a secret was injected into this kernel; the policy requires a restart before "
                "the next cell (a secret cannot be erased from a running process)",
                rule="credentials.restart_after_injection",
                reason="session tainted by a secret injection",
            )
            return
        if not cell.secrets:
            return
        try:
            env = self.session.begin_injection(cell.secrets, cell.cell_id)
        except CredentialRefused as exc:
            cell.block = Block(
                ename="CredentialRefused",
                evalue=str(exc),
                rule=f"credentials.grants.{exc.name}",
                reason=exc.reason,
            )
            return
        cell.notes["injected_env"] = sorted(env)
        await run_silent_in_child(self.kernel, self.session.injection_code(env))


class OutputFinishStage:
    """After execute (always): remove injected variables, release held stream tails."""

    name = "outputs"
    always = True

    def __init__(self, kernel: IronCageKernel, session: CredentialSession) -> None:
        self.kernel = kernel
        self.session = session

    async def run(self, cell: CellRequest) -> None:
        route = cell.notes.get("route")
        parent = route.parent if route is not None else self.kernel.get_parent("shell")
        for result in self.session.end_cell():
            if result.content is not None:
                _publish(self.kernel, "stream", result.content, parent)
            if result.notice:
                _notice(self.kernel, result.notice, parent)
        if cell.reply is not None:
            # The execute_reply comes on shell, not iopub: an error's evalue/traceback carries text too.
            cell.reply = self.session.screen_reply("execute_reply", cell.reply)
        injected = cell.notes.pop("injected_env", None)
        if injected:
            try:
                await run_silent_in_child(self.kernel, self.session.cleanup_code(injected))
            finally:
                self.session.end_injection(cell.cell_id)


def screen_hook(kernel: IronCageKernel, session: CredentialSession):
    """The relay's ``screen(msg_type, content, route) -> content | None``."""

    def screen(msg_type: str, content: dict[str, Any], route: Route) -> dict[str, Any] | None:
        result = session.screen(msg_type, content)
        if result.notice:
            _notice(kernel, result.notice, route.parent)
        return result.content

    return screen


def install(kernel: IronCageKernel, session: CredentialSession) -> None:
    """Wire ``session`` into ``kernel``. Call once, after the kernel's __init__, before the child
    starts."""
    kernel.credential_session = session  # type: ignore[attr-defined]
    # 1. every child message passes the firewall (relay hook)
    kernel.relay.screen = screen_hook(kernel, session)
    # 2. the child starts with sentinels for brokered secrets (its env is otherwise an allowlist)
    kernel.child.env_overrides.update(session.child_env_overrides())
    # 3. stages around execute: credentials before, output flush + injection cleanup after
    stages = kernel.pipeline.stages
    index = next(i for i, stage in enumerate(stages) if stage.name == "execute")
    stages.insert(index + 1, OutputFinishStage(kernel, session))
    stages.insert(index, CredentialStage(kernel, session))
    # 4. a replaced child (crash, watchdog) starts clean: its memory and the taint are gone, and it
    #    gets the sentinels again (leases renewed)
    original_launch = kernel._launch_child

    async def launch_child(ready: asyncio.Future[None], *, kill_first: bool = False) -> None:
        if kill_first:
            session.child_restarted()
        kernel.child.env_overrides.update(session.child_env_overrides())
        await original_launch(ready, kill_first=kill_first)

    kernel._launch_child = launch_child  # type: ignore[method-assign]
    # 5. %ironcage status shows grants and taint (the lead adds this key to status_info itself)
    original_status = kernel.status_info

    def status_info() -> dict[str, Any]:
        info = original_status()
        info["credentials"] = session.status()
        return info

    kernel.status_info = status_info  # type: ignore[method-assign]


@subcommand("with-secret", "run this cell with the named secrets in its environment (taints the session)")
async def _with_secret(kernel: IronCageKernel, argstring: str, body: str | None) -> MagicResult:
    """``%%ironcage with-secret NAME[,NAME]``: the body runs through the whole pipeline with
    ``cell.secrets`` set; the credentials stage injects and the finish stage removes them."""
    if body is None:
        return MagicResult.fail("with-secret is a cell magic: %%ironcage with-secret NAME[,NAME]")
    if getattr(kernel, "credential_session", None) is None:
        return MagicResult.fail("no credential session is configured", name="CredentialRefused")
    names = [n for part in shlex.split(argstring) for n in part.split(",") if n]
    if not names:
        return MagicResult.fail("name at least one secret: %%ironcage with-secret NAME[,NAME]")
    cell = CellRequest(
        code=body,
        silent=False,
        store_history=True,
        user_expressions={},
        allow_stdin=False,
        cell_id=None,
        metadata={},
        execution_count=kernel.execution_count,
        secrets=names,
    )
    await kernel.pipeline.run(cell)
    if cell.block is not None:
        return MagicResult.fail(cell.block.evalue, name=cell.block.ename, details=[cell.block.reason or ""])
    return MagicResult()
