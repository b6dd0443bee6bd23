"""What the wrapper runs for `%%ironcage sql [-o NAME] [--limit N]` and `%ironcage audit ...`.

Both run on the trusted side, never in the child. They return a `MagicOutput`: a display bundle for the
front end and, for `-o NAME`, Python source for the kernel to execute in the child. Errors raise
`AuditQueryError` with a message meant for the user.
"""

from __future__ import annotations

import argparse
import os
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

from .events import EventType
from .query import AuditQuery, AuditQueryError, QueryResult
from .render import check_variable_name, dataframe_code, mimebundle
from .settings import AuditSettings

if TYPE_CHECKING:
    from .store import AuditStore


@dataclass
class MagicOutput:
    data: dict[str, str]
    """`display_data` / `execute_result` content: text/html and text/plain."""
    child_code: str | None
    """Source to run in the child (only with -o NAME), binding NAME to a pandas DataFrame."""
    result: QueryResult
    fetched: int = 0
    """Rows fetched (what `-o` transfers; at least what is shown)."""
    truncated: bool = False
    """True when the query had more rows than were fetched."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise AuditQueryError(f"{self.prog}: {message}\n{self.format_usage().strip()}")


def _sql_parser() -> _Parser:
    parser = _Parser(prog="%%ironcage sql", add_help=False)
    parser.add_argument("-o", "--out", dest="out", metavar="NAME", help="bind the result as a DataFrame")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="rows to display")
    return parser


def _audit_parser() -> _Parser:
    parser = _Parser(prog="%ironcage audit", add_help=False)
    parser.add_argument("--last", type=int, default=20, metavar="N")
    parser.add_argument("--type", dest="event_type", default=None, metavar="T")
    parser.add_argument("--denied", action="store_true")
    parser.add_argument("--session", default=None, metavar="ID", help="only this session")
    return parser


def _split(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise AuditQueryError(f"cannot parse arguments {line!r}: {exc}") from exc


def run_sql_magic(
    line: str,
    cell: str,
    *,
    audit_dir: str | os.PathLike[str],
    store: AuditStore | None = None,
    settings: AuditSettings | None = None,
) -> MagicOutput:
    """`%%ironcage sql [-o NAME] [--limit N]`: `line` is the text after `sql`, `cell` the SQL."""
    settings = settings or AuditSettings()
    args = _sql_parser().parse_args(_split(line))
    limit = args.limit if args.limit is not None else settings.query_row_limit
    if limit <= 0:
        raise AuditQueryError("--limit must be a positive number of rows")
    if args.out is not None:
        try:
            check_variable_name(args.out)
        except ValueError as exc:
            raise AuditQueryError(str(exc)) from exc
    if not cell.strip():
        raise AuditQueryError("%%ironcage sql needs SQL in the cell body")
    fetch = max(limit, settings.transfer_max_rows) if args.out else limit
    with AuditQuery(
        audit_dir,
        live_store=store,
        memory_limit=settings.query_memory_limit,
        timeout_s=settings.query_timeout_s,
    ) as query:
        full = query.sql(cell, limit=fetch)
    shown = QueryResult(
        full.columns,
        full.types,
        full.rows[:limit],
        full.truncated or len(full.rows) > limit,
        full.sessions,
        full.notes,
    )
    child_code = dataframe_code(args.out, full) if args.out else None
    if args.out and full.truncated:
        shown.notes.append(f"-o {args.out}: only the first {fetch} rows were transferred")
    return MagicOutput(mimebundle(shown, limit), child_code, shown, len(full.rows), full.truncated)


def audit_sql(event_type: str | None, denied: bool, session: str | None) -> tuple[str, list[object]]:
    clauses: list[str] = ["TRUE"]
    params: list[object] = []
    if event_type:
        clauses.append("event_type = ?")
        params.append(event_type)
    if denied:
        clauses.append("decision = 'deny'")
    if session:
        clauses.append("session_id = ?")
        params.append(session)
    sql = (
        "SELECT ts, session_id, seq, event_type, decision, rule, reason, detail FROM events WHERE "  # noqa: S608
        + " AND ".join(clauses)
        + " ORDER BY ts DESC, seq DESC LIMIT ?"
    )
    return sql, params


def run_audit_magic(
    line: str,
    *,
    audit_dir: str | os.PathLike[str],
    store: AuditStore | None = None,
    settings: AuditSettings | None = None,
) -> MagicOutput:
    """`%ironcage audit [--last N] [--type T] [--denied] [--session ID]`: `line` is the text after `audit`."""
    settings = settings or AuditSettings()
    args = _audit_parser().parse_args(_split(line))
    if args.last <= 0:
        raise AuditQueryError("--last must be a positive number of events")
    if args.event_type is not None and args.event_type not in {t.value for t in EventType}:
        raise AuditQueryError(
            f"unknown event type {args.event_type!r}; one of: {', '.join(t.value for t in EventType)}"
        )
    sql, params = audit_sql(args.event_type, args.denied, args.session)
    with AuditQuery(
        audit_dir,
        live_store=store,
        memory_limit=settings.query_memory_limit,
        timeout_s=settings.query_timeout_s,
    ) as query:
        result = query.run_trusted(sql, [*params, args.last])
    return MagicOutput(mimebundle(result, args.last), None, result, len(result.rows), result.truncated)
