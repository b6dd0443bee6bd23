"""Several writer processes at once, a query that sees them all while they run, and kill -9 mid-session."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from ironcage_jupyter.audit import AuditQuery
from ironcage_jupyter.audit.verify import verify

ROOT = Path(__file__).resolve().parents[1]

# A stand-in for one kernel's wrapper: records events, reports each commit on stdout, obeys stdin.
WRITER = r"""
import json, sys
from ironcage_jupyter.audit import AuditStore

audit_dir, session, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = AuditStore(audit_dir, session, batch_size=1000)
store.record("session_start", detail={"policy_name": "default"})
for n in range(count):
    store.record("output_redaction", detail={"detector": "aws", "count": n}, durable=False)
    if n % 10 == 9:
        event = store.record("policy_decision", decision="deny" if n % 20 == 19 else "allow",
                             detail={"subject": "cell", "cell_id": f"c{n}"}, durable=True)
store.flush()
print(json.dumps({"committed": store.last_seq}), flush=True)
for line in sys.stdin:
    command = line.strip()
    if command == "pending":
        # Buffered, never committed: a crash may lose these and nothing else.
        for n in range(50):
            store.record("output_redaction", detail={"detector": "late", "count": n}, durable=False)
        print(json.dumps({"committed": store.last_seq - 50, "pending": store.pending_count}), flush=True)
    elif command == "close":
        store.record("session_end", detail={"status": "normal"})
        store.close()
        print(json.dumps({"closed": store.last_seq}), flush=True)
        break
"""


def start_writer(audit_dir: Path, session: str, count: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(audit_dir), session, str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def finish(process: subprocess.Popen) -> None:
    process.stdin.close()
    process.wait(timeout=30)
    process.stdout.close()


def read_line(process: subprocess.Popen) -> dict:
    line = process.stdout.readline()
    assert line, f"writer exited with {process.wait(timeout=30)}"
    return json.loads(line)


def test_concurrent_writer_processes_and_one_query_seeing_them_all(tmp_path) -> None:
    writers = {f"kernel-{i}": start_writer(tmp_path, f"kernel-{i}", 300 + 100 * i) for i in range(4)}
    try:
        committed = {session: read_line(process)["committed"] for session, process in writers.items()}
        # Every writer still holds its file: the query must snapshot them all, and see every committed event.
        with AuditQuery(tmp_path) as query:
            assert all(attached.live for attached in query.attached.values())
            counts = dict(query.run_trusted("SELECT session_id, count(*) FROM events GROUP BY ALL").rows)
            denies = query.sql("SELECT count(*) FROM decisions WHERE decision = 'deny'").rows[0][0]
        assert counts == committed
        assert denies == sum((300 + 100 * i) // 20 for i in range(4))
        live_report = verify(tmp_path)
        assert live_report.exit_code == 0, live_report.render()
        assert all(s.live and not s.anchored for s in live_report.sessions)
        for process in writers.values():
            process.stdin.write("close\n")
            process.stdin.flush()
        closed = {session: read_line(process)["closed"] for session, process in writers.items()}
    finally:
        for process in writers.values():
            finish(process)
    with AuditQuery(tmp_path) as query:
        assert not any(attached.live for attached in query.attached.values())
        counts = dict(query.run_trusted("SELECT session_id, max(seq) FROM events GROUP BY ALL").rows)
    assert counts == closed
    report = verify(tmp_path)
    assert report.exit_code == 0 and all(s.anchored for s in report.sessions), report.render()


def test_kill_9_loses_no_committed_event_and_the_chain_still_verifies(tmp_path) -> None:
    writer = start_writer(tmp_path, "victim", 500)
    other = start_writer(tmp_path, "bystander", 100)
    try:
        committed = read_line(writer)["committed"]
        writer.stdin.write("pending\n")
        writer.stdin.flush()
        state = read_line(writer)
        assert state == {"committed": committed, "pending": 50}
        read_line(other)
        writer.send_signal(signal.SIGKILL)
        assert writer.wait(timeout=30) == -signal.SIGKILL
        # The dead writer's lock is gone: its file (with WAL) attaches in place and replays.
        with AuditQuery(tmp_path) as query:
            victim = query.attached["victim"]
            assert victim.live is False
            seqs = query.run_trusted(
                "SELECT min(seq), max(seq), count(*) FROM events WHERE session_id = 'victim'"
            )
        assert seqs.rows == [(1, committed, committed)]
        report = verify(tmp_path)
        by_session = {s.session_id: s for s in report.sessions}
        assert report.exit_code == 0, report.render()
        assert by_session["victim"].events == committed and not by_session["victim"].anchored
        assert by_session["bystander"].live
    finally:
        for process in (writer, other):
            if process.poll() is None:
                process.stdin.write("close\n")
                process.stdin.flush()
            finish(process)


def test_session_reopened_after_a_crash_continues_the_chain(tmp_path) -> None:
    writer = start_writer(tmp_path, "phoenix", 40)
    committed = read_line(writer)["committed"]
    writer.kill()
    finish(writer)
    from ironcage_jupyter.audit import AuditStore

    with AuditStore(tmp_path, "phoenix") as store:
        event = store.record("violation", detail={"kind": "child_crash", "message": "wrapper restarted"})
    assert event.seq == committed + 1
    assert verify(tmp_path).exit_code == 0
