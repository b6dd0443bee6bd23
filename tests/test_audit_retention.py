"""Retention purge keeps what stays verifiable; exports read back in DuckDB."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from pydantic import ValidationError

from ironcage_jupyter.audit import AuditQuery, AuditSettings, AuditStore
from ironcage_jupyter.audit.export import export
from ironcage_jupyter.audit.retention import purge
from ironcage_jupyter.audit.verify import verify

ROOT = Path(__file__).resolve().parents[1]
START = datetime(2025, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def day_clock(start: datetime):
    moment = [start]

    def clock() -> datetime:
        moment[0] += timedelta(days=1)
        return moment[0]

    return clock


@pytest.fixture
def year_of_events(tmp_path: Path) -> Path:
    """One event per day for 2025: tool calls, credential access, violations and executions interleaved."""
    with AuditStore(tmp_path, "year", clock=day_clock(START)) as store:
        for n in range(360):
            kind = ("tool_call", "credential_access", "violation", "execution")[n % 4]
            detail = {
                "tool_call": {"gen_ai.tool.name": "fetch", "arguments_redacted": {"n": n}},
                "credential_access": {"credential_name": "TOKEN", "granted": True},
                "violation": {"kind": "sandbox_denial", "layer": "filesystem"},
                "execution": {"status": "ok"},
            }[kind]
            store.record(
                kind, decision="allow" if kind == "tool_call" else None, detail=detail, durable=n % 7 == 0
            )
    return tmp_path


def counts(audit_dir: Path) -> dict[str, int]:
    with AuditQuery(audit_dir) as query:
        return dict(query.run_trusted("SELECT event_type, count(*) FROM events GROUP BY ALL").rows)


def test_purge_applies_retention_per_class_and_the_rest_still_verifies(year_of_events) -> None:
    before = counts(year_of_events)
    assert before == {"tool_call": 90, "credential_access": 90, "violation": 90, "execution": 90}
    report = purge(year_of_events, AuditSettings(), now=NOW)
    after = counts(year_of_events)
    # tool calls and executions ("default") older than 90 days went; credential access and violations stay a year
    assert after["credential_access"] == 90 and after["violation"] == 90
    assert 20 <= after["tool_call"] <= 24 and 20 <= after["execution"] <= 24
    assert report.purged["year"] == 180 - after["tool_call"] - after["execution"]
    verified = verify(year_of_events)
    assert verified.exit_code == 0, verified.render()
    assert verified.sessions[0].tombstones + report.compacted["year"] == report.purged["year"]
    # nothing of a purged event's content is left
    con = duckdb.connect(str(year_of_events / "sessions" / "year.duckdb"), read_only=True)
    leftovers = con.execute(
        "SELECT count(*) FROM events WHERE purged_at IS NOT NULL AND (canonical IS NOT NULL OR decision IS NOT NULL "
        "OR status IS NOT NULL OR granted IS NOT NULL OR target IS NOT NULL OR duration_ms IS NOT NULL)"
    ).fetchone()
    con.close()
    assert leftovers == (0,)


def test_purging_everything_compacts_the_chain_and_later_purges_stay_consistent(year_of_events) -> None:
    purge(year_of_events, AuditSettings(), now=NOW)
    everything = purge(year_of_events, AuditSettings(), now=NOW + timedelta(days=800))
    assert everything.compacted["year"] == 360
    assert counts(year_of_events) == {}
    report = verify(year_of_events)
    assert report.exit_code == 0, report.render()
    # a session reopened after compaction chains on from the checkpoint
    with AuditStore(year_of_events, "year") as store:
        assert store.record("execution", detail={"status": "ok"}).seq == 361
    assert verify(year_of_events).exit_code == 0


def test_purge_skips_live_and_tampered_sessions(year_of_events) -> None:
    con = duckdb.connect(str(year_of_events / "sessions" / "year.duckdb"))
    con.execute("UPDATE events SET decision = 'deny' WHERE seq = 5")
    con.close()
    live = AuditStore(year_of_events, "live")
    live.record("execution", detail={"status": "ok"}, durable=True)
    report = purge(
        year_of_events, AuditSettings(retention_days={"default": 0}), now=NOW + timedelta(days=3650)
    )
    live.close()
    assert report.skipped["live"].startswith("live")
    assert report.skipped["year"].startswith("tampered")
    assert report.exit_code == 1
    assert counts(year_of_events)["execution"] == 91  # nothing purged


def test_tampering_after_a_purge_is_still_detected(year_of_events) -> None:
    purge(year_of_events, AuditSettings(), now=NOW)
    con = duckdb.connect(str(year_of_events / "sessions" / "year.duckdb"))
    con.execute("DELETE FROM events WHERE seq = (SELECT max(seq) - 3 FROM events)")
    con.close()
    assert verify(year_of_events).exit_code == 1


def test_retention_settings_are_validated() -> None:
    with pytest.raises(ValidationError, match="unknown retention class"):
        AuditSettings(retention_days={"tool_calls": 30})
    with pytest.raises(ValidationError, match=">= 0"):
        AuditSettings(retention_days={"violation": -1})
    assert AuditSettings(retention_days={"default": 7}).retention_for("tool_call") == 7


def test_parquet_export_is_hive_partitioned_and_reads_back(year_of_events, tmp_path) -> None:
    out = tmp_path / "export"
    report = export(year_of_events, out, fmt="parquet", since=date(2025, 12, 1))
    assert report.rows == 27  # one event a day, 2 Jan .. 27 Dec 2025
    partitions = sorted(p.name for p in out.iterdir())
    assert partitions[0] == "date=2025-12-01" and len(partitions) == 27
    con = duckdb.connect()
    back = con.execute(
        f"SELECT count(*), count(DISTINCT date), bool_and(sha256(canonical) = hash), min(seq), max(seq) "
        f"FROM read_parquet('{out}/*/*.parquet', hive_partitioning = true)"
    ).fetchone()
    assert back == (27, 27, True, 334, 360)
    tool = con.execute(
        f"SELECT detail->>'$.\"gen_ai.tool.name\"' FROM read_parquet('{out}/*/*.parquet') "
        "WHERE event_type = 'tool_call' LIMIT 1"
    ).fetchone()
    assert tool == ("fetch",)
    con.close()


def test_jsonl_export_round_trip(year_of_events, tmp_path) -> None:
    out = tmp_path / "jsonl"
    report = export(year_of_events, out, fmt="jsonl")
    lines = (out / "events.jsonl").read_text().splitlines()
    assert len(lines) == report.rows == 360
    first = json.loads(lines[0])
    assert first["seq"] == 1 and json.loads(first["canonical"])["seq"] == 1


def test_cli_export_and_purge(year_of_events, tmp_path) -> None:
    base = [sys.executable, "-m", "ironcage_jupyter.audit.cli", "audit", "--audit-dir", str(year_of_events)]
    exported = subprocess.run(
        [*base, "export", "--format", "parquet", "--since", "2025-11-01", "--out", str(tmp_path / "p")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert "exported 57 events" in exported.stdout
    policy = tmp_path / "short.yaml"
    policy.write_text("name: short\naudit:\n  retention_days:\n    default: 30\n    tool_call: 30\n")
    purged = subprocess.run(
        [*base, "purge", "--policy", str(policy), "--now", "2026-01-01"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert purged.returncode == 0, purged.stderr
    assert "events purged in 1 sessions" in purged.stdout
    assert counts(year_of_events)["tool_call"] < 10
    bad = tmp_path / "bad.yaml"
    bad.write_text("audit:\n  retention_days:\n    forever: 1\n")
    refused = subprocess.run(
        [*base, "purge", "--policy", str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2 and "forever" in refused.stderr
