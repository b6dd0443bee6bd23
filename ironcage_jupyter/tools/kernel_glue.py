"""How the wrapper kernel plugs in the tools subsystem (the lead calls these; kernel.py stays his).

    from .tools import kernel_glue
    # IronCageKernel._build_stages() (runs in __init__): build the session, add the cell-budget stage
    self.tools = ToolSession(policy.tools, policy.budgets, audit=..., workspace=self.workspace, ...)
    stages = [kernel_glue.CellBudgetStage(self.tools), ..., ExecuteStage(self)]
    # IronCageKernel._launch_child(), before the FIRST child start (once per session, on the main loop):
    await kernel_glue.start_tools(self, self.tools)
    # IronCageKernel.on_wrapper_comm(event, content), for comms whose target is "ironcage.tools":
    await kernel_glue.on_tools_comm(self, event, content)
    # IronCageKernel.do_shutdown(): await self.tools.close()
    # magics: importing this module registers `%ironcage tool` and `%ironcage tools`
    (tests/tools_kernel.py is a working example of all of it)

`start_tools` sets `kernel.tools`, adds the child's environment (tool socket, proxy, CA bundle) to
`kernel.child.env_overrides`, and chains a command wrapper that makes the child kernel start the
in-sandbox egress bridge (ipykernel exec_lines) — the sandbox launcher must bind
`session.sandbox_binds()` (the socket directory, read-write, same path) into the sandbox.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

from ..magics import MagicResult, subcommand
from ..pipeline import Block, CellRequest
from . import audit_events
from .session import ToolSession

TOOLS_COMM_TARGET = "ironcage.tools"
BRIDGE_PORT = 3128
BRIDGE_EXEC_LINE = (
    "--IPKernelApp.exec_lines=['from ironcage_jupyter.tools.egress_bridge import start_bridge_from_env as _b; "
    "_b(); del _b']"
)


async def start_tools(kernel: Any, session: ToolSession, socket_dir: str | None = None,
                      bridge_port: int = BRIDGE_PORT, egress: bool = True) -> None:
    """Start the session's servers and prepare the child's environment (call before the child starts)."""
    directory = socket_dir or tempfile.mkdtemp(prefix="ironcage-tools-")
    await session.start(directory, egress=egress)

    def current_cell() -> dict[str, Any]:
        cell = getattr(kernel, "_current_cell", None)
        return {"cell_id": getattr(cell, "cell_id", None)}

    session.channel.context = current_cell
    kernel.tools = session
    kernel.child.env_overrides.update(session.child_environment(bridge_port))
    if session.egress is not None:
        previous = kernel.child.command_wrapper

        def wrapper(argv: list[str], env: dict[str, str], runtime_dir: Path) -> tuple[list[str], dict[str, str]]:
            # The bridge must run inside the sandbox, so it joins the child's own argv before wrapping.
            argv = [*argv, BRIDGE_EXEC_LINE]
            if previous is not None:
                return previous(argv, env, runtime_dir)
            return argv, env

        kernel.child.command_wrapper = wrapper


async def on_tools_comm(kernel: Any, event: str, content: dict[str, Any]) -> None:
    """Answer a comm message on target `ironcage.tools`: the reply goes back on the same comm."""
    if event != "msg":
        return
    session: ToolSession | None = getattr(kernel, "tools", None)
    data = content.get("data")
    if session is None:
        reply: dict[str, Any] = {"ok": False, "refusal": {"rule": "tools.unavailable",
                                                          "reason": "tools are not configured", "stage": "channel"}}
    else:
        reply = await session.handle_comm_request(data)
    if isinstance(data, dict) and "id" in data and "id" not in reply:
        reply["id"] = data["id"]
    kernel.send_comm_msg(content["comm_id"], reply)


class CellBudgetStage:
    """Pipeline stage: cells per minute (the session's budget); refused cells are blocked with the rule."""

    name = "budgets"
    always = False

    def __init__(self, session: ToolSession) -> None:
        self.session = session

    async def run(self, cell: CellRequest) -> None:
        verdict = self.session.budget_tracker.check_cell()
        for warning in verdict.warnings:
            with contextlib.suppress(Exception):
                self.session.audit.record(
                    audit_events.POLICY_DECISION, decision="allow", rule="budget.warning", reason=warning,
                    detail=audit_events.cell_decision_detail(cell_id=cell.cell_id, rules=["budget.warning"]))
        if not verdict.allowed:
            self.session.audit.record(
                audit_events.POLICY_DECISION, decision="deny", rule=verdict.rule, reason=verdict.reason,
                detail=audit_events.cell_decision_detail(cell_id=cell.cell_id, rules=[verdict.rule or "budget"]),
                durable=True)
            cell.block = Block(ename="BudgetExceeded", evalue=verdict.reason or "budget exhausted",
                               rule=verdict.rule, reason=verdict.reason)


def _session_of(kernel: Any) -> ToolSession | None:
    return getattr(kernel, "tools", None)


@subcommand("tools", "tools available to this session (built-ins, MCP servers) and what the policy does")
async def _tools_magic(kernel: Any, argstring: str, body: str | None) -> MagicResult:
    session = _session_of(kernel)
    if session is None:
        return MagicResult.fail("tools are not configured in this session", "IronCageError")
    text, markup = session.tools_table()
    return MagicResult.text(text, html_text=markup)


@subcommand("tool", "run one tool call: %ironcage tool NAME [--args JSON]")
async def _tool_magic(kernel: Any, argstring: str, body: str | None) -> MagicResult:
    session = _session_of(kernel)
    if session is None:
        return MagicResult.fail("tools are not configured in this session", "IronCageError")
    result = await session.run_magic("tool " + argstring)
    if result["ok"]:
        return MagicResult(data=result["data"])
    outcome = result.get("outcome") or {}
    refusal = outcome.get("refusal") or {}
    return MagicResult.fail(result["data"]["text/plain"], "ToolRefused" if refusal else "UsageError",
                            [f"rule: {refusal['rule']}"] if refusal else [])
