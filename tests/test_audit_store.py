"""The audit writer: hash chain, durability, schema validation and fail-closed behaviour, on real DuckDB files."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import duckdb
import pytest

from ironcage_jupyter.audit import AuditEventError, AuditStore, AuditWriteError, EventType
from ironcage_jupyter.audit.events import genesis_hash
from ironcage_jupyter.audit.verify import verify

# One valid detail per event type: every kind of event the kernel records.
EXAMPLES: dict[str, dict] = {
    "session_start": {
        "policy_name": "default",
        "isolation": {
            "process": "active",
            "filesystem": "active",
            "network": "active",
            "syscall": "degraded",
        },
        "isolation_reasons": {"syscall": "seccomp unavailable"},
        "limits": {"memory_mb": 4096},
        "workspace": "/work/nb",
        "user_name": "ada",
        "pid": 4242,
    },
    "cell_submitted": {
        "cell_id": "c-1",
        "execution_count": 1,
        "code_sha256": hashlib.sha256(b"print(1)").hexdigest(),
        "code_redacted": "print(1)",
        "origin": "agent",
    },
    "firewall_findings": {
        "cell_id": "c-1",
        "findings": [
            {"finding_id": "IC101", "category": "exec", "severity": "high", "line": 1, "message": "exec"}
        ],
        "finding_count": 1,
    },
    "policy_decision": {"subject": "cell", "cell_id": "c-1", "rules": ["deny-exec"]},
    "escalation": {"state": "answered", "escalation_id": "e1", "answer": "deny", "answered_by": "ada"},
    "execution": {"cell_id": "c-1", "status": "ok", "duration_ms": 12.5, "max_rss_kb": 51200},
    "output_redaction": {"cell_id": "c-1", "detector": "aws_access_key", "count": 2},
    "credential_access": {"credential_name": "GITHUB_TOKEN", "scope": "tool", "granted": False},
    "tool_call": {
        "gen_ai.tool.name": "http_get",
        "gen_ai.tool.call.id": "call-7",
        "arguments_redacted": {"url": "https://example.org", "token": "[REDACTED]"},
        "status": "ok",
        "duration_ms": 40.0,
        "result_size_bytes": 512,
    },
    "violation": {"kind": "sandbox_denial", "layer": "network", "message": "connect refused"},
    "policy_change": {"old_policy": "default", "new_policy": "strict", "changed_by": "ada"},
    "isolation": {
        "outcome": "degraded",
        "mode": "bubblewrap",
        "layers": {"process": "active", "filesystem": "active", "network": "degraded", "syscall": "active"},
        "reasons": {"network": "held by netns, seccomp; missing landlock"},
        "required_layers": ["process", "filesystem", "network", "syscall"],
        "selftest_ms": 96.0,
    },
    "audit_query": {
        "interface": "sql_magic",
        "sql_redacted": "SELECT count(*) FROM events",
        "sql_sha256": "0" * 64,
        "status": "ok",
        "row_count": 1,
        "duration_ms": 3.5,
    },
    "session_end": {"status": "normal", "cells_run": 1},
}


def test_every_event_type_has_an_example() -> None:
    assert set(EXAMPLES) == {t.value for t in EventType}


def test_chain_links_each_event_to_the_stored_canonical_bytes_of_the_previous(tmp_path) -> None:
    store = AuditStore(tmp_path, "s1")
    events = [
        store.record(
            kind, decision="deny" if kind == "policy_decision" else None, detail=detail, durable=False
        )
        for kind, detail in EXAMPLES.items()
    ]
    store.close()
    assert [e.seq for e in events] == list(range(1, len(EXAMPLES) + 1))
    assert events[0].prev_hash == genesis_hash("s1")
    con = duckdb.connect(str(tmp_path / "sessions" / "s1.duckdb"), read_only=True)
    rows = con.execute("SELECT seq, prev_hash, hash, canonical FROM events ORDER BY seq").fetchall()
    con.close()
    previous = genesis_hash("s1")
    for (seq, prev_hash, digest, canonical), event in zip(rows, events, strict=True):
        assert hashlib.sha256(canonical.encode()).hexdigest() == digest == event.hash
        assert prev_hash == previous == json.loads(canonical)["prev_hash"]
        assert json.loads(canonical)["seq"] == seq
        # canonical form: sorted keys, compact separators
        assert canonical == json.dumps(
            json.loads(canonical), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        previous = digest
    assert verify(tmp_path).exit_code == 0
    # the returned event re-serialises to exactly the stored bytes
    assert [hashlib.sha256(e.canonical().encode()).hexdigest() for e in events] == [r[2] for r in rows]


def test_tool_call_detail_uses_opentelemetry_genai_names(tmp_path) -> None:
    with AuditStore(tmp_path, "s1") as store:
        event = store.record("tool_call", decision="allow", detail=EXAMPLES["tool_call"], durable=True)
    assert event.detail["gen_ai.operation.name"] == "execute_tool"
    assert event.detail["gen_ai.tool.name"] == "http_get"
    assert event.detail["gen_ai.tool.call.id"] == "call-7"


def test_durable_event_is_committed_before_record_returns_and_carries_the_batch(tmp_path) -> None:
    store = AuditStore(tmp_path, "s1")
    store.record("output_redaction", detail=EXAMPLES["output_redaction"], durable=False)
    store.record("execution", detail=EXAMPLES["execution"], durable=False)
    assert store.pending_count == 2
    store.record("violation", detail=EXAMPLES["violation"], durable=True)
    assert store.pending_count == 0
    # Another process sees all three already (it must snapshot: the writer still holds the file).
    from ironcage_jupyter.audit import AuditQuery

    with AuditQuery(tmp_path) as query:
        assert query.run_trusted("SELECT count(*) FROM events").rows == [(3,)]
    store.close()


@pytest.mark.parametrize("event_type", sorted(t.value for t in EventType if t.value != "execution"))
def test_decision_classes_are_durable_even_if_the_caller_says_otherwise(tmp_path, event_type) -> None:
    store = AuditStore(tmp_path, "s1")
    decision = "deny" if event_type in {"policy_decision", "credential_access", "tool_call"} else None
    store.record(event_type, decision=decision, detail=EXAMPLES[event_type], durable=False)
    expect_durable = decision is not None or event_type not in {
        "cell_submitted",
        "firewall_findings",
        "output_redaction",
        "tool_call",
    }
    assert (store.pending_count == 0) is expect_durable
    store.close()


def test_batched_events_are_flushed_at_cell_end_and_when_the_batch_is_full(tmp_path) -> None:
    store = AuditStore(tmp_path, "s1", batch_size=5)
    for _ in range(4):
        store.record("output_redaction", detail=EXAMPLES["output_redaction"], durable=False)
    assert store.pending_count == 4
    store.record("output_redaction", detail=EXAMPLES["output_redaction"], durable=False)
    assert store.pending_count == 0
    store.record("output_redaction", detail=EXAMPLES["output_redaction"], durable=False)
    assert store.flush() == 1
    store.close()


def test_audit_dir_and_files_are_private(tmp_path) -> None:
    audit_dir = tmp_path / "audit"
    with AuditStore(audit_dir, "s1") as store:
        store.record("violation", detail=EXAMPLES["violation"], durable=True)
        assert stat.S_IMODE(os.stat(audit_dir).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(audit_dir / "sessions").st_mode) == 0o700
        assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    # an existing, too-open directory is tightened
    os.chmod(audit_dir, 0o755)
    AuditStore(audit_dir, "s2").close()
    assert stat.S_IMODE(os.stat(audit_dir).st_mode) == 0o700


def test_reopening_a_session_continues_its_chain(tmp_path) -> None:
    with AuditStore(tmp_path, "s1") as store:
        store.record("execution", detail=EXAMPLES["execution"])
        head = store.last_hash
    with AuditStore(tmp_path, "s1") as store:
        event = store.record("execution", detail=EXAMPLES["execution"])
    assert (event.seq, event.prev_hash) == (2, head)
    assert verify(tmp_path).exit_code == 0


def test_concurrent_threads_keep_one_gapless_chain(tmp_path) -> None:
    store = AuditStore(tmp_path, "s1", batch_size=64)

    def work(i: int) -> None:
        for n in range(200):
            durable = n % 25 == 0
            store.record("output_redaction", detail={"detector": f"t{i}", "count": n}, durable=durable)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    report = verify(tmp_path)
    assert report.exit_code == 0, report.render()
    assert report.sessions[0].events == 800


@pytest.mark.parametrize(
    ("event_type", "detail", "decision"),
    [
        ("no_such_type", {}, None),
        ("violation", {"kind": "not-a-kind"}, None),
        ("credential_access", {"credential_name": "X", "granted": True, "value": "hunter2"}, None),
        ("execution", {"status": "ok"}, "maybe"),
    ],
)
def test_malformed_events_are_refused_and_stop_the_store(tmp_path, event_type, detail, decision) -> None:
    store = AuditStore(tmp_path, "s1")
    with pytest.raises(AuditEventError):
        store.record(event_type, decision=decision, detail=detail, durable=True)
    with pytest.raises(AuditWriteError):
        store.record("execution", detail=EXAMPLES["execution"], durable=True)
    store.close()


def test_invalid_session_ids_are_refused(tmp_path) -> None:
    for bad in ["../escape", "a/b", "", ".hidden", "x" * 200]:
        with pytest.raises(ValueError):
            AuditStore(tmp_path, bad)


def test_full_disk_under_the_journal_fails_the_durable_record(tmp_path) -> None:
    sessions = tmp_path / "sessions"
    sessions.mkdir(mode=0o700)
    os.symlink("/dev/full", sessions / "s1.journal")  # the journal's appends land on a full device
    store = AuditStore(tmp_path, "s1")
    with pytest.raises(AuditWriteError, match="No space left"):
        store.record("violation", detail=EXAMPLES["violation"], durable=True)
    assert store.failed is not None
    with pytest.raises(AuditWriteError, match="earlier failure"):
        store.record("execution", detail=EXAMPLES["execution"], durable=False)
    store.close()


def test_full_disk_under_duckdb_fails_the_next_call(tmp_path) -> None:
    store = AuditStore(tmp_path, "s1")
    # The WAL does not exist between commits after open; make the next DuckDB write land on a full disk.
    os.symlink("/dev/full", f"{store.path}.wal")
    store.record("violation", detail=EXAMPLES["violation"], durable=True)  # durable in the journal
    with pytest.raises(AuditWriteError, match="No space left"):
        store.flush()
    assert store.failed is not None
    with pytest.raises(AuditWriteError, match="earlier failure"):
        store.record("execution", detail=EXAMPLES["execution"], durable=False)
    store.close()
    # what the journal made durable survives and is replayed once the disk is usable again
    os.unlink(f"{store.path}.wal")
    with AuditStore(tmp_path, "s1") as reopened:
        assert reopened.last_seq == 1


def test_removed_audit_file_raises_instead_of_writing_into_an_unlinked_inode(tmp_path) -> None:
    store = AuditStore(tmp_path, "s1")
    store.record("execution", detail=EXAMPLES["execution"], durable=True)
    os.unlink(store.path)
    with pytest.raises(AuditWriteError, match="removed"):
        store.record("policy_decision", decision="allow", detail=EXAMPLES["policy_decision"])
    store.close()


def test_replaced_audit_file_raises(tmp_path) -> None:
    store = AuditStore(tmp_path, "s1")
    store.record("output_redaction", detail=EXAMPLES["output_redaction"], durable=False)
    os.rename(store.path, tmp_path / "moved.duckdb")
    (tmp_path / "sessions" / "s1.duckdb").write_bytes(b"")
    with pytest.raises(AuditWriteError, match="replaced"):
        store.flush()
    store.close()


def test_unwritable_audit_location_fails_at_open(tmp_path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the audit dir should be")
    with pytest.raises(AuditWriteError, match="cannot create the audit directory"):
        AuditStore(blocker / "audit", "s1")


def test_timestamps_come_from_the_clock_in_utc(tmp_path) -> None:
    moment = datetime(2026, 3, 1, 12, 0, tzinfo=UTC) + timedelta(microseconds=5)
    with AuditStore(tmp_path, "s1", clock=lambda: moment) as store:
        event = store.record("execution", detail=EXAMPLES["execution"])
    assert event.ts == "2026-03-01T12:00:00.000005Z"


def test_background_flush_commits_without_blocking_and_failures_surface_on_the_next_call(tmp_path) -> None:
    store = AuditStore(tmp_path, "s1")
    store.record("execution", detail=EXAMPLES["execution"], durable=False)
    assert store.flush(wait=False) == 1
    # the next synchronous call is serialised behind the background commit
    store.flush()
    assert store.pending_count == 0
    store.record("output_redaction", detail=EXAMPLES["output_redaction"], durable=False)
    os.unlink(store.path)
    try:
        with pytest.raises(AuditWriteError, match="removed"):
            # Raises here if an earlier background request already hit the missing file...
            store.flush(wait=False)
            # ...otherwise the next call, serialised behind the background commit, must.
            store.record("policy_decision", decision="allow", detail=EXAMPLES["policy_decision"])
    finally:
        store.close()
    assert store.failed is not None


def _stored(path) -> list[tuple]:
    """Every column of a session file's events except the ones that depend on the random event id
    (event_id, prev_hash, hash), the canonical bytes parsed without those."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = con.execute(
            "SELECT * EXCLUDE (event_id, prev_hash, hash, canonical, ts, purged_at), epoch_us(ts), "
            "purged_at IS NULL, canonical FROM events ORDER BY seq"
        ).fetchall()
    finally:
        con.close()
    out = []
    for *columns, canonical in rows:
        signed = json.loads(canonical)
        del signed["event_id"], signed["prev_hash"]
        out.append((*columns, signed))
    return out


def test_a_large_batch_through_arrow_stores_what_the_appender_stores(tmp_path) -> None:
    """A batch of ARROW_MIN_ROWS or more goes through the struct-array Arrow path, a smaller one
    through the Appender: every column (typed promoted copies, nulls, non-ASCII text) must come
    out the same, and the result must verify."""
    from ironcage_jupyter.audit.store import ARROW_MIN_ROWS

    def fill(store: AuditStore) -> None:
        for n in range(ARROW_MIN_ROWS + 44):
            event_type = list(EXAMPLES)[n % len(EXAMPLES)]
            detail = dict(EXAMPLES[event_type])
            if event_type == "credential_access":
                detail["granted"] = n % 2 == 0
            if event_type == "tool_call":
                detail["arguments_redacted"] = {"q": f"Zürich ✓ {n}", "quote": 'say "hi"\n'}
            store.record(
                event_type, rule=f"r{n % 3}" if n % 5 else None, reason="naïve \\ reason", detail=detail
            )

    def clock() -> Callable[[], datetime]:
        moments = (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(microseconds=7 * n) for n in range(10_000))
        return lambda: next(moments)

    arrow = AuditStore(tmp_path / "arrow", "s1", batch_size=10_000, clock=clock())
    fill(arrow)
    assert arrow.flush() >= ARROW_MIN_ROWS
    arrow.close()
    small = AuditStore(tmp_path / "appender", "s1", batch_size=ARROW_MIN_ROWS // 4, clock=clock())
    fill(small)
    small.close()
    got = _stored(tmp_path / "arrow" / "sessions" / "s1.duckdb")
    want = _stored(tmp_path / "appender" / "sessions" / "s1.duckdb")
    assert len(got) == ARROW_MIN_ROWS + 44
    assert got == want
    assert {row[-1]["event_type"] for row in got} == set(EXAMPLES)
    assert verify(tmp_path / "arrow").exit_code == 0


def test_gc_pause_nests_across_threads_and_respects_a_disabled_collector() -> None:
    import gc

    from ironcage_jupyter.audit.store import _gc_paused

    assert gc.isenabled()
    inside, release = threading.Event(), threading.Event()

    def other() -> None:
        with _gc_paused():
            inside.set()
            release.wait(10)

    worker = threading.Thread(target=other)
    worker.start()
    assert inside.wait(10)
    with _gc_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other thread is still converting its batch
    release.set()
    worker.join()
    assert gc.isenabled()
    gc.disable()  # someone else's choice: never overridden
    try:
        with _gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
