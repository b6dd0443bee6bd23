"""The per-session audit writer.

One DuckDB file per session (`<audit_dir>/sessions/<session_id>.duckdb`) with exactly one writer: the
trusted wrapper of that session. DuckDB allows one read-write process per file, so giving each kernel its
own file lets any number of kernels record at once without coordinating; `AuditQuery` reads them all.

Durability: the point of durability is a per-session append-only journal
(`<session_id>.journal`, one `<hash> <canonical JSON>` line per event). A durable event (decisions,
violations, credential access, ...) is appended there - together with every event recorded before it
that is not durable yet - and `fdatasync`ed before `record` returns: one small write and one sync,
measured ~7x cheaper than a DuckDB commit. Events reach the DuckDB file in batches through the Appender,
off the critical path (a background thread at cell end, or `flush()`), and once DuckDB has committed
everything the journal holds, the journal is truncated. After a crash, the journal's tail is replayed
into DuckDB when the file is next opened (by the store, a query or `verify`). Any write failure raises
`AuditWriteError` and the store stays failed: every later call raises too, so the kernel cannot drift
back into running cells unaudited.

Automatic checkpoints are disabled while the session is live: the main file then never changes under a
reader and the WAL only grows by appends, which is what lets `AuditQuery` take a consistent snapshot of a
live session (copy main file, WAL and journal; a torn WAL tail replays as an uncommitted transaction, a
torn journal line is ignored).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import json
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
from pydantic import BaseModel

from .errors import AuditWriteError
from .events import (
    ALWAYS_DURABLE,
    NAME_FIELDS,
    AuditEvent,
    AuditEventError,
    EventType,
    canonical_bytes,
    envelope_text,
    format_ts,
    genesis_hash,
    new_event_id,
    validate_detail,
)
from .paths import ANCHORS_FILE, SESSIONS_SUBDIR, check_session_id, ensure_private_dir, session_path
from .schema import EVENT_COLUMNS, PROMOTED_FIELDS, SESSION_DDL, STORE_FORMAT, promoted_expression

_DECISIONS = {"allow", "deny", "escalate"}

# Large enough that DuckDB never checkpoints on its own while the session is live (see module doc).
_LIVE_CHECKPOINT_THRESHOLD = "16GB"


# Session files this process is writing: DuckDB would hand another in-process connect() the same
# instance, so purge/repair code must consult this rather than rely on the file lock.
_OPEN_IN_PROCESS: dict[Path, weakref.ref[AuditStore]] = {}


def is_open_in_process(path: Path) -> bool:
    return Path(path).resolve() in _OPEN_IN_PROCESS


def store_in_process(path: Path) -> AuditStore | None:
    """The live store of this process that writes `path`, if any."""
    ref = _OPEN_IN_PROCESS.get(Path(path).resolve())
    return ref() if ref is not None else None


def _one(result: duckdb.DuckDBPyConnection) -> tuple[Any, ...] | None:
    """The first row, reading the result to its end (DuckDB 2 keeps a half-read result open and
    refuses further statements on the connection)."""
    rows = result.fetchall()
    return rows[0] if rows else None


def _utcnow() -> datetime:
    return datetime.now(UTC)


JOURNAL_SUFFIX = ".journal"


def journal_path(db_path: Path) -> Path:
    return (
        Path(str(db_path)[: -len(".duckdb")] + JOURNAL_SUFFIX)
        if str(db_path).endswith(".duckdb")
        else Path(f"{db_path}{JOURNAL_SUFFIX}")
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Promoted detail fields: (detail key, Python type the typed column holds).
_PROMOTED_KEYS: tuple[tuple[str, type], ...] = tuple(
    (path.strip('"'), {"VARCHAR": str, "DOUBLE": float, "BIGINT": int, "BOOLEAN": bool}[sql_type])
    for _column, sql_type, path in PROMOTED_FIELDS
)


_PROMOTED_INDEX: dict[str, tuple[int, type]] = {
    key: (i, kind) for i, (key, kind) in enumerate(_PROMOTED_KEYS)
}
_PROMOTED_KEYSET = frozenset(_PROMOTED_INDEX)
_NO_PROMOTED = (None,) * len(_PROMOTED_KEYS)


def promoted_values(detail: Mapping[str, Any]) -> tuple[Any, ...]:
    """The typed-column copies of the promoted detail fields (None where absent or of another type).

    Only the promoted keys the detail has are looked at (a detail has a few of them at most)."""
    present = _PROMOTED_KEYSET.intersection(detail)
    if not present:
        return _NO_PROMOTED
    values = list(_NO_PROMOTED)
    for key in present:
        value = detail[key]
        if value is None:
            continue
        index, kind = _PROMOTED_INDEX[key]
        if kind is bool:
            value = value if isinstance(value, bool) else None
        elif kind is float:
            value = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        elif kind is int:
            value = value if isinstance(value, int) and not isinstance(value, bool) else None
        else:
            value = value if isinstance(value, str) else None
        values[index] = value
    return tuple(values)


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _ONE_MICROSECOND


_ONE_MICROSECOND = datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC) - _EPOCH


def _row_from_canonical(digest: str, canonical: str) -> tuple[Any, ...]:
    env = json.loads(canonical)
    moment = datetime.strptime(env["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    detail = env.get("detail")
    return (
        env["event_id"], _micros(moment), env["session_id"], env["seq"], env["event_type"],
        env.get("decision"), env.get("rule"), env.get("reason"), env.get("cell_id"), env.get("name"),
        env["prev_hash"], digest, canonical, None,
        *promoted_values(detail if isinstance(detail, dict) else {}),
    )  # fmt: skip


@functools.cache
def _arrow_schemas() -> tuple[Any, Any]:
    """(schema of the built columns, schema of the inserted table); pyarrow is imported only when a
    large batch first needs it."""
    import pyarrow as pa

    kinds = {"VARCHAR": pa.string(), "DOUBLE": pa.float64(), "BIGINT": pa.int64(), "BOOLEAN": pa.bool_()}
    types = {"ts": pa.int64(), "seq": pa.int64(), "purged_at": pa.int64()}
    types.update({column: kinds[sql_type] for column, sql_type, _path in PROMOTED_FIELDS})
    built = pa.schema([(c, types.get(c, pa.string())) for c in EVENT_COLUMNS])
    stamp = pa.timestamp("us", tz="UTC")
    return built, built.set(1, pa.field("ts", stamp)).set(13, pa.field("purged_at", stamp))


_gc_lock = threading.Lock()
_gc_pausers = 0  # threads inside `_gc_paused()` that found the collector enabled


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a large batch is converted to Arrow columns.

    The conversion allocates no reference cycles, but a batch's queued row tuples are tracked
    objects: every collection the conversion triggered traversed all of them again (measured ~15% of
    a 100k-event flush, 1.35x slower flushes). The collector is process-wide, so the pause is
    counted: it is re-enabled when the last thread that paused it leaves, and never enabled here if
    someone else had disabled it."""
    global _gc_pausers
    with _gc_lock:
        paused = gc.isenabled() or _gc_pausers > 0
        if paused:
            _gc_pausers += 1
            gc.disable()
    try:
        yield
    finally:
        if paused:
            with _gc_lock:
                _gc_pausers -= 1
                if _gc_pausers == 0:
                    gc.enable()


# Below this many rows a batch goes through the Appender: a cell's handful of events costs no more
# than with Arrow, and pyarrow's first `pa.array` imports pandas (~0.3 s, ~50 MB), which a kernel
# wrapper that never sees a large batch should not pay.
ARROW_MIN_ROWS = 256


def insert_rows(con: duckdb.DuckDBPyConnection, rows: list[tuple[Any, ...]]) -> None:
    """Insert store rows (EVENT_COLUMNS order, `ts` as microseconds since the epoch) in one statement:
    in autocommit mode one atomic, durable transaction (a failure leaves nothing of it behind).

    A large batch is handed to DuckDB as Arrow columns built column-wise (no per-value conversion in
    the DuckDB client); a small one goes through the Appender."""
    if len(rows) < ARROW_MIN_ROWS:
        appender = con.appender("events")
        try:
            appender.append_rows([(*row[:1], _EPOCH + _ONE_MICROSECOND * row[1], *row[2:]) for row in rows])
            appender.flush()
        except BaseException:
            appender.clear()
            raise
        return
    import pyarrow as pa

    built, inserted = _arrow_schemas()
    with _gc_paused():
        # The row tuples converted as one struct array and split into its columns: pyarrow walks
        # the tuples in C++ (a Python transpose with zip(*rows) plus one conversion per column
        # measured ~1.6x slower).
        arrays = pa.array(rows, type=pa.struct(list(built))).flatten()
    arrays[1] = arrays[1].cast(inserted.field(1).type)
    arrays[13] = arrays[13].cast(inserted.field(13).type)
    batch = pa.Table.from_arrays(arrays, schema=inserted)
    name = f"_ironcage_batch_{threading.get_ident()}"
    con.register(name, batch)
    try:
        con.execute(f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) SELECT * FROM {name}")  # noqa: S608
    finally:
        con.unregister(name)


def upgrade_events_table(con: duckdb.DuckDBPyConnection) -> None:
    """Bring a format-1 session file (no promoted columns) to the current format, in place."""
    present = {
        row[0]
        for row in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = 'events' AND database_name = current_database()"
        ).fetchall()
    }
    missing = [(c, t) for c, t, _p in PROMOTED_FIELDS if c not in present]
    if not missing:
        return
    con.execute("BEGIN TRANSACTION")
    for column, sql_type in missing:
        con.execute(f"ALTER TABLE events ADD COLUMN {column} {sql_type}")
    assignments = ", ".join(f"{c} = {promoted_expression(c)}" for c, _t in missing)
    con.execute(f"UPDATE events SET {assignments} WHERE canonical IS NOT NULL")  # noqa: S608
    con.execute("UPDATE store_meta SET value = ? WHERE key = 'format'", [STORE_FORMAT])
    con.execute("COMMIT")


def replay_journal(con: duckdb.DuckDBPyConnection, journal: Path) -> int:
    """Insert the journal's events that the database lacks (after a crash); returns how many.

    Stops at the first torn (unterminated) or corrupt line, or at a gap in seq: what follows cannot be
    chained onto what the database holds."""
    if not journal.is_file():  # absent, or not a regular file (never read a device as a journal)
        return 0
    data = journal.read_bytes()
    if not data:
        return 0
    have = _one(
        con.execute(
            "SELECT greatest(coalesce((SELECT max(seq) FROM events), 0), "
            "coalesce((SELECT max(compacted_through_seq) FROM purge_log), 0))"
        )
    )
    expected = int(have[0] if have else 0) + 1
    rows = []
    for line in data.split(b"\n")[:-1]:  # the last piece is b"" or a torn line
        digest, _, raw = line.partition(b" ")
        if hashlib.sha256(raw).hexdigest() != digest.decode("ascii", "replace"):
            break
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            break
        row = _row_from_canonical(digest.decode(), text)
        if row[3] < expected:
            continue
        if row[3] != expected:
            break
        rows.append(row)
        expected += 1
    if rows:
        upgrade_events_table(con)
        insert_rows(con, rows)
    return len(rows)


def append_anchor(audit_dir: Path, record: Mapping[str, Any]) -> None:
    """Append one line to the anchor log (O_APPEND: small lines from several processes never interleave)."""
    line = (json.dumps(dict(record), sort_keys=True, separators=(",", ":")) + "\n").encode()
    fd = os.open(Path(audit_dir) / ANCHORS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


_EVENT_FIELDS_SET = frozenset(AuditEvent.model_fields)


def _event(fields: dict[str, Any]) -> AuditEvent:
    """An `AuditEvent` from fields the store built itself (already valid): what `model_construct`
    does, without its per-field default handling (every field is given)."""
    event = AuditEvent.__new__(AuditEvent)
    object.__setattr__(event, "__dict__", fields)
    object.__setattr__(event, "__pydantic_fields_set__", set(_EVENT_FIELDS_SET))
    object.__setattr__(event, "__pydantic_extra__", None)
    object.__setattr__(event, "__pydantic_private__", None)
    return event


class AuditStore:
    """Writer of one session's audit events; thread-safe.

    ``record(event_type, decision=..., rule=..., reason=..., detail={...}, durable=...)`` validates the
    detail against the event type's model, chains the event (``seq``, ``prev_hash``, ``hash`` =
    SHA-256 of the canonical JSON) and, if durable, journals it (fdatasync) before returning.
    ``commit()`` makes everything recorded so far durable the same way (``sync=False``: appended to
    the journal without fdatasync, which survives the wrapper being killed but not a power loss until
    the next durable write syncs the file); ``flush()`` writes the recorded events into DuckDB
    (``wait=False``: in the background).
    """

    def __init__(
        self,
        audit_dir: str | os.PathLike[str],
        session_id: str,
        *,
        batch_size: int = 10_000,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.session_id = check_session_id(session_id)
        try:
            self.audit_dir = ensure_private_dir(Path(audit_dir))
            ensure_private_dir(self.audit_dir / SESSIONS_SUBDIR)
        except OSError as exc:
            raise AuditWriteError(f"cannot create the audit directory {audit_dir}: {exc}") from exc
        self.path = session_path(self.audit_dir, session_id)
        self.journal_path = journal_path(self.path)
        self.batch_size = batch_size
        self._clock = clock
        # Lock order: _db_lock before _lock. record() takes only _lock, so it never waits for DuckDB.
        self._lock = threading.RLock()
        self._db_lock = threading.RLock()
        self._queue: list[tuple[Any, ...]] = []  # recorded, not yet in DuckDB (chain order)
        self._unjournaled: list[tuple[int, bytes]] = []  # recorded, not yet durable anywhere
        self._unsynced = False  # journal appends not yet fdatasync'ed (commit(sync=False))
        self._failure: BaseException | None = None
        self._closed = False
        self._wal_private = False
        self._flush_wanted = threading.Condition()
        self._flush_requested = False
        self._stopping = False
        self._flusher: threading.Thread | None = None
        self._journal_fd: int | None = None
        try:
            self._con = duckdb.connect(
                str(self.path),
                config={"checkpoint_threshold": _LIVE_CHECKPOINT_THRESHOLD, "threads": 1},
            )
            self._con.execute(SESSION_DDL)
            if not self._con.execute("SELECT count(*) FROM store_meta").fetchall()[0][0]:
                self._con.execute("INSERT INTO store_meta VALUES ('format', ?)", [STORE_FORMAT])
            upgrade_events_table(self._con)  # a session file written by an earlier version
            replay_journal(self._con, self.journal_path)  # a crashed earlier run of this session
            # The schema goes into the main file now, so a live snapshot never depends on it in the WAL.
            self._con.execute("CHECKPOINT")
            os.chmod(self.path, 0o600)
            self._seq, self._prev_hash = self._chain_head()
            self._journaled_seq = self._ingested_seq = self._seq
            self._journal_fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            if self.journal_path.is_file():
                os.ftruncate(self._journal_fd, 0)  # everything in it is in DuckDB now
                os.fsync(self._journal_fd)
            self._identity = self._stat(self.path)
            self._journal_identity = self._stat(self.journal_path)
            self._journal_regular = self.journal_path.is_file()
            _OPEN_IN_PROCESS[self.path.resolve()] = weakref.ref(self)
        except (duckdb.Error, OSError) as exc:
            raise AuditWriteError(f"cannot open audit log {self.path}: {exc}") from exc

    @staticmethod
    def _stat(path: Path) -> tuple[int, int]:
        stat = os.stat(path)
        return stat.st_dev, stat.st_ino

    # -- chain state -------------------------------------------------------------------------------------
    def _chain_head(self) -> tuple[int, str]:
        """(last seq, its hash) when reopening an existing session file, else (0, genesis)."""
        row = _one(self._con.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"))
        checkpoint = _one(
            self._con.execute(
                "SELECT compacted_through_seq, compacted_through_hash FROM purge_log "
                "ORDER BY compacted_through_seq DESC LIMIT 1"
            )
        )
        candidates = [r for r in (row, checkpoint) if r is not None]
        if not candidates:
            return 0, genesis_hash(self.session_id)
        seq, digest = max(candidates, key=lambda r: r[0])
        return int(seq), str(digest)

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def last_hash(self) -> str:
        return self._prev_hash

    @property
    def failed(self) -> BaseException | None:
        """The first write failure, if any (the store refuses everything after it)."""
        return self._failure

    @property
    def pending_count(self) -> int:
        """Events recorded but not yet durable (neither journaled nor in DuckDB)."""
        return len(self._unjournaled)

    # -- writing -----------------------------------------------------------------------------------------
    def record(
        self,
        event_type: str,
        *,
        decision: str | None = None,
        rule: str | None = None,
        reason: str | None = None,
        detail: Mapping[str, Any] | BaseModel | None = None,
        durable: bool = False,
    ) -> AuditEvent:
        """Record one event; durable ones (and every decision) are on disk before this returns.

        Raises `AuditWriteError` if the log cannot be written (fail closed), `AuditEventError` (a
        ValueError) if the event does not match its schema; the latter also marks the store failed,
        because the action it was meant to record must not proceed unrecorded.
        """
        with self._lock:
            self._check_usable()
            try:
                clean_detail = validate_detail(event_type, detail if detail is not None else {})
                if decision is not None and decision not in _DECISIONS:
                    raise AuditEventError(f"decision must be one of {sorted(_DECISIONS)}, not {decision!r}")
            except AuditEventError as exc:
                self._failure = exc
                raise
            moment = self._clock()
            if moment.tzinfo is not UTC:
                moment = moment.astimezone(UTC)
            seq = self._seq + 1
            rule, reason = envelope_text(rule), envelope_text(reason)
            cell_id = envelope_text(clean_detail.get("cell_id"))
            name = envelope_text(clean_detail.get(NAME_FIELDS[event_type]))
            event_id = new_event_id()
            envelope = {
                "event_id": event_id,
                "ts": format_ts(moment),
                "session_id": self.session_id,
                "seq": seq,
                "event_type": str(event_type),
                "decision": decision,
                "rule": rule,
                "reason": reason,
                "cell_id": cell_id,
                "name": name,
                "detail": clean_detail,
                "prev_hash": self._prev_hash,
            }
            try:
                data = canonical_bytes(envelope)
            except (TypeError, ValueError) as exc:
                self._failure = exc
                raise AuditEventError(f"event is not JSON-serialisable: {exc}") from exc
            digest = hashlib.sha256(data).hexdigest()
            row = (
                event_id, _micros(moment), self.session_id, seq, envelope["event_type"], decision, rule,
                reason, cell_id, name, self._prev_hash, digest, data.decode("utf-8"), None,
                *promoted_values(clean_detail),
            )  # fmt: skip
            self._queue.append(row)
            self._unjournaled.append((seq, b"%s %s\n" % (digest.encode("ascii"), data)))
            self._seq, self._prev_hash = seq, digest
            if durable or decision is not None or event_type in ALWAYS_DURABLE:
                self._journal_locked()
            full = len(self._queue) >= self.batch_size
        if full:
            self.flush()  # back-pressure: a burst of events is written before more are buffered
        envelope["event_type"] = EventType(event_type)
        envelope["hash"] = digest
        return _event(envelope)

    def commit(self, *, sync: bool = True) -> int:
        """Make every recorded event durable (one journal append + fdatasync). Returns how many.
        With ``sync=False`` the append is not synced (see the class docstring)."""
        with self._lock:
            self._check_usable()
            return self._journal_locked(sync=sync)

    def _journal_locked(self, *, sync: bool = True) -> int:
        if not self._unjournaled:
            if sync and self._unsynced:
                try:
                    assert self._journal_fd is not None
                    os.fdatasync(self._journal_fd)
                except OSError as exc:
                    self._failure = exc
                    raise AuditWriteError(f"audit journal sync of {self.journal_path} failed: {exc}") from exc
                self._unsynced = False
            return 0
        try:
            self._check_identity()
            assert self._journal_fd is not None
            data = b"".join(line for _seq, line in self._unjournaled)
            view = memoryview(data)
            while view:
                written = os.write(self._journal_fd, view)
                view = view[written:]
            if sync:
                os.fdatasync(self._journal_fd)  # also syncs earlier unsynced appends
            self._unsynced = not sync
        except OSError as exc:
            self._failure = exc
            raise AuditWriteError(f"audit journal write to {self.journal_path} failed: {exc}") from exc
        count = len(self._unjournaled)
        self._journaled_seq = self._unjournaled[-1][0]
        self._unjournaled.clear()
        return count

    def flush(self, *, wait: bool = True) -> int:
        """Write every recorded event into DuckDB (call at cell end). Returns how many were written.

        `wait=False` hands the write to a background thread and returns at once, so the cell's reply
        need not wait for it. If it fails, the next `record`/`flush` raises `AuditWriteError` (the
        store is failed), so nothing proceeds unrecorded.
        """
        if not wait:
            with self._lock:
                self._check_usable()
                count = len(self._queue)
            if count:
                self._request_background_flush()
            return count
        with self._db_lock:
            with self._lock:
                self._check_usable()
            return self._ingest_locked()

    def _ingest_locked(self) -> int:
        """Move the queue into DuckDB (caller holds _db_lock); truncate the journal when redundant."""
        with self._lock:
            batch, self._queue = self._queue, []
        if not batch:
            return 0
        try:
            self._check_identity()
            # One INSERT of the batch as Arrow columns: in autocommit mode one atomic, durable
            # transaction (a failure leaves nothing of it behind).
            insert_rows(self._con, batch)
            if not self._wal_private:
                wal = Path(f"{self.path}.wal")
                if wal.exists():
                    os.chmod(wal, 0o600)
                    self._wal_private = True
        except (duckdb.Error, OSError) as exc:
            self._failure = exc
            raise AuditWriteError(f"audit write to {self.path} failed: {exc}") from exc
        except BaseException as exc:
            self._failure = exc
            raise AuditWriteError(f"audit write to {self.path} failed: {exc!r}") from exc
        with self._lock:
            self._ingested_seq = batch[-1][3]
            if self._unjournaled and self._unjournaled[-1][0] <= self._ingested_seq:
                self._unjournaled.clear()  # the usual case: DuckDB now holds all of them
            elif self._unjournaled:
                self._unjournaled = [
                    (seq, line) for seq, line in self._unjournaled if seq > self._ingested_seq
                ]
            if (
                self._ingested_seq >= self._journaled_seq
                and self._journal_fd is not None
                and self._journal_regular
            ):
                try:  # DuckDB holds all the journal does: start it afresh
                    os.ftruncate(self._journal_fd, 0)
                    self._unsynced = False
                except OSError as exc:
                    self._failure = exc
                    raise AuditWriteError(
                        f"audit journal {self.journal_path} cannot be reset: {exc}"
                    ) from exc
        return len(batch)

    def snapshot_to(self, target: Path) -> None:
        """Write a copy of this session (everything recorded so far) to a new file `target`, through
        the writer's own connection.

        A query in the writer's process must not copy the live file itself: DuckDB's lock on it is
        a POSIX record lock, and closing any descriptor of the file in this process - a copy's -
        releases it, after which another process could open the live file read-write."""
        with self._db_lock:
            with self._lock:
                self._check_usable()
            self._ingest_locked()
            try:
                self._con.execute(
                    f"ATTACH '{str(target).replace(chr(39), chr(39) * 2)}' AS ironcage_snapshot"
                )
                try:
                    for table in ("events", "purge_log", "store_meta"):
                        self._con.execute(f"CREATE TABLE ironcage_snapshot.{table} AS SELECT * FROM {table}")  # noqa: S608
                finally:
                    self._con.execute("DETACH ironcage_snapshot")
            except duckdb.Error as exc:
                raise AuditWriteError(f"cannot copy the live audit log {self.path}: {exc}") from exc

    def _request_background_flush(self) -> None:
        with self._flush_wanted:
            if self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._background_flusher, name=f"audit-flush-{self.session_id}", daemon=True
                )
                self._flusher.start()
            self._flush_requested = True
            self._flush_wanted.notify()

    def _background_flusher(self) -> None:
        while True:
            with self._flush_wanted:
                while not self._flush_requested and not self._stopping:
                    self._flush_wanted.wait()  # blocks until notified: no polling
                if self._stopping:
                    return
                self._flush_requested = False
            with self._db_lock:
                if self._failure is None and not self._closed:
                    with contextlib.suppress(AuditWriteError):  # recorded in _failure; next call raises
                        self._ingest_locked()

    def _stop_flusher(self) -> None:
        with self._flush_wanted:
            self._stopping = True
            self._flush_wanted.notify()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join()

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise AuditWriteError(f"audit log unusable after an earlier failure: {self._failure}")
        if self._closed:
            raise AuditWriteError("audit store is closed")

    def _check_identity(self) -> None:
        """Writes to an unlinked or replaced file would 'succeed' into nowhere: refuse them."""
        for path, identity in ((self.path, self._identity), (self.journal_path, self._journal_identity)):
            try:
                current = self._stat(path)
            except FileNotFoundError as exc:
                raise OSError(f"audit file {path} was removed") from exc
            if current != identity:
                raise OSError(f"audit file {path} was replaced")

    def close(self) -> None:
        """Write everything into DuckDB, checkpoint, drop the journal, append the chain head to the
        anchor log and release the file."""
        self._stop_flusher()
        with self._db_lock, self._lock:
            if self._closed:
                return
            try:
                if self._failure is None:
                    self._ingest_locked()
                    self._con.execute("CHECKPOINT")
            except (duckdb.Error, OSError) as exc:
                self._failure = self._failure or exc
                raise AuditWriteError(f"closing audit log {self.path} failed: {exc}") from exc
            finally:
                self._closed = True
                self._con.close()
                if self._journal_fd is not None:
                    os.close(self._journal_fd)
                    self._journal_fd = None
                _OPEN_IN_PROCESS.pop(self.path.resolve(), None)
            if self._failure is None:
                with contextlib.suppress(FileNotFoundError):
                    self.journal_path.unlink()  # DuckDB has checkpointed all of it
            if self._failure is None and self._seq:
                try:
                    append_anchor(
                        self.audit_dir,
                        {
                            "kind": "close",
                            "session_id": self.session_id,
                            "seq": self._seq,
                            "hash": self._prev_hash,
                            "ts": format_ts(self._clock()),
                        },
                    )
                except OSError as exc:
                    raise AuditWriteError(f"cannot write audit anchor: {exc}") from exc

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
