"""Tampering with closed session files by direct SQL: verify must name each kind, and exit non-zero."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from ironcage_jupyter.audit import AuditStore
from ironcage_jupyter.audit.schema import EVENT_COLUMNS_V1
from ironcage_jupyter.audit.verify import verify

# The columns of format 1; a forged row copies the rest (the promoted detail columns) from its source.
_V1 = "(" + ", ".join(f"'{c}'" for c in EVENT_COLUMNS_V1) + ")"

ROOT = Path(__file__).resolve().parents[1]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def audit_dir(tmp_path: Path) -> Path:
    """Two closed sessions of 12 events each, alternating decisions and batched events."""
    for session in ("alpha", "beta"):
        with AuditStore(tmp_path, session) as store:
            for n in range(12):
                if n % 2:
                    store.record(
                        "policy_decision",
                        decision="deny",
                        rule="no-network",
                        reason="egress to unknown host",
                        detail={"subject": "network", "target": f"host{n}.example:443"},
                        durable=True,
                    )
                else:
                    store.record("output_redaction", detail={"detector": "aws", "count": n}, durable=False)
    return tmp_path


def tamper(audit_dir: Path, session: str, *statements: str, params: list | None = None) -> None:
    con = duckdb.connect(str(audit_dir / "sessions" / f"{session}.duckdb"))
    for statement in statements:
        con.execute(statement, params) if params else con.execute(statement)
    con.close()


def row(audit_dir: Path, session: str, seq: int) -> dict:
    con = duckdb.connect(str(audit_dir / "sessions" / f"{session}.duckdb"), read_only=True)
    cur = con.execute("SELECT * EXCLUDE (ts), ts::VARCHAR AS ts FROM events WHERE seq = ?", [seq])
    names = [d[0] for d in cur.description]
    values = cur.fetchone()
    con.close()
    return dict(zip(names, values, strict=True))


def session_report(audit_dir: Path, session: str = "alpha"):
    report = verify(audit_dir)
    other = [s for s in report.sessions if s.session_id != session]
    assert all(s.status == "ok" for s in other), report.render()  # tampering stays local to its session
    (found,) = [s for s in report.sessions if s.session_id == session]
    assert report.exit_code == 1, report.render()
    return found


def test_untouched_log_verifies(audit_dir) -> None:
    report = verify(audit_dir)
    assert report.exit_code == 0, report.render()
    assert [(s.session_id, s.events, s.anchored) for s in report.sessions] == [
        ("alpha", 12, True),
        ("beta", 12, True),
    ]


def test_modified_column_is_detected(audit_dir) -> None:
    tamper(audit_dir, "alpha", "UPDATE events SET decision = 'allow' WHERE seq = 4")
    assert session_report(audit_dir).modified == [4]


def test_modified_canonical_bytes_are_detected(audit_dir) -> None:
    tamper(
        audit_dir, "alpha", "UPDATE events SET canonical = replace(canonical, 'host5', 'evil5') WHERE seq = 6"
    )
    assert session_report(audit_dir).modified == [6]


def test_modified_event_with_recomputed_hash_is_detected(audit_dir) -> None:
    original = row(audit_dir, "alpha", 6)
    forged = json.loads(original["canonical"])
    forged["decision"] = "allow"
    canonical = json.dumps(forged, sort_keys=True, separators=(",", ":"))
    tamper(
        audit_dir,
        "alpha",
        "UPDATE events SET decision = 'allow', canonical = ?, hash = ? WHERE seq = 6",
        params=[canonical, _sha(canonical)],
    )
    assert session_report(audit_dir).modified == [6]


def test_deleted_event_is_detected(audit_dir) -> None:
    tamper(audit_dir, "alpha", "DELETE FROM events WHERE seq IN (5, 6)")
    assert session_report(audit_dir).deleted == [5, 6]


def test_deleted_first_event_is_detected(audit_dir) -> None:
    tamper(audit_dir, "alpha", "DELETE FROM events WHERE seq = 1")
    assert session_report(audit_dir).deleted == [1]


def test_truncated_tail_is_detected_through_the_close_anchor(audit_dir) -> None:
    tamper(audit_dir, "alpha", "DELETE FROM events WHERE seq >= 11")
    assert session_report(audit_dir).deleted == [11, 12]


def test_deleted_session_file_is_detected_through_the_close_anchor(audit_dir) -> None:
    (audit_dir / "sessions" / "alpha.duckdb").unlink()
    found = session_report(audit_dir)
    assert found.deleted[:3] == [1, 2, 3]
    assert "missing" in found.problems[0]


def test_inserted_event_with_a_duplicate_seq_is_detected(audit_dir) -> None:
    victim = row(audit_dir, "alpha", 7)
    forged = json.loads(victim["canonical"])
    forged["event_id"] = "00000000-0000-0000-0000-000000000000"
    forged["decision"] = "allow"
    canonical = json.dumps(forged, sort_keys=True, separators=(",", ":"))
    tamper(
        audit_dir,
        "alpha",
        "INSERT INTO events SELECT ?, ts, session_id, seq, event_type, 'allow', rule, reason, cell_id, name, "
        "prev_hash, ?, ?, NULL, COLUMNS(lambda c: c NOT IN " + _V1 + ") FROM events WHERE seq = 7",
        params=[forged["event_id"], _sha(canonical), canonical],
    )
    found = session_report(audit_dir)
    assert found.inserted == [7]
    assert not found.deleted and not found.reordered


def test_event_appended_after_close_is_detected_even_when_correctly_chained(audit_dir) -> None:
    last = row(audit_dir, "alpha", 12)
    forged = json.loads(last["canonical"])
    forged.update(seq=13, prev_hash=last["hash"], event_id="11111111-1111-1111-1111-111111111111")
    canonical = json.dumps(forged, sort_keys=True, separators=(",", ":"))
    tamper(
        audit_dir,
        "alpha",
        "INSERT INTO events SELECT ?, ts, session_id, 13, event_type, decision, rule, reason, cell_id, name, "
        "?, ?, ?, NULL, COLUMNS(lambda c: c NOT IN " + _V1 + ") FROM events WHERE seq = 12",
        params=[forged["event_id"], last["hash"], _sha(canonical), canonical],
    )
    assert session_report(audit_dir).inserted == [13]


def test_reordered_events_are_detected(audit_dir) -> None:
    tamper(
        audit_dir,
        "alpha",
        "UPDATE events SET seq = CASE seq WHEN 3 THEN 8 WHEN 8 THEN 3 END WHERE seq IN (3, 8)",
    )
    found = session_report(audit_dir)
    assert found.reordered == [3, 8]
    assert not found.deleted and not found.inserted


def test_event_moved_from_another_session_is_detected(audit_dir) -> None:
    foreign = row(audit_dir, "beta", 4)
    tamper(audit_dir, "alpha", "DELETE FROM events WHERE seq = 4")
    tamper(
        audit_dir,
        "alpha",
        f"INSERT INTO events ({', '.join(EVENT_COLUMNS_V1)}) "
        "VALUES (?, ?::TIMESTAMPTZ, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
        params=[
            foreign["event_id"],
            foreign["ts"],
            "alpha",
            4,
            foreign["event_type"],
            foreign["decision"],
            foreign["rule"],
            foreign["reason"],
            foreign["cell_id"],
            foreign["name"],
            foreign["prev_hash"],
            foreign["hash"],
            foreign["canonical"],
        ],
    )
    assert 4 in session_report(audit_dir).modified


def test_content_removed_outside_a_purge_is_detected(audit_dir) -> None:
    tamper(audit_dir, "alpha", "UPDATE events SET canonical = NULL, purged_at = now() WHERE seq = 9")
    found = session_report(audit_dir)
    assert any("purge log" in p for p in found.problems)


def test_verify_cli_exit_status_says_so(audit_dir) -> None:
    command = [
        sys.executable,
        "-m",
        "ironcage_jupyter.audit.cli",
        "audit",
        "--audit-dir",
        str(audit_dir),
        "verify",
    ]
    clean = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert clean.returncode == 0, clean.stderr
    assert "2/2 sessions verified" in clean.stdout
    tamper(audit_dir, "beta", "UPDATE events SET reason = 'nothing to see' WHERE seq = 2")
    dirty = subprocess.run([*command, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert dirty.returncode == 1
    report = {s["session_id"]: s for s in json.loads(dirty.stdout)}
    assert report["beta"]["status"] == "TAMPERED" and report["beta"]["modified"] == [2]
    assert report["alpha"]["status"] == "ok"


def test_corrupt_session_file_is_an_error_not_a_crash(audit_dir) -> None:
    (audit_dir / "sessions" / "gamma.duckdb").write_bytes(b"not a database at all" * 100)
    report = verify(audit_dir)
    statuses = {s.session_id: s.status for s in report.sessions}
    assert statuses == {"alpha": "ok", "beta": "ok", "gamma": "error"}
    assert report.exit_code == 2


def test_a_foreign_database_in_the_sessions_dir_is_reported_not_fatal(audit_dir) -> None:
    con = duckdb.connect(str(audit_dir / "sessions" / "foreign.duckdb"))
    con.execute("CREATE TABLE events (event_id VARCHAR, whatever INTEGER)")
    con.close()
    report = verify(audit_dir)
    statuses = {s.session_id: s.status for s in report.sessions}
    assert statuses == {"alpha": "ok", "beta": "ok", "foreign": "error"}
    assert report.exit_code == 2


def test_clean_sessions_are_proven_by_the_fast_path(audit_dir) -> None:
    """The one-scan path must prove an untouched session by itself (the precise path is the fallback)."""
    from ironcage_jupyter.audit.query import AuditQuery
    from ironcage_jupyter.audit.verify import _fast_chain, _fast_fields

    with AuditQuery(audit_dir) as query:
        cursor = query.cursor()
        assert _fast_fields(cursor, query.attached) == {"s0": 0, "s1": 0}
        head = _fast_chain(cursor, query.attached["alpha"], "alpha")
        cursor.close()
    assert head is not None and head[0] == 1


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("target", "'elsewhere.example:443'"),
        ("duration_ms", "1.5"),
        ("granted", "true"),
        ("ts", "ts + INTERVAL 1 MICROSECOND"),  # the signed ts is compared in Arrow on the fast path
    ],
)
def test_modified_promoted_detail_column_is_detected(audit_dir, column: str, value: str) -> None:
    # The typed copies of detail fields are what queries filter on: they must match the signed bytes.
    tamper(audit_dir, "alpha", f"UPDATE events SET {column} = {value} WHERE seq = 4")  # noqa: S608
    found = session_report(audit_dir)
    assert found.modified == [4]
    assert not found.deleted and not found.inserted and not found.reordered


def test_a_format_1_file_is_queried_and_verified(audit_dir) -> None:
    """A session file written before the promoted columns existed: the views compute them from the
    canonical bytes, verify checks its envelope columns."""
    from ironcage_jupyter.audit.query import AuditQuery
    from ironcage_jupyter.audit.schema import PROMOTED_COLUMNS
    from ironcage_jupyter.audit.verify import _fast_fields

    path = audit_dir / "sessions" / "alpha.duckdb"
    tamper(audit_dir, "alpha", *(f"ALTER TABLE events DROP COLUMN {c}" for c in PROMOTED_COLUMNS))
    con = duckdb.connect(str(path), read_only=True)
    assert [r[0] for r in con.execute("DESCRIBE events").fetchall()] == list(EVENT_COLUMNS_V1)
    con.close()
    assert verify(audit_dir).exit_code == 0
    with AuditQuery(audit_dir) as query:
        cursor = query.cursor()
        assert _fast_fields(cursor, query.attached) == {"s0": 0, "s1": 0}  # proven without the fallback
        cursor.close()
        rows = query.sql(
            "SELECT session_id, count(*) FROM events WHERE target LIKE 'host%' GROUP BY ALL ORDER BY 1"
        ).rows
    assert rows == [("alpha", 6), ("beta", 6)]
    tamper(audit_dir, "alpha", "UPDATE events SET reason = 'benign' WHERE seq = 2")
    assert session_report(audit_dir).modified == [2]


def test_the_cli_allocator_setting_applies_on_glibc_only_in_its_own_process() -> None:
    """`audit verify` keeps freed memory for reuse (glibc mallopt) in its own process; the library
    call itself leaves the allocator alone (a kernel process must not inherit it)."""
    code = (
        "import platform, inspect\n"
        "from ironcage_jupyter.audit import verify as v\n"
        "assert 'keep_freed_memory_for_scans' not in inspect.getsource(v.verify)\n"
        "assert v.keep_freed_memory_for_scans() is (platform.libc_ver()[0] == 'glibc')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
