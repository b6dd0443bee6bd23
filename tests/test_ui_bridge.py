"""The kernel side of the ironcage.ui comm: protocol handling, escalations, fail-closed answers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ironcage_jupyter.ui import (
    Approver,
    AuditQuery,
    EscalationRequest,
    IsolationStatus,
    UiBridge,
)
from ironcage_jupyter.ui.approval import parse_stdin_answer


class Frontend:
    """Records what the bridge sends, per comm id."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send(self, comm_id: str, data: dict[str, Any], parent: dict[str, Any] | None) -> None:
        self.sent.append((comm_id, data))

    def of_type(self, kind: str, comm_id: str | None = None) -> list[dict[str, Any]]:
        return [d for c, d in self.sent if d["type"] == kind and (comm_id is None or c == comm_id)]


def make_bridge(**kwargs: Any) -> tuple[UiBridge, Frontend]:
    frontend = Frontend()
    isolation = IsolationStatus(layers={"process": ("active", ""), "network": ("degraded", "no netns")})
    bridge = UiBridge(frontend.send, session_id="s1", policy="default", isolation=isolation, **kwargs)
    return bridge, frontend


async def open_comm(bridge: UiBridge, comm_id: str = "c1") -> None:
    await bridge.handle("open", {"comm_id": comm_id, "target_name": "ironcage.ui",
                                 "data": {"type": "hello", "protocol": 1}})


REQUEST = EscalationRequest(
    kind="network",
    summary="POST to collector.example.net",
    canonical="network.connect host=collector.example.net port=443",
    rules=["network.egress.unknown-host"],
    reason="not in the egress allowlist",
    cell_id="cell-1",
    msg_id="m1",
)


async def test_hello_gets_status() -> None:
    bridge, frontend = make_bridge()
    assert not bridge.attached
    await open_comm(bridge)
    assert bridge.attached
    (status,) = frontend.of_type("status")
    assert status["policy"] == "default"
    assert status["isolation"] == "degraded"
    assert status["layers"]["network"] == {"state": "degraded", "reason": "no netns"}
    assert status["counts"] == {"denied": 0, "escalated": 0, "redacted": 0}


@pytest.mark.parametrize(
    ("layers", "enabled", "expected"),
    [
        ({"a": ("active", ""), "b": ("active", "")}, True, "all"),
        ({"a": ("active", ""), "b": ("degraded", "x")}, True, "degraded"),
        ({"a": ("degraded", ""), "b": ("missing", "x")}, True, "unsafe"),
        ({}, True, "unsafe"),
        ({"a": ("active", "")}, False, "unsafe"),
    ],
)
def test_isolation_overall(layers: dict[str, tuple[str, str]], enabled: bool, expected: str) -> None:
    assert IsolationStatus(layers=layers, sandbox_enabled=enabled).overall == expected


async def test_other_targets_and_unknown_comms_are_ignored() -> None:
    bridge, frontend = make_bridge()
    await bridge.handle("open", {"comm_id": "w", "target_name": "jupyter.widget", "data": {}})
    await bridge.handle("msg", {"comm_id": "nope", "data": {"type": "status_request"}})
    assert frontend.sent == []
    assert not bridge.attached


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ({"type": "launch"}, "unknown_type"),
        ({}, "unknown_type"),
        ({"type": "audit_request", "request_id": "r1", "limit": 0}, "bad_request"),
        ({"type": "audit_request", "request_id": "r1", "limit": "10"}, "bad_request"),
        ({"type": "audit_request", "request_id": "r1", "scope": "galaxy"}, "bad_request"),
        ({"type": "audit_request", "request_id": "r1", "decision": 3}, "bad_request"),
        ({"type": "escalation_answer", "id": "esc-unknown", "answer": "once"}, "unknown_escalation"),
    ],
)
async def test_malformed_messages_get_an_error(data: dict[str, Any], code: str) -> None:
    bridge, frontend = make_bridge(audit_query=lambda q: ([], 0))
    await open_comm(bridge)
    await bridge.handle("msg", {"comm_id": "c1", "data": data})
    (error,) = frontend.of_type("error")
    assert error["code"] == code
    assert error["message"]
    if "request_id" in data:
        assert error["request_id"] == "r1"


async def test_non_dict_payload_is_an_error_not_a_crash() -> None:
    bridge, frontend = make_bridge()
    await open_comm(bridge)
    await bridge.handle("msg", {"comm_id": "c1", "data": ["not", "a", "dict"]})
    assert frontend.of_type("error")[0]["code"] == "unknown_type"


async def test_escalation_answered_from_the_ui() -> None:
    bridge, frontend = make_bridge()
    await open_comm(bridge)
    task = asyncio.create_task(bridge.escalate(REQUEST, timeout_s=10, allow_session=True))
    await asyncio.sleep(0)
    (escalation,) = frontend.of_type("escalation")
    assert escalation["canonical"] == REQUEST.canonical
    assert escalation["rules"] == REQUEST.rules
    assert escalation["allow_session"] is True
    await bridge.handle("msg", {"comm_id": "c1", "data": {"type": "escalation_answer",
                                                          "id": escalation["id"], "answer": "once"}})
    result = await task
    assert result.approved and result.answer == "once" and result.by == "ui"
    assert result.outcome == "approved_once"
    (resolved,) = frontend.of_type("escalation_resolved")
    assert resolved == {"type": "escalation_resolved", "id": escalation["id"], "answer": "once", "by": "ui"}
    assert bridge.counts.escalated == 1
    # A second answer for the same escalation is refused.
    await bridge.handle("msg", {"comm_id": "c1", "data": {"type": "escalation_answer",
                                                          "id": escalation["id"], "answer": "session"}})
    assert frontend.of_type("error")[0]["code"] == "unknown_escalation"


async def test_invalid_answer_denies() -> None:
    bridge, frontend = make_bridge()
    await open_comm(bridge)
    task = asyncio.create_task(bridge.escalate(REQUEST, timeout_s=10, allow_session=True))
    await asyncio.sleep(0)
    esc_id = frontend.of_type("escalation")[0]["id"]
    await bridge.handle("msg", {"comm_id": "c1", "data": {"type": "escalation_answer", "id": esc_id,
                                                          "answer": "always"}})
    result = await task
    assert not result.approved
    assert frontend.of_type("error")[0]["code"] == "bad_answer"


async def test_no_answer_in_time_denies() -> None:
    bridge, frontend = make_bridge()
    await open_comm(bridge)
    result = await bridge.escalate(REQUEST, timeout_s=0.01, allow_session=True)
    assert result.answer == "deny" and result.by == "timeout" and result.outcome == "timeout"
    assert frontend.of_type("escalation_resolved")[0]["by"] == "timeout"


async def test_session_answer_downgraded_when_not_allowed() -> None:
    bridge, frontend = make_bridge()
    await open_comm(bridge)
    task = asyncio.create_task(bridge.escalate(REQUEST, timeout_s=10, allow_session=False))
    await asyncio.sleep(0)
    esc = frontend.of_type("escalation")[0]
    assert esc["allow_session"] is False
    await bridge.handle("msg", {"comm_id": "c1", "data": {"type": "escalation_answer", "id": esc["id"],
                                                          "answer": "session"}})
    assert (await task).answer == "once"


async def test_reloaded_page_sees_pending_escalation_and_interrupt_denies() -> None:
    bridge, frontend = make_bridge()
    await open_comm(bridge, "old")
    task = asyncio.create_task(bridge.escalate(REQUEST, timeout_s=10, allow_session=True))
    await asyncio.sleep(0)
    await bridge.handle("close", {"comm_id": "old"})
    await open_comm(bridge, "new")
    assert len(frontend.of_type("escalation", "new")) == 1
    bridge.cancel_escalations("interrupt")
    result = await task
    assert result.answer == "deny" and result.by == "interrupt"


async def test_escalate_without_frontend_raises() -> None:
    bridge, _ = make_bridge()
    with pytest.raises(LookupError):
        await bridge.escalate(REQUEST, timeout_s=1, allow_session=True)


async def test_cell_finished_counts_and_reports() -> None:
    bridge, frontend = make_bridge()
    await open_comm(bridge)
    bridge.cell_finished(cell_id="a", msg_id="m1", decision="deny", rules=["fs.protected"], reason="ssh key",
                         findings=[{"id": "F1", "severity": "high", "line": 2, "message": "ssh"}])
    bridge.cell_finished(cell_id="b", msg_id="m2", decision="escalate", outcome="timeout")
    bridge.cell_finished(cell_id="c", msg_id="m3", decision="allow", redacted=3, outcome="ignored")
    bridge.cell_finished(cell_id="d", msg_id="m4", decision="weird")
    events = frontend.of_type("cell_event")
    assert [e["decision"] for e in events] == ["deny", "escalate", "allow", "deny"]
    assert events[0]["findings"] == [{"id": "F1", "severity": "high", "line": 2, "message": "ssh"}]
    assert events[2]["outcome"] is None
    assert frontend.of_type("status")[-1]["counts"] == {"denied": 3, "escalated": 0, "redacted": 3}
    # hello's status + one per cell that changed the counts (a, b, c, d): never one for a no-op cell
    assert len(frontend.of_type("status")) == 5
    bridge.cell_finished(cell_id="e", msg_id="m5", decision="allow")
    assert len(frontend.of_type("status")) == 5
    # the sandbox selftest finished meanwhile: the next cell carries the new isolation state
    bridge.isolation.layers = {name: ("active", "") for name in ("process", "filesystem", "network", "syscall")}
    bridge.cell_finished(cell_id="f", msg_id="m6", decision="allow")
    assert frontend.of_type("status")[-1]["isolation"] == "all"
    assert len(frontend.of_type("status")) == 6


async def test_status_follows_counts_changed_during_escalation() -> None:
    bridge, frontend = make_bridge()
    await open_comm(bridge)
    task = asyncio.create_task(bridge.escalate(REQUEST, timeout_s=10, allow_session=True))
    await asyncio.sleep(0)
    esc_id = frontend.of_type("escalation")[0]["id"]
    await bridge.handle("msg", {"comm_id": "c1", "data": {"type": "escalation_answer", "id": esc_id,
                                                          "answer": "once"}})
    await task
    bridge.cell_finished(cell_id="a", msg_id="m1", decision="escalate", outcome="approved_once")
    assert frontend.of_type("status")[-1]["counts"]["escalated"] == 1


async def test_audit_request_is_answered_with_normalised_events() -> None:
    seen: list[AuditQuery] = []

    def query(q: AuditQuery) -> tuple[list[dict[str, Any]], int]:
        seen.append(q)
        rows = [{"seq": 2, "ts": "2026-11-21T20:00:00Z", "event_type": "cell", "decision": "deny",
                 "rule": "fs.protected", "reason": "x" * 900, "summary": "y" * 400, "secret_detail": "no"}]
        return rows, 7

    bridge, frontend = make_bridge(audit_query=query)
    await open_comm(bridge)
    await bridge.handle("msg", {"comm_id": "c1", "data": {"type": "audit_request", "request_id": "r9",
                                                          "limit": 50, "decision": "deny", "scope": "all"}})
    assert seen == [AuditQuery(limit=50, event_type=None, decision="deny", scope="all")]
    (reply,) = frontend.of_type("audit_events")
    assert reply["request_id"] == "r9" and reply["total"] == 7
    event = reply["events"][0]
    assert event["seq"] == 2 and event["decision"] == "deny"
    assert len(event["summary"]) == 200 and len(event["reason"]) == 500
    assert "secret_detail" not in event


async def test_audit_without_store_or_failing_store() -> None:
    bridge, frontend = make_bridge()
    await open_comm(bridge)
    await bridge.handle("msg", {"comm_id": "c1", "data": {"type": "audit_request", "request_id": "r1"}})

    def broken(q: AuditQuery) -> tuple[list[dict[str, Any]], int]:
        raise RuntimeError("Conflicting lock")

    bridge.audit_query = broken
    await bridge.handle("msg", {"comm_id": "c1", "data": {"type": "audit_request", "request_id": "r2"}})
    errors = frontend.of_type("error")
    assert [e["code"] for e in errors] == ["audit_unavailable", "audit_unavailable"]
    assert "Conflicting lock" in errors[1]["message"]


# -- Approver: the UI when attached, stdin otherwise, deny when nobody can answer ------------------------

async def test_approver_uses_stdin_without_ui_and_remembers_session() -> None:
    bridge, _ = make_bridge()
    prompts: list[str] = []

    async def ask(prompt: str) -> str:
        prompts.append(prompt)
        return "s"

    approver = Approver(bridge, ask)
    first = await approver.approve(REQUEST, allow_stdin=True, timeout_s=5, allow_session=True)
    assert first.answer == "session" and first.by == "stdin"
    assert "collector.example.net" in prompts[0] and "[s]ession" in prompts[0]
    second = await approver.approve(REQUEST, allow_stdin=True, timeout_s=5, allow_session=True)
    assert second.by == "session" and len(prompts) == 1


async def test_approver_denies_without_any_approver() -> None:
    bridge, _ = make_bridge()
    result = await Approver(bridge, None).approve(REQUEST, allow_stdin=True, timeout_s=5, allow_session=True)
    assert result.answer == "deny" and result.by == "no_approver"

    async def ask(prompt: str) -> str:
        raise AssertionError("must not prompt when the client disallows stdin")

    result = await Approver(bridge, ask).approve(REQUEST, allow_stdin=False, timeout_s=5, allow_session=True)
    assert result.answer == "deny"


async def test_approver_stdin_timeout_denies() -> None:
    bridge, _ = make_bridge()

    async def never(prompt: str) -> str:
        await asyncio.Event().wait()
        return "o"

    result = await Approver(bridge, never).approve(REQUEST, allow_stdin=True, timeout_s=0.01, allow_session=True)
    assert result.answer == "deny" and result.by == "timeout"


@pytest.mark.parametrize(("text", "answer"), [("o", "once"), (" YES ", "once"), ("s", "session"),
                                              ("", "deny"), ("sure", "deny"), ("d", "deny")])
def test_stdin_answers(text: str, answer: str) -> None:
    assert parse_stdin_answer(text) == answer
