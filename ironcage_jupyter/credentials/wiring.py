"""How the wrapper kernel plugs in the credential session and the output firewall.

``kernel.py`` calls, at its hook points: ``make_session`` (in ``__init__``), ``CredentialStage`` /
``OutputFinishStage`` (around the execute stage), ``screen_child_output`` (``_screen_output``, every
child message), ``prepare_child_launch`` (before each child start), ``session.status()``
(``status_info``). Importing this module registers ``%%ironcage with-secret``.
"""

from __future__ import annotations

import asyncio
import os
import shlex
from typing import TYPE_CHECKING, Any

from ..magics import MagicResult, subcommand
from ..outputs.settings import OutputSettings
from ..pipeline import Block, CellRequest
from ..relay import Route
from ..sandbox.settings import ResourceLimits
from .broker import AuditCallback, CredentialRefused
from .session import CredentialSession
from .settings import CredentialSettings
from .sources import SecretsFileSource, default_sources

if TYPE_CHECKING:
    from ..kernel import IronCageKernel

SILENT_TIMEOUT_S = 30.0
NO_OUTPUT_LIMIT = 2**62


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


def screen_child_output(
    kernel: IronCageKernel, session: CredentialSession, msg_type: str, content: dict[str, Any], route: Route
) -> dict[str, Any] | None:
    """The relay's screen for every child message: the screened content, or None to withhold it.
    A notice (withheld image, truncation, failure) is shown to the user on stderr."""
    result = session.screen(msg_type, content)
    if result.notice:
        _notice(kernel, result.notice, route.parent)
    return result.content


def screen_child_buffers(
    kernel: IronCageKernel, session: CredentialSession, msg_type: str, buffers: list[Any], route: Route
) -> bool:
    """The relay's screen for binary buffers: True forwards them, False withholds the message."""
    result = session.screen_buffers(msg_type, buffers)
    if result.notice:
        _notice(kernel, result.notice, route.parent)
    return not result.withheld


def make_session(
    kernel: IronCageKernel,
    policy: Any | None = None,
    audit_callback: AuditCallback | None = None,
) -> CredentialSession:
    """The session's broker and firewall. Settings from the loaded policy (``policy.credentials``,
    ``policy.outputs``, ``policy.limits``); without a policy: no grants, default detectors and no
    output size limit (as the kernel has no cell timeout without a policy). Sources read the wrapper's
    launch environment; the secrets file is the kernel's ``secrets_file`` trait."""
    if policy is not None:
        credentials, outputs, limits = policy.credentials, policy.outputs, policy.limits
    else:
        credentials, outputs = CredentialSettings(), OutputSettings()
        limits = ResourceLimits(output_max_bytes=NO_OUTPUT_LIMIT)
    sources = dict(default_sources(os.environ, credentials.vault_mount))
    sources["file"] = SecretsFileSource(getattr(kernel, "secrets_file", "") or None)
    return CredentialSession(credentials, outputs, limits, audit_callback, sources=sources)


def prepare_child_launch(session: CredentialSession, child: Any, *, replacing: bool) -> None:
    """Before (re)starting the child: a replaced child's memory and the taint are gone; the new
    child gets the sentinels (leases renewed)."""
    if replacing:
        session.child_restarted()
    child.env_overrides.update(session.child_env_overrides())


@subcommand("with-secret", "run this cell with the named secrets in its environment (taints the session)")
async def _with_secret(kernel: IronCageKernel, argstring: str, body: str | None) -> MagicResult:
    """``%%ironcage with-secret NAME[,NAME]``: the body runs through the whole pipeline with
    ``cell.secrets`` set; the credentials stage injects and the finish stage removes them."""
    if body is None:
        return MagicResult.fail("with-secret is a cell magic: %%ironcage with-secret NAME[,NAME]")
    if getattr(kernel, "credentials", None) is None:
        return MagicResult.fail("no credential session is configured", name="CredentialRefused")
    names = [n for part in shlex.split(argstring) for n in part.split(",") if n]
    if not names:
        return MagicResult.fail("name at least one secret: %%ironcage with-secret NAME[,NAME]")
    parent = kernel.get_parent("shell") or {}
    request = parent.get("content") or {}
    metadata = parent.get("metadata") or {}
    cell = CellRequest(
        code=body,
        silent=bool(request.get("silent", False)),
        store_history=bool(request.get("store_history", True)),
        user_expressions=request.get("user_expressions") or {},
        allow_stdin=bool(request.get("allow_stdin", False)),
        cell_id=metadata.get("cellId"),
        metadata=metadata,
        execution_count=kernel.execution_count,
        secrets=names,
    )
    kernel._current_cell = cell
    try:
        await kernel.pipeline.run(cell)
    finally:
        kernel._current_cell = None
    if cell.block is not None:
        failed = MagicResult.fail(cell.block.evalue, name=cell.block.ename, details=[cell.block.reason or ""])
        failed.cell = cell
        return failed
    return MagicResult(reply=cell.reply, cell=cell)
