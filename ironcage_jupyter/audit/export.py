"""`ironcage-jupyter audit export`: Parquet partitioned by date (hive layout) or JSON Lines.

Exports carry `canonical` and `hash`, so an exported event can still be checked
(hash = SHA-256 of canonical) by DuckDB, Spark or Trino without Iron Cage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal

from .query import AuditQuery

_COLUMNS = (
    "event_id, ts, session_id, seq, event_type, decision, rule, reason, "
    "json_extract(canonical, '$.detail') AS detail, prev_hash, hash, canonical"
)


@dataclass
class ExportReport:
    rows: int
    out: Path
    sessions: int


def export(
    audit_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    fmt: Literal["parquet", "jsonl"] = "parquet",
    since: date | None = None,
) -> ExportReport:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    where = "canonical IS NOT NULL"
    if since is not None:
        where += f" AND ts >= TIMESTAMPTZ '{since.isoformat()} 00:00:00+00'"
    with AuditQuery(audit_dir, lock_down=False, timeout_s=3600) as query:
        count = query.run_trusted(f"SELECT count(*) FROM all_events_raw WHERE {where}").rows[0][0]  # noqa: S608
        target = str(out).replace("'", "''")
        if fmt == "parquet":
            query.run_trusted(
                f"COPY (SELECT {_COLUMNS}, strftime(ts, '%Y-%m-%d') AS date FROM all_events_raw "  # noqa: S608
                f"WHERE {where} ORDER BY session_id, seq) TO '{target}' "
                "(FORMAT parquet, PARTITION_BY (date), OVERWRITE_OR_IGNORE, FILENAME_PATTERN 'events_{uuid}')"
            )
        elif fmt == "jsonl":
            query.run_trusted(
                f"COPY (SELECT {_COLUMNS} FROM all_events_raw WHERE {where} ORDER BY ts, session_id, seq) "  # noqa: S608
                f"TO '{target}/events.jsonl' (FORMAT json)"
            )
        else:
            raise ValueError(f"unknown export format {fmt!r}")
        return ExportReport(int(count), out, query.session_count)
