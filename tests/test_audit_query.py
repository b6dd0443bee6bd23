"""`%%ironcage sql`, `%ironcage audit` and the read-only query path over real session files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ironcage_jupyter.audit import (
    AuditQuery,
    AuditQueryError,
    AuditSettings,
    AuditStore,
    ReadOnlyViolation,
    run_audit_magic,
    run_sql_magic,
)
from ironcage_jupyter.audit.query import check_read_only
from ironcage_jupyter.audit.verify import verify

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def live_store(tmp_path: Path):
    """One closed session and one live session (the caller's own), with every view populated."""
    with AuditStore(tmp_path, "closed-1") as old:
        old.record("session_start", detail={"policy_name": "strict"})
        old.record("violation", detail={"kind": "limit_hit", "limit": "memory_mb", "message": "<b>OOM</b>"})
        old.record("session_end", detail={"status": "crash"})
    store = AuditStore(tmp_path, "live-1")
    store.record("session_start", detail={"policy_name": "default"})
    store.record(
        "tool_call",
        decision="allow",
        rule="allow-fetch",
        reason="allowlisted host",
        detail={
            "gen_ai.tool.name": "fetch",
            "gen_ai.tool.call.id": "t1",
            "duration_ms": 3.0,
            "result_size_bytes": 9,
        },
    )
    store.record(
        "credential_access",
        decision="deny",
        rule="cred-scope",
        reason="not granted for this tool",
        detail={
            "credential_name": "GITHUB_TOKEN",
            "scope": "tool",
            "granted": False,
            "target": "api.github.com",
        },
    )
    store.record("output_redaction", detail={"detector": "github_token", "count": 1}, durable=False)
    yield store
    store.close()


def test_views_span_closed_and_live_sessions(live_store) -> None:
    with AuditQuery(live_store.audit_dir, live_store=live_store) as query:
        # the buffered redaction event was flushed by the query: nothing recorded is invisible
        assert query.sql("SELECT count(*) FROM events").rows == [(7,)]
        assert query.sql("SELECT tool_name, tool_call_id, operation_name, decision FROM tool_calls").rows == [
            ("fetch", "t1", "execute_tool", "allow")
        ]
        assert query.sql("SELECT credential_name, granted, decision, rule FROM credential_access").rows == [
            ("GITHUB_TOKEN", False, "deny", "cred-scope")
        ]
        assert query.sql('SELECT session_id, kind, "limit" FROM violations').rows == [
            ("closed-1", "limit_hit", "memory_mb")
        ]
        assert sorted(query.sql("SELECT session_id, decision FROM decisions").rows) == [
            ("live-1", "allow"),
            ("live-1", "deny"),
        ]
        sessions = dict(query.sql("SELECT session_id, policy_name FROM sessions").rows)
        assert sessions == {"closed-1": "strict", "live-1": "default"}
        columns = query.sql("SELECT * FROM events LIMIT 1").columns
        assert columns == [
            "event_id", "ts", "session_id", "seq", "event_type", "decision", "rule", "reason", "cell_id",
            "name", "detail", "prev_hash", "hash",
            # detail fields promoted to typed columns at write time (verify checks them too)
            "tool_call_id", "status", "duration_ms", "result_size_bytes", "granted", "scope", "target", "layer",
        ]  # fmt: skip
        detail = query.sql("SELECT detail FROM events WHERE event_type = 'output_redaction'").rows[0][0]
        assert json.loads(detail) == {"action": "redacted", "count": 1, "detector": "github_token"}


REFUSED = [
    "DELETE FROM events",
    "UPDATE events SET decision = 'allow'",
    "INSERT INTO events SELECT * FROM events",
    "ATTACH '/tmp/x.duckdb' AS x",
    "DETACH s0",
    "COPY (SELECT * FROM events) TO '/tmp/out.csv'",
    "EXPORT DATABASE '/tmp/dump'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "PRAGMA enable_profiling",
    "SET enable_external_access = true",
    "RESET lock_configuration",
    "CREATE TABLE t AS SELECT 1",
    "DROP VIEW events",
    "ALTER VIEW events RENAME TO e",
    "CHECKPOINT",
    "VACUUM",
    "CALL pragma_version()",
    "BEGIN TRANSACTION",
    "USE s0",
    "SELECT 1; DELETE FROM events",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_writes_and_escapes_are_refused_by_statement_type(sql) -> None:
    with pytest.raises(ReadOnlyViolation, match="read-only"):
        check_read_only(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM read_csv('/etc/hostname')",
        "SELECT * FROM glob('/root/*')",
        "SELECT * FROM read_parquet('https://example.org/x.parquet')",
    ],
)
def test_selects_that_reach_outside_the_audit_log_are_refused(live_store, sql) -> None:
    with AuditQuery(live_store.audit_dir) as query:
        with pytest.raises(AuditQueryError, match="disabled by configuration|Permission"):
            query.sql(sql)


def test_attached_files_cannot_be_written_even_past_the_parser(live_store) -> None:
    # run_trusted skips the statement filter: the connection itself must still refuse
    with AuditQuery(live_store.audit_dir) as query:
        alias = query.attached["closed-1"].alias
        with pytest.raises(AuditQueryError, match="read-only|read only"):
            query.run_trusted(f"DELETE FROM {alias}.events")
        with pytest.raises(AuditQueryError, match="locked"):
            query.run_trusted("SET enable_external_access = true")
    assert live_store.record("execution", detail={"status": "ok"}, durable=True).seq == 5


def test_sql_magic_renders_an_escaped_html_table_with_a_row_limit(live_store) -> None:
    out = run_sql_magic(
        "--limit 2",
        "SELECT seq, event_type, detail FROM events ORDER BY session_id, seq",
        audit_dir=live_store.audit_dir,
    )
    html, text = out.data["text/html"], out.data["text/plain"]
    assert html.count("<tr>") == 3  # header + 2 rows
    assert "truncated to the display limit of 2" in html and "truncated" in text
    assert "<b>OOM</b>" not in html and "&lt;b&gt;OOM&lt;/b&gt;" in html
    assert out.child_code is None
    assert out.result.truncated


def test_sql_magic_output_variable_builds_a_dataframe_in_another_interpreter(live_store) -> None:
    out = run_sql_magic(
        "-o frame",
        "SELECT ts, session_id, seq, event_type, detail, decision = 'deny' AS denied FROM events ORDER BY ts",
        audit_dir=live_store.audit_dir,
        store=live_store,
    )
    assert out.child_code is not None and "pickle" not in out.child_code
    probe = (
        out.child_code
        + "print(frame.shape[0], str(frame['ts'].dtype), frame['event_type'].tolist()[-1],"
        + " sorted(frame['session_id'].unique()), 'frame' in dir(), '__ironcage_frame' in dir())"
    )
    child = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split(" ", 2)[:2] == ["7", "datetime64[us,"]
    assert "output_redaction" in child.stdout and "['closed-1', 'live-1'] True False" in child.stdout


@pytest.mark.parametrize(
    "line", ["-o 1abc", "-o import", "-o a.b", "-o __class__", "--limit 0", "--limit x", "--bogus"]
)
def test_sql_magic_rejects_bad_arguments(live_store, line) -> None:
    with pytest.raises(AuditQueryError):
        run_sql_magic(line, "SELECT 1", audit_dir=live_store.audit_dir)


def test_sql_magic_code_literal_cannot_inject(live_store) -> None:
    live_store.record(
        "tool_call",
        decision="deny",
        detail={
            "gen_ai.tool.name": "x'''\"\"\"\nimport os; os.system('echo pwned')#",
            "arguments_redacted": {},
        },
    )
    out = run_sql_magic(
        "-o rows", "SELECT tool_name FROM tool_calls", audit_dir=live_store.audit_dir, store=live_store
    )
    child = subprocess.run(
        [sys.executable, "-c", out.child_code + "print(repr(rows['tool_name'].tolist()))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    assert "pwned" in child.stdout and child.stdout.count("pwned") == 1  # printed as data, never executed


def test_audit_magic_filters(live_store) -> None:
    denied = run_audit_magic("--denied", audit_dir=live_store.audit_dir, store=live_store)
    assert [r[3] for r in denied.result.rows] == ["credential_access"]
    last = run_audit_magic("--last 2", audit_dir=live_store.audit_dir, store=live_store)
    assert len(last.result.rows) == 2
    typed = run_audit_magic("--type violation", audit_dir=live_store.audit_dir)
    assert [r[1] for r in typed.result.rows] == ["closed-1"]
    with pytest.raises(AuditQueryError, match="unknown event type"):
        run_audit_magic("--type nonsense", audit_dir=live_store.audit_dir)


def test_sql_errors_are_reported_not_raised_raw(live_store) -> None:
    with pytest.raises(AuditQueryError, match="no_such_table"):
        run_sql_magic("", "SELECT * FROM no_such_table", audit_dir=live_store.audit_dir)
    with pytest.raises(AuditQueryError, match="parse"):
        run_sql_magic("", "SELEC nonsense", audit_dir=live_store.audit_dir)


def test_runaway_query_is_interrupted(live_store) -> None:
    settings = AuditSettings(query_timeout_s=0.3)
    with pytest.raises(AuditQueryError, match="interrupted"):
        run_sql_magic(
            "",
            "SELECT count(*) FROM range(100000000000) a",
            audit_dir=live_store.audit_dir,
            settings=settings,
        )


def test_empty_audit_dir_has_empty_views(tmp_path) -> None:
    with AuditQuery(tmp_path / "nothing-yet") as query:
        for view in ("events", "decisions", "tool_calls", "credential_access", "violations", "sessions"):
            assert query.sql(f"SELECT count(*) FROM {view}").rows == [(0,)]


def test_cli_query_json(live_store) -> None:
    command = [
        sys.executable, "-m", "ironcage_jupyter.audit.cli", "audit", "--audit-dir", str(live_store.audit_dir),
        "query", "--json", "SELECT session_id, count(*) AS n FROM events GROUP BY ALL ORDER BY 1",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"session_id": "closed-1", "n": 3}, {"session_id": "live-1", "n": 3}]
    refused = subprocess.run(
        [*command[:-2], "DROP VIEW events"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2 and "read-only" in refused.stderr
    # Each CLI query is recorded (its own one-event session file) before anything is printed.
    with AuditQuery(live_store.audit_dir) as query:
        recorded = query.sql(
            "SELECT decision, rule, status, detail->>'sql_redacted', (detail->>'row_count')::INT, "
            "duration_ms > 0 FROM events WHERE event_type = 'audit_query' AND name = 'cli' ORDER BY ts"
        ).rows
    assert recorded == [
        (None, None, "ok", command[-1], 2, True),
        ("deny", "invariant.audit-read-only", "refused", "DROP VIEW events", None, True),
    ]
    assert verify(live_store.audit_dir).exit_code == 0


def test_snapshots_of_dead_query_processes_are_removed(live_store) -> None:
    orphan = live_store.audit_dir / "snapshots" / "q999999999-abc"
    orphan.mkdir(parents=True)
    (orphan / "copy.duckdb").write_bytes(b"stale audit data")
    with AuditQuery(live_store.audit_dir, live_store=live_store) as query:
        assert query.attached["live-1"].live
        assert not orphan.exists()
        own = list((live_store.audit_dir / "snapshots").iterdir())
        assert len(own) == 1
    assert list((live_store.audit_dir / "snapshots").iterdir()) == []


def test_querying_the_own_live_session_keeps_the_writers_lock(live_store) -> None:
    """DuckDB's file lock is a POSIX record lock: any close of the file by the writer's process drops
    it. A query of the process's own live session must therefore never open that file (it copies it
    through the writer's connection), or another process could open the live file read-write."""
    with AuditQuery(live_store.audit_dir, live_store=live_store) as query:
        assert query.attached["live-1"].live
        assert query.sql("SELECT count(*) FROM events WHERE session_id = 'live-1'").rows == [(4,)]
    probe = (
        "import duckdb, sys\n"
        "try:\n    duckdb.connect(sys.argv[1]).close()\nexcept duckdb.Error as exc:\n    print(exc)\n"
        "else:\n    print('OPENED')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(live_store.path)], capture_output=True, text=True, timeout=60
    )
    assert "OPENED" not in done.stdout and "lock" in done.stdout.lower(), done.stdout + done.stderr
