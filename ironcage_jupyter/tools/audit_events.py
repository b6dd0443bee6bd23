"""Audit records of the tools subsystem, shaped to the audit store's event schema (ironcage_jupyter.audit.events).

- `policy_decision` (subject tool / network / cell): recorded durably BEFORE the action it allows;
- `tool_call` (OpenTelemetry GenAI execute_tool attributes): recorded durably when the call ends;
- `violation` (kind other): an MCP server that cannot start.
Budget warnings are `policy_decision` records with decision "allow" and rule `budget.warning`.
"""

from __future__ import annotations

from typing import Any

POLICY_DECISION = "policy_decision"
TOOL_CALL = "tool_call"
VIOLATION = "violation"


def tool_type(name: str, server: str | None) -> str:
    return "extension" if server else "function"


def tool_call_detail(*, name: str, call_id: str, server: str | None, arguments: dict[str, Any], status: str,
                     duration_ms: float, result_size_bytes: int | None = None,
                     error_type: str | None = None) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": name,
        "gen_ai.tool.call.id": call_id,
        "gen_ai.tool.type": tool_type(name, server),
        "arguments_redacted": arguments,
        "status": status,
        "duration_ms": duration_ms,
    }
    if result_size_bytes is not None:
        detail["result_size_bytes"] = result_size_bytes
    if error_type is not None:
        detail["error.type"] = error_type
    if server is not None:
        detail["server"] = server
    return detail


def tool_decision_detail(*, name: str, call_id: str, cell_id: str | None, target: str | None,
                         rules: list[str], duration_ms: float | None = None) -> dict[str, Any]:
    detail: dict[str, Any] = {"subject": "tool", "gen_ai.tool.name": name, "gen_ai.tool.call.id": call_id,
                              "rules": rules}
    if cell_id:
        detail["cell_id"] = cell_id
    if target:
        detail["target"] = target[:1000]
    if duration_ms is not None:
        detail["duration_ms"] = duration_ms
    return detail


def network_decision_detail(*, host: str, port: int, rules: list[str], server: str | None = None) -> dict[str, Any]:
    """A connection's decision; `server` names the MCP server whose own proxy decided it (None: a cell's)."""
    shown = f"[{host}]" if ":" in host else host
    detail: dict[str, Any] = {"subject": "network", "target": f"{shown}:{port}", "rules": rules}
    if server:
        detail["server"] = server
    return detail


def cell_decision_detail(*, cell_id: str | None, rules: list[str]) -> dict[str, Any]:
    detail: dict[str, Any] = {"subject": "cell", "rules": rules}
    if cell_id:
        detail["cell_id"] = cell_id
    return detail


def server_failure_detail(*, server: str, message: str) -> dict[str, Any]:
    return {"kind": "other", "message": f"MCP server {server} unavailable: {message}"[:2000]}
