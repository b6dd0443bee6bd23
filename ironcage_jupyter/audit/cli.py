"""`ironcage-jupyter audit ...` subcommands: query, verify, export, purge."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .paths import ENV_AUDIT_DIR, default_audit_dir

if TYPE_CHECKING:  # imported where used: its pydantic models cost every audit command ~0.2 s
    from .settings import AuditSettings


def register(subparsers: Any) -> None:
    audit = subparsers.add_parser(
        "audit",
        help="query, verify, export and purge the audit log",
        description="The Iron Cage audit log: one hash-chained DuckDB file per kernel session.",
    )
    audit.add_argument(
        "--audit-dir",
        type=Path,
        default=None,
        help=f"audit directory (default: ${ENV_AUDIT_DIR} or <jupyter data dir>/ironcage/audit)",
    )
    audit.set_defaults(func=lambda args: (audit.print_help(), 2)[1])
    commands = audit.add_subparsers(dest="audit_command", metavar="COMMAND")

    query = commands.add_parser("query", help="run read-only SQL over every session (views: events, ...)")
    query.add_argument(
        "sql", help="SELECT ... over events, decisions, tool_calls, credential_access, violations, sessions"
    )
    query.add_argument("--json", action="store_true", help="print the rows as a JSON array")
    query.add_argument("--limit", type=int, default=None, help="print at most N rows")
    query.set_defaults(func=_query)

    verify = commands.add_parser("verify", help="check every session's hash chain (exit 1 if tampered)")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument("--session", action="append", default=None, help="only this session (repeatable)")
    verify.set_defaults(func=_verify)

    export = commands.add_parser(
        "export", help="export events as Parquet (hive-partitioned by date) or JSONL"
    )
    export.add_argument("--format", choices=("parquet", "jsonl"), default="parquet")
    export.add_argument("--since", type=_date, default=None, help="only events on or after YYYY-MM-DD (UTC)")
    export.add_argument("--out", type=Path, required=True, help="output directory")
    export.set_defaults(func=_export)

    purge = commands.add_parser("purge", help="apply retention per event class (closed sessions only)")
    purge.add_argument(
        "--policy",
        default=None,
        help="policy name or file whose `audit.retention_days` applies (default: built-in retention)",
    )
    purge.add_argument("--now", type=_datetime, default=None, help=argparse.SUPPRESS)
    purge.set_defaults(func=_purge)


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from exc


def _datetime(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date/time: {text!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _audit_dir(args: argparse.Namespace) -> Path:
    return Path(args.audit_dir) if args.audit_dir else default_audit_dir()


def _query(args: argparse.Namespace) -> int:
    """Run the query, then record it (its own one-event session file: the CLI has no kernel session)
    before printing anything; a query that cannot be recorded prints no result (exit 2)."""
    import time

    from .errors import AuditWriteError
    from .integration import new_session_id, record_query
    from .query import AuditQuery, AuditQueryError, query_json
    from .render import render_text
    from .store import AuditStore

    audit_dir = _audit_dir(args)
    started = time.monotonic()
    result = error = None
    try:
        with AuditQuery(audit_dir) as query:
            result = query.sql(args.sql, limit=args.limit)
    except AuditQueryError as exc:
        error = exc
    try:
        with AuditStore(audit_dir, new_session_id() + "-cli") as store:
            record_query(
                store.record, interface="cli", text=args.sql, started=started, output=result, error=error
            )
    except (AuditWriteError, ValueError) as exc:
        print(f"error: the query could not be recorded in the audit log, so no result is shown: {exc}",
              file=sys.stderr)  # fmt: skip
        return 2
    if error is not None or result is None:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(query_json(result) if args.json else render_text(result, args.limit))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .verify import keep_freed_memory_for_scans, verify

    keep_freed_memory_for_scans()  # this process only verifies and exits (see the function)
    report = verify(_audit_dir(args), sessions=args.session)
    print(report.to_json() if args.json else report.render())
    return report.exit_code


def _export(args: argparse.Namespace) -> int:
    from .export import export

    report = export(_audit_dir(args), args.out, fmt=args.format, since=args.since)
    print(f"exported {report.rows} events from {report.sessions} sessions to {report.out} ({args.format})")
    return 0


def load_audit_settings(policy: str | None) -> AuditSettings:
    """The `audit` section of a policy (built-in name or path), read by the policy loader."""
    if policy is None:
        from .settings import AuditSettings

        return AuditSettings()
    from ironcage_jupyter.policy import load_policy

    return load_policy(policy).audit


def _purge(args: argparse.Namespace) -> int:
    from .retention import purge

    try:
        settings = load_audit_settings(args.policy)
    except Exception as exc:  # PolicyError, OSError, ValidationError...: all mean "no purge"
        print(f"error: cannot load the audit section of policy {args.policy!r}: {exc}", file=sys.stderr)
        return 2
    report = purge(_audit_dir(args), settings, now=args.now)
    print(report.render())
    return report.exit_code


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m ironcage_jupyter.audit.cli audit verify`); the project CLI calls register()."""
    parser = argparse.ArgumentParser(prog="ironcage-jupyter")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
