"""`verify` proves closed sessions in worker processes: results merge into the same report, tampering
found by a worker's session is still classified, and a worker that crashes or overruns FAILS verify."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from ironcage_jupyter.audit import verify as verify_module
from ironcage_jupyter.audit.store import AuditStore
from ironcage_jupyter.audit.verify import verify


def _sessions(audit_dir: Path, count: int = 3, events: int = 40) -> list[str]:
    ids = []
    for n in range(count):
        session_id = f"par-{n}"
        with AuditStore(audit_dir, session_id) as store:
            for i in range(events):
                store.record(
                    "tool_call",
                    detail={
                        "gen_ai.tool.name": "fs.read",
                        "gen_ai.tool.call.id": f"c{n}-{i}",
                        "status": "ok",
                    },
                )
        ids.append(session_id)
    return ids


def _session_file(audit_dir: Path, session_id: str) -> Path:
    return audit_dir / "sessions" / f"{session_id}.duckdb"


def test_parallel_verify_passes_clean_sessions(tmp_path: Path) -> None:
    ids = _sessions(tmp_path)
    report = verify(tmp_path, workers=2)
    assert report.exit_code == 0, report.render()
    assert [s.session_id for s in report.sessions] == ids
    assert all(s.events == 40 for s in report.sessions)
    assert report.render() == verify(tmp_path, workers=1).render()


@pytest.mark.parametrize(
    ("sql", "kind", "seq"),
    [
        ("UPDATE events SET canonical = replace(canonical, 'c1-7', 'c1-X') WHERE seq = 8", "modified", 8),
        ("UPDATE events SET tool_call_id = 'other' WHERE seq = 5", "modified", 5),
        ("DELETE FROM events WHERE seq = 12", "deleted", 12),
    ],
)
def test_parallel_verify_classifies_tampering_like_the_serial_path(
    tmp_path: Path, sql: str, kind: str, seq: int
) -> None:
    _sessions(tmp_path)
    con = duckdb.connect(str(_session_file(tmp_path, "par-1")))
    con.execute(sql)
    con.close()
    report = verify(tmp_path, workers=2)
    assert report.exit_code == 1
    by_id = {s.session_id: s for s in report.sessions}
    assert seq in getattr(by_id["par-1"], kind), report.render()
    assert by_id["par-0"].status == by_id["par-2"].status == "ok"
    assert report.render() == verify(tmp_path, workers=1).render()


def test_a_crashed_worker_fails_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _sessions(tmp_path)
    crasher = tmp_path / "crash.sh"
    crasher.write_text("#!/bin/sh\nkill -9 $$\n")
    crasher.chmod(0o700)
    monkeypatch.setattr(verify_module.sys, "executable", str(crasher))
    report = verify(tmp_path, workers=2)
    assert report.exit_code == 2
    assert all(s.status == "error" for s in report.sessions)
    assert all("verify worker failed (exit status -9)" in (s.error or "") for s in report.sessions)


def test_a_worker_that_overruns_fails_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _sessions(tmp_path)
    sleeper = tmp_path / "hang.sh"
    sleeper.write_text("#!/bin/sh\nexec sleep 60\n")
    sleeper.chmod(0o700)
    monkeypatch.setattr(verify_module.sys, "executable", str(sleeper))
    report = verify(tmp_path, workers=2, timeout_s=1.0)
    assert report.exit_code == 2
    assert all("did not finish within 1 s" in (s.error or "") for s in report.sessions)


def test_exit_status_of_a_verifying_process_when_a_worker_crashes(tmp_path: Path) -> None:
    _sessions(tmp_path)
    crasher = tmp_path / "crash.sh"
    crasher.write_text("#!/bin/sh\nkill -9 $$\n")
    crasher.chmod(0o700)
    code = (
        "import sys; from ironcage_jupyter.audit import verify as v; v.sys.executable = sys.argv[2];"
        "r = v.verify(sys.argv[1], workers=2); print(r.render()); sys.exit(r.exit_code)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), str(crasher)],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], env=dict(os.environ), check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "verify worker failed" in done.stdout


def test_workers_never_import_a_package_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    audit_dir = tmp_path / "audit"
    _sessions(audit_dir)
    decoy = tmp_path / "cwd" / "ironcage_jupyter"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise ImportError('decoy package imported from the cwd')\n")
    monkeypatch.chdir(decoy.parent)
    report = verify(audit_dir, workers=2)
    assert report.exit_code == 0, report.render()


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 1), (3, 3), (8, 8)])
def test_the_pool_is_the_default_only_from_three_cores(
    monkeypatch: pytest.MonkeyPatch, cores: int, expected: int
) -> None:
    monkeypatch.setattr(verify_module.os, "sched_getaffinity", lambda _pid: set(range(cores)), raising=False)
    assert verify_module._default_workers() == expected
