"""The audit panel's feed over a real audit store (DuckDB files written by AuditStore)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from ironcage_jupyter.ui import AuditQuery, UiBridge
from ironcage_jupyter.ui.audit_feed import audit_panel_query

audit = pytest.importorskip("ironcage_jupyter.audit")
if not hasattr(audit, "AuditStore"):  # the audit package lands on main separately
    pytest.skip("ironcage_jupyter.audit.AuditStore not available in this tree", allow_module_level=True)


def _fill(audit_dir: Path, session_id: str, cells: list[tuple[str, str, str]]) -> Any:
    store = audit.AuditStore(audit_dir, session_id)
    for cell_id, decision, rule in cells:
        store.record("policy_decision", decision=decision, rule=rule, reason=f"{decision} by {rule}",
                     detail={"subject": "cell", "cell_id": cell_id, "rules": [rule]}, durable=True)
    return store


def test_session_scope_filters_and_newest_first(tmp_path: Path) -> None:
    mine = _fill(tmp_path, "session-a", [("c1", "allow", "cells"), ("c2", "deny", "deny-dangerous"),
                                         ("c3", "escalate", "shell-escapes")])
    other = _fill(tmp_path, "session-b", [("x1", "deny", "deny-exfiltration")])
    other.close()
    query = audit_panel_query(tmp_path, "session-a", live_store=lambda: mine)
    try:
        events, total = query(AuditQuery(limit=10))
        assert total == 3
        assert [e["cell_id"] for e in events] == ["c3", "c2", "c1"]
        assert {e["session_id"] for e in events} == {"session-a"}
        events, total = query(AuditQuery(limit=10, decision="deny"))
        assert total == 1 and events[0]["rule"] == "deny-dangerous"
        events, total = query(AuditQuery(limit=10, decision="deny", scope="all"))
        assert total == 2 and {e["session_id"] for e in events} == {"session-a", "session-b"}
        events, total = query(AuditQuery(limit=1))
        assert total == 3 and len(events) == 1
        events, total = query(AuditQuery(limit=10, event_type="tool_call"))
        assert (events, total) == ([], 0)
    finally:
        mine.close()


async def test_bridge_answers_the_panel_from_the_store(tmp_path: Path) -> None:
    store = _fill(tmp_path, "session-a", [("c1", "deny", "deny-dangerous")])
    sent: list[dict[str, Any]] = []
    bridge = UiBridge(lambda comm_id, data, parent: sent.append(data), session_id="session-a",
                      audit_query=audit_panel_query(tmp_path, "session-a", live_store=store))
    try:
        await bridge.handle("open", {"comm_id": "c", "target_name": "ironcage.ui", "data": {"type": "hello"}})
        await bridge.handle("msg", {"comm_id": "c", "data": {"type": "audit_request", "request_id": "r1"}})
        reply = next(m for m in sent if m["type"] == "audit_events")
        (event,) = reply["events"]
        assert event["event_type"] == "policy_decision" and event["decision"] == "deny"
        assert event["cell_id"] == "c1" and event["seq"] >= 1 and event["ts"]
    finally:
        store.close()
    assert asyncio.get_running_loop()


def test_panel_reads_are_recorded_as_audit_queries(tmp_path: Path) -> None:
    from functools import partial

    from ironcage_jupyter.audit.integration import record_query

    store = _fill(tmp_path, "session-a", [("c1", "deny", "deny-dangerous"), ("c2", "allow", "cells")])
    query = audit_panel_query(
        tmp_path, "session-a", live_store=store, record_query=partial(record_query, store.record)
    )
    try:
        events, total = query(AuditQuery(limit=1, decision="deny"))
        assert total == 1 and len(events) == 1
        events, _total = query(AuditQuery(limit=10, event_type="audit_query"))
        (recorded,) = [e for e in events if e["event_type"] == "audit_query"]  # the first read, not this one
        with audit.AuditQuery(tmp_path, live_store=store) as q:
            rows = q.run_trusted(
                "SELECT detail->>'interface', detail->>'status', (detail->>'row_count')::INT, detail->>'sql_redacted' "
                "FROM events WHERE event_type = 'audit_query' ORDER BY seq"
            ).rows
        assert [r[:3] for r in rows] == [("ui_panel", "ok", 1), ("ui_panel", "ok", 1)]
        assert "decision=deny" in rows[0][3] and "limit=1" in rows[0][3]
        assert recorded["seq"] == 3
    finally:
        store.close()


def test_a_panel_read_that_cannot_be_recorded_returns_no_rows(tmp_path: Path) -> None:
    store = _fill(tmp_path, "session-a", [("c1", "deny", "deny-dangerous")])

    def refuse(**_kwargs: Any) -> None:
        raise audit.AuditWriteError("the audit log cannot be written")

    query = audit_panel_query(tmp_path, "session-a", live_store=store, record_query=refuse)
    try:
        with pytest.raises(audit.AuditWriteError):
            query(AuditQuery(limit=10))
    finally:
        store.close()
