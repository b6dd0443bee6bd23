"""Cross-session, read-only SQL over every session file, including sessions that are still running.

A closed session file is ATTACHed read-only in place. A live one cannot be: its writer holds DuckDB's
lock, and even read-only opens fail. For those the query takes a snapshot: it copies the main file and
then the WAL into a private directory and ATTACHes the copy. This is consistent because the writer never
checkpoints while live (the main file does not change) and the WAL only grows; a WAL tail copied
mid-write replays as an uncommitted transaction, i.e. a clean prefix of the committed events. Should the
writer close (and checkpoint) during the copy, the main file's identity changes and the copy is retried,
this time usually attaching the now-closed file directly.

Every query connection is an in-memory DuckDB with the session files attached READ_ONLY, external
access (files, network, extensions) disabled and its configuration locked, and user SQL is admitted only
if DuckDB's own parser types every statement as SELECT or EXPLAIN.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from .errors import AuditWriteError
from .paths import SNAPSHOTS_SUBDIR, ensure_private_dir, session_files, session_id_of
from .schema import EVENT_COLUMNS, EVENT_COLUMNS_V1, VIEWS_SQL, events_source, events_table_ddl
from .store import is_open_in_process, journal_path, replay_journal, store_in_process

if TYPE_CHECKING:
    from .store import AuditStore

_ALLOWED_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
_LOCK_MARKERS = ("lock", "unique file handle conflict", "already attached")


class AuditQueryError(RuntimeError):
    """A query that was refused or failed; the message is meant for the user."""


class ReadOnlyViolation(AuditQueryError):
    """The SQL would modify something, or reach outside the audit views."""


def check_read_only(sql: str) -> list[str]:
    """Split `sql` with DuckDB's parser; refuse anything but SELECT / EXPLAIN. Returns the statements."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise AuditQueryError(f"SQL does not parse: {exc}") from exc
    if not statements:
        raise AuditQueryError("no SQL statement given")
    for statement in statements:
        if statement.type not in _ALLOWED_STATEMENTS:
            kind = str(statement.type).rsplit(".", 1)[-1]
            raise ReadOnlyViolation(
                f"the audit log is read-only: {kind} statements are refused "
                f"(only SELECT, WITH ... SELECT, FROM, DESCRIBE, SHOW, SUMMARIZE and EXPLAIN run)"
            )
    return [statement.query for statement in statements]


@dataclass(frozen=True)
class AttachedSession:
    alias: str
    path: Path
    live: bool
    """True when the file was held by a writer and a snapshot copy was attached instead."""
    source: str = ""
    """SQL relation with every `EVENT_COLUMNS` column (format-1 files get the promoted ones computed)."""

    @property
    def promoted_stored(self) -> bool:
        """True when the file stores the promoted detail columns (format 2), so `verify` checks them."""
        return self.source == f"{self.alias}.events"


@dataclass
class QueryResult:
    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool = False
    sessions: int = 0
    notes: list[str] = field(default_factory=list)

    def to_records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, (to_jsonable(v) for v in row), strict=False)) for row in self.rows]


def to_jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return str(value)


class AuditQuery:
    """A read-only SQL view over all sessions in `audit_dir` at the moment it is opened.

    `live_store`: the caller's own `AuditStore`; its buffered events are flushed first so the query
    sees them too. Use as a context manager, or call `close()` (removes the snapshot copies).
    """

    def __init__(
        self,
        audit_dir: str | os.PathLike[str],
        *,
        live_store: AuditStore | None = None,
        memory_limit: str = "1GB",
        timeout_s: float = 30.0,
        sessions: Sequence[str] | None = None,
        lock_down: bool = True,
    ) -> None:
        self.audit_dir = Path(audit_dir)
        self.timeout_s = timeout_s
        self.notes: list[str] = []
        self._snapshot_dir: Path | None = None
        self.attached: dict[str, AttachedSession] = {}
        self.unreadable: dict[str, str] = {}
        if live_store is not None and live_store.failed is None:
            live_store.flush()
        self._con = duckdb.connect(":memory:", config={"memory_limit": memory_limit})
        try:
            wanted = set(sessions) if sessions is not None else None
            sources = []
            for index, path in enumerate(session_files(self.audit_dir)):
                if wanted is not None and session_id_of(path) not in wanted:
                    continue
                alias = f"s{index}"
                live = self._attach(path, alias)
                source = self._events_source(path, alias) if live is not None else None
                if live is not None and source is not None:
                    sources.append(source)
                    self.attached[session_id_of(path)] = AttachedSession(alias, path, live, source)
            self.session_count = len(sources)
            self._create_views(sources)
            if lock_down:
                # From here on the connection reads only what is attached and cannot be reconfigured.
                # Only the trusted exporter (which writes files with COPY) opens without this.
                self._con.execute("SET enable_external_access = false")
                self._con.execute("SET lock_configuration = true")
        except BaseException:
            self.close()
            raise

    # -- opening -----------------------------------------------------------------------------------------
    def _attach(self, path: Path, alias: str) -> bool | None:
        """ATTACH in place (returns False) or via a snapshot (live: True); None if it cannot be read."""
        for _attempt in range(5):
            try:
                # A file this process writes is never opened a second time here: DuckDB's lock is
                # a POSIX record lock, which the kernel drops for the whole process as soon as any
                # descriptor of the file is closed - even a failed in-process ATTACH's. Another
                # process could then open the live file read-write (journal recovery checkpoints it).
                if is_open_in_process(path) or not _recover_journal_in_place(path):
                    raise duckdb.IOException("Could not set lock: the session is live")
                self._con.execute(f"ATTACH '{_sql_str(path)}' AS {alias} (READ_ONLY)")
                return False
            except duckdb.Error as exc:
                if not any(marker in str(exc).lower() for marker in _LOCK_MARKERS):
                    self.notes.append(f"skipped unreadable session file {path.name}: {exc}")
                    self.unreadable[session_id_of(path)] = str(exc)
                    return None
            snapshot = self._snapshot(path)
            if snapshot is None:
                continue  # the writer checkpointed during the copy: try again
            try:
                self._con.execute(f"ATTACH '{_sql_str(snapshot)}' AS {alias} (READ_ONLY)")
                return True
            except duckdb.Error as exc:
                self.notes.append(f"skipped live session {path.name}: {exc}")
                self.unreadable[session_id_of(path)] = str(exc)
                return None
        self.notes.append(f"skipped live session {path.name}: it kept changing while being copied")
        self.unreadable[session_id_of(path)] = "kept changing while being copied"
        return None

    def _events_source(self, path: Path, alias: str) -> str | None:
        """The relation to read `alias`'s events from; a file in sessions/ that is not an audit file
        of a known format is reported, not queried (None)."""
        columns = [
            row[0]
            for row in self._con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE database_name = ? AND table_name = 'events' "
                "ORDER BY column_index",
                [alias],
            ).fetchall()
        ]
        if tuple(columns) in (EVENT_COLUMNS, EVENT_COLUMNS_V1):
            return events_source(alias, columns)
        self._con.execute(f"DETACH {alias}")
        reason = f"not an Iron Cage audit file of this format (events columns: {columns or 'none'})"
        self.notes.append(f"skipped {path.name}: {reason}")
        self.unreadable[session_id_of(path)] = reason
        return None

    def _snapshot(self, path: Path) -> Path | None:
        if self._snapshot_dir is None:
            base = ensure_private_dir(self.audit_dir / SNAPSHOTS_SUBDIR)
            _remove_orphaned_snapshots(base)
            self._snapshot_dir = Path(tempfile.mkdtemp(prefix=f"q{os.getpid()}-", dir=base))
        target = self._snapshot_dir / f"{uuid.uuid4().hex}.duckdb"
        own = store_in_process(path)
        if own is not None:  # never open this process's own live file (see AuditStore.snapshot_to)
            try:
                own.snapshot_to(target)
            except AuditWriteError:
                return None
            return target
        wal = Path(f"{path}.wal")
        journal = journal_path(path)
        target_journal = journal_path(target)
        try:
            # Journal first: an event durable now is either still in it, or was already written into
            # DuckDB before the journal was reset, and so is in the WAL copied after it.
            if journal.is_file():
                shutil.copyfile(journal, target_journal)
            before = _identity(path)
            shutil.copyfile(path, target)
            if wal.exists():
                shutil.copyfile(wal, f"{target}.wal")
            if _identity(path) != before:
                return None
        except FileNotFoundError:
            return None
        if target_journal.exists() and target_journal.stat().st_size:
            copy = duckdb.connect(str(target))
            try:
                replay_journal(copy, target_journal)
            finally:
                copy.close()
        return target

    def _create_views(self, sources: list[str]) -> None:
        columns = ", ".join(EVENT_COLUMNS)
        if sources:
            union = " UNION ALL ".join(f"SELECT {columns} FROM {source}" for source in sources)  # noqa: S608
            self._con.execute(f"CREATE TEMP VIEW all_events_raw AS {union}")
        else:
            self._con.execute(events_table_ddl("no_sessions").replace("CREATE TABLE", "CREATE TEMP TABLE"))
            self._con.execute(f"CREATE TEMP VIEW all_events_raw AS SELECT {columns} FROM temp.no_sessions")  # noqa: S608
        self._con.execute(VIEWS_SQL)

    # -- querying ----------------------------------------------------------------------------------------
    def sql(self, sql: str, *, limit: int | None = None) -> QueryResult:
        """Run user SQL (read-only checked). Returns the last statement's result, `limit` rows at most."""
        statements = check_read_only(sql)
        result: QueryResult | None = None
        for statement in statements:
            result = self._run(statement, None, limit)
        assert result is not None
        return result

    def run_trusted(
        self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None, *, limit: int | None = None
    ) -> QueryResult:
        """Run SQL written by Iron Cage itself (parameters allowed); still a read-only connection."""
        return self._run(sql, params, limit)

    def _run(self, sql: str, params: Sequence[Any] | dict[str, Any] | None, limit: int | None) -> QueryResult:
        timer = threading.Timer(self.timeout_s, self._con.interrupt)
        timer.daemon = True
        timer.start()
        reader = None
        try:
            if params is not None and not isinstance(params, dict):
                params = list(params)
            relation = self._con.sql(sql, params=params)
            if relation is None:
                return QueryResult([], [], [], sessions=self.session_count, notes=list(self.notes))
            columns = list(relation.columns)
            types = [str(t) for t in relation.types]
            reader = relation.to_arrow_reader(2048)
            rows: list[tuple[Any, ...]] = []
            truncated = False
            for batch in reader:
                for record in batch.to_pylist():
                    if limit is not None and len(rows) >= limit:
                        truncated = True
                        break
                    rows.append(tuple(record.values()))
                if truncated:
                    break
            return QueryResult(columns, types, rows, truncated, self.session_count, list(self.notes))
        except duckdb.InterruptException as exc:
            raise AuditQueryError(f"query interrupted after {self.timeout_s:g} s") from exc
        except duckdb.Error as exc:
            raise AuditQueryError(str(exc)) from exc
        finally:
            timer.cancel()
            if reader is not None:
                reader.close()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """Another connection to the same read-only instance (same attached files and settings),
        for trusted passes that run in parallel; close it when done."""
        return self._con.cursor()

    def close(self) -> None:
        try:
            self._con.close()
        except duckdb.Error:
            pass
        if self._snapshot_dir is not None:
            shutil.rmtree(self._snapshot_dir, ignore_errors=True)
            self._snapshot_dir = None

    def __enter__(self) -> AuditQuery:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _recover_journal_in_place(path: Path) -> bool:
    """Replay a crashed session's journal tail into its file before it is read; False if the session
    turns out to be live (its writer, here or in another process, holds the file)."""
    journal = journal_path(path)
    if not journal.is_file() or not journal.stat().st_size:
        return True
    if is_open_in_process(path):
        return False
    try:
        con = duckdb.connect(str(path))
    except duckdb.Error as exc:
        if any(marker in str(exc).lower() for marker in _LOCK_MARKERS):
            return False
        raise
    try:
        replay_journal(con, journal)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    os.truncate(journal, 0)  # DuckDB holds it all now
    return True


def _remove_orphaned_snapshots(base: Path) -> None:
    """Snapshot copies left by a query process that died (they hold audit data: do not keep them)."""
    for entry in base.glob("q*-*"):
        pid_text = entry.name[1:].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's process (should not happen in a 0700 dir)


def _identity(path: Path) -> tuple[int, int, int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def _sql_str(path: Path) -> str:
    return str(path).replace("'", "''")


def query_json(result: QueryResult) -> str:
    return json.dumps(result.to_records(), ensure_ascii=False)
