"""Sandbox events land in the session's DuckDB audit log, through the real ironcage kernel: the
self-test's verdict (each layer active / degraded / missing), a refusal when a required layer is
missing, and the `unsafe` opt-in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sandbox_support import Bait
from sandbox_wrapper import Wrapper, module_bait

from ironcage_jupyter.audit import AuditQuery

pytestmark = pytest.mark.timeout(240)
LAYERS = {"process", "filesystem", "network", "syscall"}


bait = module_bait("sandbox-audit")


def _session(w: Wrapper) -> str:
    return w.status()["audit"]["session_id"]


def _rows(bait: Bait, session_id: str, sql_where: str) -> list[dict]:
    with AuditQuery(Path(bait.root / "ironcage-audit")) as query:
        result = query.run_trusted(
            "SELECT event_type, decision, rule, reason, name, detail FROM events "
            f"WHERE session_id = ? AND {sql_where} ORDER BY seq",
            [session_id],
        )
    out = []
    for event_type, decision, rule, reason, name, detail in result.rows:
        out.append({"event_type": event_type, "decision": decision, "rule": rule, "reason": reason,
                    "name": name, "detail": json.loads(detail) if isinstance(detail, str) else detail})
    return out


def test_selftest_verdict_is_audited_once_per_session(bait):
    w = Wrapper(bait)
    try:
        assert w.run("print(6 * 7)").stdout.strip() == "42"
        status = w.status()
        session = status["audit"]["session_id"]
        # A crash and restart reuse the cached self-test: no second verdict.
        w.run("import os\nos.kill(os.getpid(), 9)", timeout=60)
        assert w.responsive()
    finally:
        w.close()
    events = _rows(bait, session, "event_type = 'isolation'")
    assert len(events) == 1, events
    event = events[0]
    detail = event["detail"]
    assert set(detail["layers"]) == LAYERS
    assert detail["layers"] == status["isolation"]  # what %ironcage status shows, on the record
    expected = "active" if set(detail["layers"].values()) == {"active"} else "degraded"
    assert event["name"] == detail["outcome"] == expected
    assert event["decision"] is None and detail["unsafe"] is False
    assert detail["mode"] == "bubblewrap" and detail["missing_required"] == []
    assert set(detail["required_layers"]) == LAYERS
    assert all(detail["reasons"][layer] for layer in LAYERS)
    assert "seccomp" in detail["mechanisms"]["syscall"]
    assert detail["selftest_ms"] > 0


def test_missing_required_layer_is_audited_as_a_refusal(bait):
    w = Wrapper(bait, sandbox={"disabled": ["filesystem"]})
    try:
        ex = w.run("print('should not run')")
        assert ex.status == "error" and ex.error["ename"] == "IronCageUnavailable"
        session = _session(w)
    finally:
        w.close()
    events = _rows(bait, session, "event_type = 'isolation'")
    assert len(events) == 1, events
    event = events[0]
    assert event["name"] == "refused" and event["decision"] == "deny"
    assert event["rule"] == "isolation.required_layers"
    assert "required layer 'filesystem' is missing" in event["reason"]
    assert event["detail"]["layers"]["filesystem"] == "missing"
    assert event["detail"]["missing_required"] == ["filesystem"]
    violations = _rows(bait, session, "event_type = 'violation'")
    assert [(v["name"], v["detail"]["layer"], v["decision"]) for v in violations] == [
        ("selftest_failure", "filesystem", "deny")
    ]
    assert "canary" in violations[0]["detail"]["message"]  # the probe's evidence, in words
    # The refused cell is on the record as not run.
    executions = _rows(bait, session, "event_type = 'execution'")
    statuses = [e["detail"]["status"] for e in executions]
    assert statuses and "ok" not in statuses, statuses


def test_unsafe_opt_in_is_audited_loudly(bait):
    w = Wrapper(bait, sandbox={"disabled": ["filesystem"], "isolation": {"unsafe": True}})
    try:
        assert w.run("print('runs anyway')").stdout.strip() == "runs anyway"
        session = _session(w)
    finally:
        w.close()
    events = _rows(bait, session, "event_type = 'isolation'")
    assert len(events) == 1, events
    event = events[0]
    assert event["name"] == "unsafe" and event["decision"] == "allow" and event["rule"] == "isolation.unsafe"
    assert event["reason"].startswith("UNSAFE MODE")
    assert "required layer 'filesystem' is missing" in event["reason"]
    assert event["detail"]["unsafe"] is True and event["detail"]["missing_required"] == ["filesystem"]
    # The opt-in is a decision: it shows up with the other decisions of the session.
    with AuditQuery(Path(bait.root / "ironcage-audit")) as query:
        decisions = query.run_trusted(
            "SELECT rule FROM decisions WHERE session_id = ? AND event_type = 'isolation'", [session]
        ).rows
    assert decisions == [("isolation.unsafe",)]


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every live process below ``pid``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[tuple[int, str]] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        try:
            cmdline = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        found.append((child, cmdline))
        todo.extend(children.get(child, []))
    return found


def test_a_verdict_that_cannot_be_recorded_refuses_the_launch(bait):
    """The isolation verdict is durable before any child is used: when it cannot be written (here
    the session's journal disappears between the session start and the child's launch), the launch
    is refused, no child is left running, nothing reaches a child, and the user is told why."""
    w = Wrapper(bait, ready=False)  # no kernel_info yet: the child has not been launched
    try:
        # A %ironcage magic builds the components but starts no child; the recorded audit read
        # returns only once the session start is on disk.
        ex = w.run("%ironcage audit --last 1")
        assert ex.status == "ok", ex.text
        session = _session(w)
        assert w.status()["child_state"] == "starting" and _descendants(w.pid) == []
        journal = bait.root / "ironcage-audit" / "sessions" / f"{session}.journal"
        assert journal.stat().st_size > 0
        journal.unlink()  # the audit can no longer be written durably
        # is_complete waits for the launch (the first one, started by this request) and is answered
        # by the child only if it started.
        msg_id = w.kc.is_complete("x = (")
        reply = w.kc.get_shell_msg(timeout=120)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "unknown", reply["content"]  # no child answered
        status = w.status()
        assert status["child_state"].startswith("unavailable: the isolated child kernel could not start")
        assert "audit" in status["child_state"] and "was removed" in status["child_state"]
        assert status["audit"]["state"].startswith("FAILED"), status["audit"]
        assert _descendants(w.pid) == [], "a child was left running without a recorded verdict"
        # Every later cell is refused, naming the audit failure; nothing ran.
        marker = bait.workspace / "ran-without-a-verdict"
        ex = w.run(f"open({marker.name!r}, 'w').write('ran')")
        assert ex.status == "error"
        assert ex.error["ename"] == "IronCageUnavailable" or ex.error["ename"].startswith("Audit"), ex.error
        assert "audit" in ex.error["evalue"] and "was removed" in ex.error["evalue"], ex.error
        assert not marker.exists()
        # Asking again does not start a child either (the failed audit is a verdict, like a
        # missing layer), and the kernel still answers.
        w.kc.is_complete("y = (")
        assert w.kc.get_shell_msg(timeout=120)["content"]["status"] == "unknown"
        assert _descendants(w.pid) == []
        assert w.status()["restarts"] == 0
    finally:
        w.close()
