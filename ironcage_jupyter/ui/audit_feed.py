"""Feed the JupyterLab audit panel from the audit store (``ironcage_jupyter.audit``).

    bridge.audit_query = audit_panel_query(audit_dir, session_id, live_store=store)

Each panel request opens a read-only :class:`ironcage_jupyter.audit.AuditQuery` (which flushes the
session's buffered events first), runs two parameterised queries written here (never user SQL) and
closes it. The rows become the protocol's ``audit_events`` shape (docs/ui-protocol.md). With
``record_query`` (the kernel passes its audit's ``audit_query``), every panel read is itself recorded
as an ``audit_query`` event (interface ``ui_panel``) before its rows are returned, like the magics'
reads; if it cannot be recorded, the panel gets an error, not the rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
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
    audit_dir: str | Path,
    session_id: str,
    *,
    live_store: Any = None,
    record_query: Callable[..., Any] | None = None,
) -> Callable[[AuditQuery], tuple[list[dict[str, Any]], int]]:
    """A ``UiBridge.audit_query`` callable over the audit directory of this kernel.

    ``live_store``: this session's ``AuditStore`` (its buffered events are flushed before the query),
    or a zero-argument callable returning it (or None) when the store opens in the background.
    ``record_query``: called as ``record_query(interface="ui_panel", text=..., started=...,
    output=... | error=...)`` for every read; whatever it raises is raised instead of the rows.
    """

    def run(query: AuditQuery) -> tuple[list[dict[str, Any]], int]:
        from ..audit import AuditQuery as StoreQuery  # type: ignore[attr-defined,unused-ignore]

        where, params = _where(query, session_id)
        sessions = [session_id] if query.scope == "session" else None
        live = live_store() if callable(live_store) else live_store
        sql = (
            "SELECT seq, ts, session_id, event_type, decision, rule, reason, "  # noqa: S608
            f"detail->>'cell_id' AS cell_id, {_SUMMARY} AS summary "
            f"FROM events {where} ORDER BY ts DESC, seq DESC LIMIT ?"
        )
        text = f"-- audit panel: {_describe(query)}\n{sql}"
        started = time.monotonic()
        try:
            with StoreQuery(audit_dir, live_store=live, sessions=sessions) as store:
                total_rows = store.run_trusted(f"SELECT count(*) FROM events {where}", params).rows  # noqa: S608
                total = int(total_rows[0][0]) if total_rows else 0
                records = store.run_trusted(sql, [*params, query.limit]).to_records()
                sessions_read = store.session_count
        except Exception as exc:
            if record_query is not None:
                record_query(interface="ui_panel", text=text, started=started, error=exc)
            raise
        if record_query is not None:  # recorded before the rows are shown
            output = SimpleNamespace(
                fetched=len(records),
                truncated=total > len(records),
                result=SimpleNamespace(sessions=sessions_read),
            )
            record_query(interface="ui_panel", text=text, started=started, output=output)
        return records, total

    return run


def _describe(query: AuditQuery) -> str:
    """The panel's filter in words, for the recorded query text (the SQL has placeholders)."""
    return (
        f"scope={query.scope} event_type={query.event_type or '*'} decision={query.decision or '*'} "
        f"limit={query.limit}"
    )
