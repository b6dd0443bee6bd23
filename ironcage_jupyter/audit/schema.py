"""Table layout of a session file and the query views over them (shared by store, query and verify)."""

from __future__ import annotations

STORE_FORMAT = "ironcage-audit/2"

# Detail fields that queries filter and aggregate on, copied into typed columns when the event is
# written (format 2), so that `tool_calls.duration_ms = ...` or `credential_access WHERE NOT granted`
# read a column instead of parsing every event's JSON. (column, SQL type, JSON path inside `detail`)
# `verify` checks each one against the signed canonical bytes, like the envelope columns.
PROMOTED_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("tool_call_id", "VARCHAR", '"gen_ai.tool.call.id"'),
    ("status", "VARCHAR", "status"),
    ("duration_ms", "DOUBLE", "duration_ms"),
    ("result_size_bytes", "BIGINT", "result_size_bytes"),
    ("granted", "BOOLEAN", "granted"),
    ("scope", "VARCHAR", "scope"),
    ("target", "VARCHAR", "target"),
    ("layer", "VARCHAR", "layer"),
)
PROMOTED_COLUMNS = tuple(column for column, _type, _path in PROMOTED_FIELDS)

# No PRIMARY KEY / UNIQUE: an index would slow every append, and `verify` finds duplicates anyway.
EVENTS_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    event_id   VARCHAR     NOT NULL,
    ts         TIMESTAMPTZ NOT NULL,
    session_id VARCHAR     NOT NULL,
    seq        BIGINT      NOT NULL,
    event_type VARCHAR     NOT NULL,
    decision   VARCHAR,
    rule       VARCHAR,
    reason     VARCHAR,
    cell_id    VARCHAR,
    name       VARCHAR,
    prev_hash  VARCHAR     NOT NULL,
    hash       VARCHAR     NOT NULL,
    canonical  VARCHAR,
    purged_at  TIMESTAMPTZ{promoted}
);
"""

_PROMOTED_DDL = "".join(f",\n    {column:10} {sql_type}" for column, sql_type, _path in PROMOTED_FIELDS)


def events_table_ddl(name: str) -> str:
    return EVENTS_TABLE.format(name=name, promoted=_PROMOTED_DDL)


SESSION_DDL = (
    events_table_ddl("events")
    + """
-- One row per purge of this file. Tombstoned events keep seq/ts/type/prev_hash/hash but lose their
-- content; a prefix made only of tombstones is then deleted and summarised by compacted_through_*,
-- the seq and hash the first remaining event must chain to.
CREATE TABLE IF NOT EXISTS purge_log (
    session_id             VARCHAR     NOT NULL,
    purged_at              TIMESTAMPTZ NOT NULL,
    tombstoned             BIGINT      NOT NULL,
    compacted_through_seq  BIGINT      NOT NULL,
    compacted_through_hash VARCHAR     NOT NULL,
    retention              VARCHAR
);
CREATE TABLE IF NOT EXISTS store_meta (key VARCHAR NOT NULL, value VARCHAR NOT NULL);
"""
)

EVENT_COLUMNS_V1 = (
    "event_id",
    "ts",
    "session_id",
    "seq",
    "event_type",
    "decision",
    "rule",
    "reason",
    "cell_id",
    "name",
    "prev_hash",
    "hash",
    "canonical",
    "purged_at",
)
EVENT_COLUMNS = (*EVENT_COLUMNS_V1, *PROMOTED_COLUMNS)


def promoted_expression(column: str, source: str = "canonical") -> str:
    """SQL computing a promoted column from the canonical bytes (for format-1 files, and verify)."""
    for name, sql_type, path in PROMOTED_FIELDS:
        if name == column:
            return f"TRY_CAST(json_extract_string({source}, '$.detail.{path}') AS {sql_type})"
    raise KeyError(column)


def events_source(alias: str, columns: tuple[str, ...] | list[str]) -> str:
    """A relation with every EVENT_COLUMNS column over `alias.events` of format 1 or 2."""
    if tuple(columns) == EVENT_COLUMNS:
        return f"{alias}.events"
    computed = ", ".join(f"{promoted_expression(c)} AS {c}" for c in PROMOTED_COLUMNS)
    return f"(SELECT {', '.join(EVENT_COLUMNS_V1)}, {computed} FROM {alias}.events)"  # noqa: S608


# Views over the union of all attached session files (`all_events_raw`), created in query connections.
# `detail` is taken from the canonical bytes themselves, so what is queried is what is hashed.
VIEWS_SQL = r"""
CREATE OR REPLACE TEMP VIEW events AS
SELECT event_id, ts, session_id, seq, event_type, decision, rule, reason, cell_id, name,
       json_extract(canonical, '$.detail') AS detail, prev_hash, hash,
       tool_call_id, status, duration_ms, result_size_bytes, granted, scope, target, layer
FROM all_events_raw
WHERE canonical IS NOT NULL;

CREATE OR REPLACE TEMP VIEW decisions AS
SELECT ts, session_id, seq, event_type, decision, rule, reason,
       name, cell_id, detail, event_id
FROM events
WHERE decision IS NOT NULL;

CREATE OR REPLACE TEMP VIEW tool_calls AS
SELECT ts, session_id, seq,
       name AS tool_name, cell_id,
       tool_call_id,
       detail->>'$."gen_ai.operation.name"' AS operation_name,
       decision, rule, reason,
       status,
       duration_ms,
       result_size_bytes,
       detail->'arguments_redacted' AS arguments,
       detail->>'server' AS server,
       event_id
FROM events
WHERE event_type = 'tool_call';

CREATE OR REPLACE TEMP VIEW credential_access AS
SELECT ts, session_id, seq,
       name AS credential_name, cell_id,
       scope,
       granted,
       target,
       detail->>'used_by' AS used_by,
       decision, rule, reason, event_id
FROM events
WHERE event_type = 'credential_access';

CREATE OR REPLACE TEMP VIEW violations AS
SELECT ts, session_id, seq,
       name AS kind, cell_id,
       layer,
       detail->>'limit' AS "limit",
       detail->>'message' AS message,
       decision, rule, reason, detail, event_id
FROM events
WHERE event_type = 'violation';

CREATE OR REPLACE TEMP VIEW sessions AS
SELECT session_id,
       min(ts) AS started,
       max(ts) AS last_event,
       count(*) AS events,
       count(*) FILTER (WHERE decision = 'deny') AS denials,
       bool_or(event_type = 'session_end') AS ended,
       any_value(name) FILTER (WHERE event_type = 'session_start') AS policy_name
FROM events
GROUP BY session_id;
"""

VIEW_NAMES = ("events", "decisions", "tool_calls", "credential_access", "violations", "sessions")
