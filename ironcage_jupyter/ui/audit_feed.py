"""Feed the JupyterLab audit panel from the audit store (``ironcage_jupyter.audit``).

    bridge.audit_query = audit_panel_query(audit_dir, session_id, live_store=store)

Each panel request opens a read-only :class:`ironcage_jupyter.audit.AuditQuery` (which flushes the
session's buffered events first), runs two parameterised queries written here (never user SQL) and
closes it. The rows become the protocol's ``audit_events`` shape (docs/ui-protocol.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .bridge import AuditQuery

_SUMMARY = (
    "coalesce(detail->>'target', detail->>'$.\"gen_ai.tool.name\"', detail->>'credential_name', "
    "detail->>'kind', detail->>'subject')"
)


def _where(query: AuditQuery, session_id: str) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if query.scope == "session":
        clauses.append("session_id = ?")
        params.append(session_id)
    if query.event_type is not None:
        clauses.append("event_type = ?")
        params.append(query.event_type)
    if query.decision is not None:
        clauses.append("decision = ?")
        params.append(query.decision)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


def audit_panel_query(
    audit_dir: str | Path, session_id: str, *, live_store: Any = None
) -> Callable[[AuditQuery], tuple[list[dict[str, Any]], int]]:
    """A ``UiBridge.audit_query`` callable over the audit directory of this kernel.

    ``live_store``: this session's ``AuditStore`` (its buffered events are flushed before the query),
    or a zero-argument callable returning it (or None) when the store opens in the background.
    """

    def run(query: AuditQuery) -> tuple[list[dict[str, Any]], int]:
        from ..audit import AuditQuery as StoreQuery  # type: ignore[attr-defined,unused-ignore]

        where, params = _where(query, session_id)
        sessions = [session_id] if query.scope == "session" else None
        live = live_store() if callable(live_store) else live_store
        with StoreQuery(audit_dir, live_store=live, sessions=sessions) as store:
            total_rows = store.run_trusted(f"SELECT count(*) FROM events {where}", params).rows  # noqa: S608
            total = int(total_rows[0][0]) if total_rows else 0
            result = store.run_trusted(
                "SELECT seq, ts, session_id, event_type, decision, rule, reason, "  # noqa: S608
                f"detail->>'cell_id' AS cell_id, {_SUMMARY} AS summary "
                f"FROM events {where} ORDER BY ts DESC, seq DESC LIMIT ?",
                [*params, query.limit],
            )
            return result.to_records(), total

    return run
