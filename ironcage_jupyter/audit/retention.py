"""`ironcage-jupyter audit purge`: apply the retention of each event class without breaking the chain.

An expired event becomes a tombstone: its content (canonical bytes, decision, rule, reason) is removed,
while seq, ts, event_type, prev_hash and hash stay, so the events around it still chain and verify.
Once a session's oldest events are all tombstones, that prefix is deleted and summarised in `purge_log`
by the seq and hash the first remaining event chains to (the purge checkpoint). A session is verified
before it is purged; a tampered one is left alone, so a purge can never launder tampering. Live sessions
(their writer holds the file) are skipped and purged on a later run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from .events import EventType, genesis_hash
from .paths import session_files, session_id_of
from .schema import PROMOTED_COLUMNS
from .settings import AuditSettings
from .store import _one, is_open_in_process, upgrade_events_table
from .verify import verify


@dataclass
class PurgeReport:
    purged: dict[str, int] = field(default_factory=dict)
    compacted: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if any(reason.startswith("tampered") for reason in self.skipped.values()) else 0

    def render(self) -> str:
        lines = [
            f"purged {n} events from {sid} (compacted through seq {self.compacted.get(sid, 0)})"
            for sid, n in sorted(self.purged.items())
        ]
        lines += [f"skipped {sid}: {why}" for sid, why in sorted(self.skipped.items())]
        lines.append(f"{sum(self.purged.values())} events purged in {len(self.purged)} sessions")
        return "\n".join(lines)


def purge(
    audit_dir: str | os.PathLike[str], settings: AuditSettings | None = None, *, now: datetime | None = None
) -> PurgeReport:
    settings = settings or AuditSettings()
    now = now or datetime.now(UTC)
    report = PurgeReport()
    cutoffs = {t.value: now - timedelta(days=settings.retention_for(t.value)) for t in EventType}
    default_cutoff = now - timedelta(days=settings.retention_days.get("default", 90))
    for path in session_files(Path(audit_dir)):
        session_id = session_id_of(path)
        if is_open_in_process(path):
            report.skipped[session_id] = "live (recording in this process)"
            continue
        try:
            con = duckdb.connect(str(path))
        except duckdb.Error as exc:
            report.skipped[session_id] = (
                "live (its writer holds the file)" if "lock" in str(exc).lower() else str(exc)
            )
            continue
        con.close()
        # Verify with the file released, then reopen for writing (nothing else writes closed sessions).
        checked = verify(audit_dir, sessions=[session_id]).sessions
        if not checked or checked[0].status != "ok":
            problem = checked[0].error or "; ".join(checked[0].problems[:3]) if checked else "not readable"
            report.skipped[session_id] = f"tampered or unreadable, not purged: {problem}"
            continue
        try:
            tombstoned, compacted = _purge_file(path, session_id, cutoffs, default_cutoff, now, settings)
        except duckdb.Error as exc:
            report.skipped[session_id] = f"purge failed: {exc}"
            continue
        if tombstoned:
            report.purged[session_id] = tombstoned
            report.compacted[session_id] = compacted
    return report


def _purge_file(
    path: Path,
    session_id: str,
    cutoffs: dict[str, datetime],
    default_cutoff: datetime,
    now: datetime,
    settings: AuditSettings,
) -> tuple[int, int]:
    con = duckdb.connect(str(path))
    try:
        cases = " ".join("WHEN ? THEN ?" for _ in cutoffs)
        params: list[object] = []
        for event_type, cutoff in cutoffs.items():
            params += [event_type, cutoff]
        upgrade_events_table(con)  # a format-1 file gets the promoted columns (cleared below too)
        con.execute("BEGIN TRANSACTION")
        expired = _one(
            con.execute(
                "UPDATE events SET canonical = NULL, decision = NULL, rule = NULL, reason = NULL, cell_id = NULL, "  # noqa: S608
                "name = NULL, " + ", ".join(f"{c} = NULL" for c in PROMOTED_COLUMNS) + ", purged_at = ? "
                f"WHERE canonical IS NOT NULL AND ts < CASE event_type {cases} ELSE ? END",
                [now, *params, default_cutoff],
            )
        )
        tombstoned = int(expired[0]) if expired else 0
        previous = _one(con.execute("SELECT coalesce(max(compacted_through_seq), 0) FROM purge_log"))
        compacted_before = int(previous[0]) if previous else 0
        boundary = _one(
            con.execute(
                "SELECT coalesce((SELECT min(seq) FROM events WHERE canonical IS NOT NULL), "
                "(SELECT max(seq) + 1 FROM events))"
            )
        )
        through = (int(boundary[0]) - 1) if boundary and boundary[0] is not None else compacted_before
        if through > compacted_before:
            through_hash = _one(con.execute("SELECT hash FROM events WHERE seq = ?", [through]))
            if through_hash is None:  # verified just before; a hole here means a concurrent change
                raise duckdb.Error(f"seq {through} vanished during purge")
            con.execute("DELETE FROM events WHERE seq <= ?", [through])
            con.execute(
                "INSERT INTO purge_log VALUES (?, ?, ?, ?, ?, ?)",
                [session_id, now, tombstoned, through, through_hash[0], json.dumps(settings.retention_days)],
            )
        elif tombstoned:
            last = _one(
                con.execute(
                    "SELECT compacted_through_hash FROM purge_log ORDER BY compacted_through_seq DESC LIMIT 1"
                )
            )
            con.execute(
                "INSERT INTO purge_log VALUES (?, ?, ?, ?, ?, ?)",
                [
                    session_id,
                    now,
                    tombstoned,
                    compacted_before,
                    last[0] if last else genesis_hash(session_id),
                    json.dumps(settings.retention_days),
                ],
            )
        con.execute("COMMIT")
        con.execute("CHECKPOINT")
        return tombstoned, max(through, compacted_before)
    finally:
        con.close()
