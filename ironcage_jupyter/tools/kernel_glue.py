"""How the wrapper kernel plugs in the tools subsystem (wired in kernel.py with a few calls):

    self.tools = kernel_glue.build_session(self)        # _build_stages (in __init__)
    stages = [kernel_glue.CellBudgetStage(self.tools), ..., ExecuteStage(self)]
    await kernel_glue.ensure_started(self)               # _launch_child, before child.start()
    await kernel_glue.on_tools_comm(self, event, content)    # on_wrapper_comm, target "ironcage.tools"
    await kernel_glue.shutdown(self)                     # _shutdown_child
    "tools": kernel_glue.status(self)                    # status_info
    # importing this module registers `%ironcage tool` and `%ironcage tools`

`start_tools` chains the child's command wrapper: at every child start the tool channel (and, when
egress is on, the egress proxy) also listen inside the child's runtime dir — which the sandbox binds
read-write — and the child's environment gets their paths (plus HTTP(S)_PROXY and the CA bundle),
their names added to the sandbox's `pass_env`; with egress the child starts the in-sandbox bridge
through ipykernel's exec_lines.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from types import SimpleNamespace
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


CHILD_ENV_NAMES = ("IRONCAGE_TOOLS_SOCKET", "IRONCAGE_EGRESS_SOCKET", "IRONCAGE_EGRESS_PORT", "HTTP_PROXY",
                   "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy", "PIP_PROXY", "SSL_CERT_FILE",
                   "REQUESTS_CA_BUNDLE", "PIP_CERT", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")


def make_escalator(kernel: Any) -> Any:
    """Ask the human at the notebook when the policy escalates a tool call made by the running cell.

    Only calls from a cell whose request allows stdin can be asked about; anything else (comm calls,
    magics, cells without stdin) is denied, as escalation without a handler is."""

    async def escalate(request: Any, decision: Any) -> bool:
        cell = getattr(kernel, "_current_cell", None)
        if request.call.origin != "cell" or cell is None or not getattr(cell, "allow_stdin", False):
            return False
        shown = ", ".join(f"{v.role} {v.canonical}" for v in request.roled) or "no path or URL arguments"
        prompt = (f"Iron Cage: the policy asks before the tool call {request.name} ({shown}): "
                  f"{decision.reason or 'needs approval'}. Allow once? [y/N] ")
        # The tool channel's task does not carry the shell request's context: name the cell's route.
        route = getattr(cell, "notes", {}).get("route")
        if route is None:
            return False
        ident = getattr(route, "ident", None)
        if isinstance(ident, list) and ident and isinstance(ident[0], list):
            # main@2dc2f70 wraps the shell ident list in another list, which zmq cannot send.
            ident = [frame for part in ident for frame in (part if isinstance(part, list) else [part])]
        answer = await kernel.ask_frontend(prompt, route=SimpleNamespace(parent=route.parent, ident=ident))
        return answer.strip().lower() in ("y", "yes")

    return escalate


def build_session(kernel: Any) -> ToolSession:
    """The session's tools, from the kernel's policy when one is loaded (else: every tool denied)."""
    policy_session = getattr(kernel, "policy_session", None)
    engine = getattr(policy_session, "engine", None)
    policy = getattr(engine, "policy", None)
    settings = getattr(policy, "tools", None)
    budgets = getattr(policy, "budgets", None)
    kwargs: dict[str, Any] = {}
    if engine is not None:
        from .adapters import EnginePolicy, engine_network_decider, engine_server_network_decider

        kwargs["policy"] = EnginePolicy(engine)
        kwargs["decide_network"] = engine_network_decider(engine)
        kwargs["decide_server_network"] = engine_server_network_decider(engine)
    network = getattr(policy, "network", None)
    allowlist: list[str] = []
    if network is not None:
        ports = list(getattr(network, "ports", None) or [443, 80])
        for item in [*network.allow_domains, *network.allow_addresses]:
            allowlist += [f"[{item}]:{p}" if ":" in str(item) else f"{item}:{p}" for p in ports]
    credential_session = getattr(kernel, "credentials", None)  # credentials.session.CredentialSession
    broker = getattr(credential_session, "broker", None)
    if broker is not None and hasattr(broker, "swap_sentinels"):
        from .adapters import BrokeredCredentials

        kwargs["credentials"] = BrokeredCredentials(broker)
    if credential_session is not None and hasattr(credential_session, "screen_reply"):
        from .adapters import output_screen_from

        kwargs["screen_output"] = output_screen_from(credential_session)
    audit = getattr(kernel, "audit", None)
    if audit is None or not hasattr(audit, "record"):
        from .hooks import MemoryAudit

        audit = MemoryAudit()  # until the audit store is wired into the kernel
    escalation = getattr(policy, "escalation", None)
    return ToolSession(settings, budgets, audit=audit, workspace=str(kernel.workspace), egress_allowlist=allowlist,
                       escalate=make_escalator(kernel),
                       escalation_timeout_s=float(getattr(escalation, "timeout_s", 120.0)), **kwargs)


async def ensure_started(kernel: Any) -> None:
    """Once per session, before the first child start. Egress runs only when the child is sandboxed
    (its own network namespace) and the policy allows some host."""
    session: ToolSession | None = getattr(kernel, "tools", None)
    if session is None or session.socket_dir is not None:
        return
    egress = getattr(kernel, "sandbox", None) is not None and bool(session.allowlist.entries)
    await start_tools(kernel, session, egress=egress)
    policy = session.broker.policy
    if hasattr(policy, "register_tools"):  # the engine must know every tool (MCP ones are listed now)
        policy.register_tools(session.broker.schemas())


async def shutdown(kernel: Any) -> None:
    session: ToolSession | None = getattr(kernel, "tools", None)
    if session is not None:
        with contextlib.suppress(Exception):
            await session.close()


def status(kernel: Any) -> dict[str, Any]:
    session: ToolSession | None = getattr(kernel, "tools", None)
    if session is None:
        return {"state": "not configured"}
    return {"tools": len(session.broker.schemas()), "egress": session.egress is not None,
            "mcp_failures": dict(session.mcp_failures), **session.budget_tracker.snapshot()}


async def start_tools(kernel: Any, session: ToolSession, socket_dir: str | None = None,
                      bridge_port: int = BRIDGE_PORT, egress: bool = True) -> None:
    """Start the session's servers and chain the child's command wrapper (call before the child starts)."""
    directory = socket_dir or tempfile.mkdtemp(prefix="ironcage-tools-")
    await session.start(directory, egress=egress)

    def current_cell() -> dict[str, Any]:
        cell = getattr(kernel, "_current_cell", None)
        return {"cell_id": getattr(cell, "cell_id", None)}

    session.channel.context = current_cell
    kernel.tools = session
    sandbox = getattr(kernel, "sandbox", None)
    isolation = getattr(sandbox, "isolation", None)
    if isolation is not None and hasattr(isolation, "pass_env"):
        isolation.pass_env.extend(n for n in CHILD_ENV_NAMES if n not in isolation.pass_env)
    previous = kernel.child.command_wrapper

    def wrapper(argv: list[str], env: dict[str, str], runtime_dir: Path) -> tuple[list[str], dict[str, str]]:
        # Listeners inside this child's runtime dir (bound into its sandbox), and the environment for them.
        env = {**env, **session.listen_in(str(runtime_dir), bridge_port)}
        if session.egress is not None:
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
    flush = getattr(getattr(session, "audit", None), "flush", None)
    if flush is not None:
        # No cell end follows a comm call: hand its (already chained) outcome record to the store's
        # background writer now, after the reply.
        with contextlib.suppress(Exception):
            flush(wait=False)


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
