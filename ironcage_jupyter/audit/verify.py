"""`ironcage-jupyter audit verify`: check every session's hash chain and say what was tampered with.

Per session, one SQL pass finds the rows that are not exactly right (content hash, columns vs. the
signed canonical bytes, link to the previous row, seq continuity); only those are examined in Python,
so a clean log of a million events costs one scan. Classification of what is found:

- modified: the stored hash is not SHA-256 of the canonical bytes; a column differs from the signed
  content; or a row's hash was recomputed (its successor still chains to the old hash).
- deleted: seq numbers missing (gap, head beyond the purge checkpoint, tail short of the close anchor),
  or a session that has a close anchor but no file any more.
- inserted: a second row with the same seq, or rows beyond the seq anchored when the session closed.
- reordered: a row whose signed seq is not the seq it sits at, or that chains to another event than its
  predecessor.

Limits (see docs/audit.md): whoever can write the files can rewrite a whole chain consistently; what
anchors it is the close anchor kept in `anchors.jsonl` (and wherever the user copies those heads).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from .paths import ANCHORS_FILE
from .schema import PROMOTED_FIELDS

if TYPE_CHECKING:  # imported where used: a verify worker process needs neither (nor pydantic)
    from .query import AttachedSession, AuditQuery

_MAX_LISTED = 1000


# One JSON parse per row pulls every envelope field out of the canonical bytes; each must equal its
# column, so what queries read is exactly what was hashed. (Rebuilding the canonical prefix/suffix
# from the columns with string operations measured slower than this parse.)
_FIELDS_OK = """
    f[1] IS NOT DISTINCT FROM event_id
    AND f[2] IS NOT DISTINCT FROM strftime(ts, '%Y-%m-%dT%H:%M:%S.%fZ')
    AND f[3] IS NOT DISTINCT FROM session_id AND session_id = $session
    AND f[4] IS NOT DISTINCT FROM seq::VARCHAR
    AND f[5] IS NOT DISTINCT FROM event_type
    AND f[6] IS NOT DISTINCT FROM decision
    AND f[7] IS NOT DISTINCT FROM rule
    AND f[8] IS NOT DISTINCT FROM reason
    AND f[9] IS NOT DISTINCT FROM prev_hash
    AND f[10] IS NOT DISTINCT FROM cell_id
    AND f[11] IS NOT DISTINCT FROM name
""" + "".join(
    f"    AND TRY_CAST(f[{12 + i}] AS {sql_type}) IS NOT DISTINCT FROM {column}\n"
    for i, (column, sql_type, _path) in enumerate(PROMOTED_FIELDS)
)
_FIELD_PATHS = (
    "['$.event_id', '$.ts', '$.session_id', '$.seq', '$.event_type', '$.decision', '$.rule', '$.reason', "
    "'$.prev_hash', '$.cell_id', '$.name', "
    + ", ".join(f"'$.detail.{path}'" for _c, _t, path in PROMOTED_FIELDS)
    + "]"
)

# Three passes, all built from constants only ({alias} is an internal s<N> name): SHA-256 of every
# canonical in Python (OpenSSL with SHA-NI: measured ~3x faster per core than DuckDB's sha256()),
# a DuckDB scan checking that the columns equal the signed envelope fields, and a narrow window
# over (seq, hash, prev_hash) for the links. Only the rows they flag reach the classification.
_HASH_SQL = "SELECT '{alias}' AS alias, hash, canonical::BLOB FROM {alias}.events WHERE canonical IS NOT NULL"

_CONTENT_SQL = (
    """
WITH r AS (
    SELECT *,
           CASE WHEN canonical IS NULL THEN NULL ELSE json_extract_string(canonical, """  # noqa: S608
    + _FIELD_PATHS
    + """) END AS f
    FROM {source}
), c AS (
    SELECT *, CASE WHEN canonical IS NULL THEN NULL ELSE ("""  # noqa: S608
    + _FIELDS_OK
    + """) END AS fields_ok
    FROM r
)
SELECT seq, hash, NULL::BOOLEAN AS content_ok, fields_ok, canonical IS NULL AS tombstone,
       purged_at IS NOT NULL AS has_purged_at, canonical, prev_hash, event_id,
       strftime(ts, '%Y-%m-%dT%H:%M:%S.%fZ'), session_id, event_type, decision, rule, reason, cell_id, name
FROM c
WHERE {where}
"""
)
_ANOMALIES = "(canonical IS NULL) <> (purged_at IS NOT NULL) OR NOT coalesce(fields_ok, TRUE)"
_KEYS = "list_contains($hashes, hash)"

_LINK_SQL = """
SELECT pos, seq, hash, prev_hash, prev_row_hash, prev_row_seq
FROM (
    SELECT seq, hash, prev_hash,
           lag(hash) OVER w AS prev_row_hash,
           lag(seq) OVER w AS prev_row_seq,
           row_number() OVER w AS pos
    FROM {alias}.events
    WINDOW w AS (ORDER BY seq, hash)
)
WHERE pos = 1 OR prev_hash IS DISTINCT FROM prev_row_hash OR seq IS DISTINCT FROM prev_row_seq + 1
ORDER BY pos
"""

# The fast path: two scans at once. DuckDB counts, per session, the rows whose columns differ from
# the signed content (or whose purge mark does not fit), on its own threads; meanwhile Python
# streams (seq, hash, prev_hash, canonical) and checks the hashes and the links. `canonical` is read
# as it is stored (VARCHAR: Arrow hands over its UTF-8 bytes; a cast to BLOB copied every value
# again) and a tombstone is a null in it (no separate `IS NULL` column, which read it once more).
_FAST_CHAIN_COLUMNS = "seq, hash, prev_hash, canonical AS data, epoch_us(ts) AS ts_us"
_FAST_CHAIN_SQL = "SELECT " + _FAST_CHAIN_COLUMNS + " FROM {alias}.events"  # noqa: S608 - constants only
_FAST_FIELDS_SQL = (
    """
SELECT '{alias}' AS alias, count(*) FILTER (WHERE NOT coalesce(CASE WHEN canonical IS NULL
       THEN purged_at IS NOT NULL ELSE purged_at IS NULL AND ("""  # noqa: S608
    + "\n".join(line for line in _FIELDS_OK.strip().splitlines() if "f[2]" not in line).replace(
        "$session", "${alias}_session"
    )
    + """
       ) END, FALSE)) AS bad
FROM (
    SELECT *, CASE WHEN canonical IS NULL THEN NULL ELSE json_extract_string(canonical, """
    + _FIELD_PATHS
    + """) END AS f
    FROM {alias}.events
)
"""
)
# A worker's single scan: the chain columns plus, per row, the same column check as
# `_FAST_FIELDS_SQL` (reading and decompressing `canonical` once instead of twice).
_FAST_HEAD = "SELECT '{alias}' AS alias, count(*) FILTER (WHERE NOT coalesce("
_FAST_COMBINED_SQL = _FAST_FIELDS_SQL.replace(
    _FAST_HEAD, "SELECT " + _FAST_CHAIN_COLUMNS + ", coalesce("
).replace("END, FALSE)) AS bad", "END, FALSE) AS ok")
assert _FAST_HEAD in _FAST_FIELDS_SQL and "END, FALSE)) AS bad" in _FAST_FIELDS_SQL
_FAST_BATCH_ROWS = 1 << 14


def _fast_fields(cursor: Any, subset: dict[str, AttachedSession]) -> dict[str, int]:
    """Alias -> how many rows have a column that differs from their signed content."""
    branches, params = [], {}
    for session_id, attached in subset.items():
        branches.append(_for_format(_FAST_FIELDS_SQL, attached).replace("{alias}", attached.alias))
        params[f"{attached.alias}_session"] = session_id
    if not branches:
        return {}
    return dict(cursor.execute(" UNION ALL ".join(branches), params).fetchall())


class _NotProven(Exception):
    """The fast path could not prove the session clean: the precise passes take over."""


def _flat(array: pa.Array) -> bytes:
    """The concatenated values of a string/binary array without nulls (one copy; comparing
    memoryviews goes element by element, comparing bytes is one memcmp)."""
    if array.null_count:
        raise _NotProven("null values")
    offsets, data = _offsets(array)
    return bytes(data[offsets[0] : offsets[-1]])


def _offsets(array: pa.Array) -> tuple[memoryview, memoryview]:
    """The value offsets (len + 1 of them) and the data buffer of a string/binary array."""
    buffers = array.buffers()
    if pa.types.is_large_binary(array.type) or pa.types.is_large_string(array.type):
        offsets = memoryview(buffers[1]).cast("q")  # type: ignore[arg-type]
    elif pa.types.is_binary(array.type) or pa.types.is_string(array.type):
        offsets = memoryview(buffers[1]).cast("i")  # type: ignore[arg-type]
    else:
        raise _NotProven(f"unexpected Arrow type {array.type}")
    data = memoryview(buffers[2]) if buffers[2] is not None else memoryview(b"")  # type: ignore[arg-type]
    return offsets[array.offset : array.offset + len(array) + 1], data


def _fast_chain(
    cursor: Any, attached: AttachedSession | _WorkerSession, session_id: str, *, check_columns: bool = False
) -> tuple[Any, ...] | None:
    """Prove, in one streaming scan, that the session's rows in storage order are a perfect chain:
    consecutive seqs, each `prev_hash` the previous row's `hash`, every hash SHA-256 of its
    canonical bytes (the columns are checked by `_fast_fields` meanwhile).
    Returns the first row's (seq, hash, prev_hash) followed by the session's (events, tombstones,
    last seq) - None for an empty session; raises `_NotProven` otherwise. It classifies nothing:
    that is the precise path's job."""
    sha256 = hashlib.sha256
    if check_columns:  # the columns are checked in this scan (else by `_fast_fields` meanwhile)
        sql = _for_format(_FAST_COMBINED_SQL, attached).replace(
            "${alias}_session", "'" + session_id.replace("'", "''") + "'"
        )
    else:
        sql = _FAST_CHAIN_SQL
    reader = cursor.sql(sql.replace("{alias}", attached.alias)).to_arrow_reader(_FAST_BATCH_ROWS)
    # The signed `ts` is checked on the read-ahead thread (Arrow compute, off the GIL) while this one hashes.
    batches = _prefetched(reader, check=lambda batch: _check_ts(batch.column(3), batch.column(4)))
    head: tuple[Any, ...] | None = None
    last_seq: int | None = None
    last_hash = b""
    events = tombstones = 0
    try:
        for batch in batches:
            rows = batch.num_rows
            if not rows:
                continue
            seq, hashes, prevs, data = batch.columns[:4]
            if check_columns:
                ok = batch.column(5)
                if ok.null_count or not pc.all(ok).as_py():
                    raise _NotProven("a column differs from the signed content")
            if seq.null_count:
                raise _NotProven("nulls")
            if head is None:
                head = (seq[0].as_py(), hashes[0].as_py(), prevs[0].as_py())
            # seq: consecutive across the batch and from the previous one
            first = seq[0].as_py()
            if last_seq is not None and first != last_seq + 1:
                raise _NotProven("seq")
            if rows > 1 and not pc.all(pc.equal(pc.subtract(seq[1:], seq[:-1]), 1)).as_py():
                raise _NotProven("seq")
            last_seq = seq[rows - 1].as_py()
            # hashes: all 64 characters, each row's prev_hash is the previous row's hash
            if not pc.all(pc.equal(pc.binary_length(hashes), 64)).as_py():
                raise _NotProven("hash length")
            if not pc.all(pc.equal(pc.binary_length(prevs), 64)).as_py():
                raise _NotProven("prev_hash length")
            hash_flat, prev_flat = _flat(hashes), _flat(prevs)
            if last_hash and prev_flat[:64] != last_hash:
                raise _NotProven("link")
            if prev_flat[64:] != hash_flat[:-64]:
                raise _NotProven("link")
            last_hash = hash_flat[-64:]
            # content: SHA-256 of every canonical; raw digests per row, hex-encoded once per batch
            # (exact: lowercase hex, as stored). The bytes hashed are the Arrow buffer's slices.
            offsets, buffer = _offsets(data)
            bounds = offsets.tolist()
            computed = (
                b"".join([sha256(buffer[a:b]).digest() for a, b in zip(bounds, bounds[1:], strict=False)])
                .hex()
                .encode("ascii")
            )
            events += rows
            tombstones += data.null_count
            if data.null_count:
                # A tombstone (purged content: null) keeps its hash but not the bytes it was over;
                # its link is checked above, its purge mark by `_fast_fields`.
                patched = bytearray(computed)
                for i in pc.indices_nonzero(pc.is_null(data)).to_pylist():
                    patched[64 * i : 64 * i + 64] = hash_flat[64 * i : 64 * i + 64]
                computed = bytes(patched)
            if computed != hash_flat:
                raise _NotProven("hash")
    except pa.ArrowException as exc:
        raise _NotProven(str(exc)) from exc
    finally:
        batches.close()
        reader.close()
    return None if head is None else (*head, events, tombstones, last_seq)


_TS_TYPE = pa.timestamp("us", tz="UTC")
_TS_TAIL = 36  # len(',"ts":"YYYY-MM-DDTHH:MM:SS.ffffffZ"}')


def _check_ts(data: pa.Array, ts_us: pa.Array) -> None:
    """The signed `ts` equals the column, compared in Arrow (DuckDB's strftime of every row cost more
    than the whole JSON comparison). In canonical bytes `ts` is the last top-level key, so they end
    with `,"ts":"YYYY-MM-DDTHH:MM:SS.ffffffZ"}`; JSON strings cannot contain an unescaped `"`, so that
    tail is the top-level member. Anything else (tampering, another layout) is left to the precise
    path. Tombstones (null canonical) have no signed `ts` to compare."""
    if data.null_count:
        live = pc.is_valid(data)
        data, ts_us = data.filter(live), ts_us.filter(live)
    if not len(data):
        return
    if ts_us.null_count:
        raise _NotProven("ts")
    binary = pa.large_binary() if pa.types.is_large_string(data.type) else pa.binary()
    if pa.types.is_string(data.type) or pa.types.is_large_string(data.type):
        data = data.view(binary)  # the same buffers (UTF-8 bytes), sliced by byte
    tails = pc.binary_slice(data, -_TS_TAIL).cast(pa.string())
    if tails.null_count:
        raise _NotProven("ts")
    if not (
        pc.all(pc.equal(pc.binary_length(tails), _TS_TAIL)).as_py()
        and pc.all(pc.starts_with(tails, ',"ts":"')).as_py()
        and pc.all(pc.ends_with(tails, '"}')).as_py()
    ):
        raise _NotProven("ts layout")
    signed = pc.cast(pc.cast(pc.utf8_slice_codeunits(tails, 7, 34), _TS_TYPE), pa.int64())
    if not pc.all(pc.equal(signed, ts_us)).as_py():
        raise _NotProven("ts")


def _prefetched(
    reader: Any, depth: int = 2, check: Callable[[pa.RecordBatch], None] | None = None
) -> Generator[pa.RecordBatch, None, None]:
    """Batches of `reader`, fetched on another thread (DuckDB releases the GIL while it reads and
    converts), so reading the next batch overlaps hashing this one."""
    done = object()
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for batch in reader:
                if check is not None:
                    check(batch)  # raises: handed to the consumer below, like a read error
                while not stop.is_set():
                    try:
                        slots.put(batch, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(done)
        except BaseException as exc:  # handed to the consumer
            slots.put(exc)

    worker = threading.Thread(target=produce, name="audit-verify-read", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                slots.get_nowait()
        worker.join()


_SIGNED_FIELDS = (
    "event_id",
    "ts",
    "session_id",
    "event_type",
    "decision",
    "rule",
    "reason",
    "cell_id",
    "name",
)


def _signed_seq_only(canonical: str, columns: dict[str, Any]) -> int | None:
    """If the columns differ from the signed content only in seq, the signed seq (a moved event)."""
    try:
        signed = json.loads(canonical)
    except (TypeError, ValueError):
        return None
    if not isinstance(signed, dict) or signed.get("prev_hash") != columns["prev_hash"]:
        return None
    if any(signed.get(key) != columns[key] for key in _SIGNED_FIELDS):
        return None
    seq = signed.get("seq")
    return seq if isinstance(seq, int) and seq != columns["seq"] else None


@dataclass
class SessionReport:
    session_id: str
    events: int = 0
    tombstones: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    live: bool = False
    anchored: bool = False
    modified: list[int] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)
    inserted: list[int] = field(default_factory=list)
    reordered: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def tampered(self) -> bool:
        return bool(self.modified or self.deleted or self.inserted or self.reordered or self.problems)

    @property
    def status(self) -> str:
        if self.error:
            return "error"
        return "TAMPERED" if self.tampered else "ok"

    def _add(self, kind: str, seq: int, why: str) -> None:
        bucket: list[int] = getattr(self, kind)
        if seq not in bucket and len(bucket) < _MAX_LISTED:
            bucket.append(seq)
        if len(self.problems) < _MAX_LISTED:
            self.problems.append(f"{kind} seq {seq}: {why}")


@dataclass
class VerifyReport:
    sessions: list[SessionReport]

    @property
    def ok(self) -> bool:
        return all(s.status == "ok" for s in self.sessions)

    @property
    def exit_code(self) -> int:
        """0 all verified, 1 tampering found, 2 a session could not be read (and nothing tampered)."""
        if any(s.tampered for s in self.sessions):
            return 1
        if any(s.error for s in self.sessions):
            return 2
        return 0

    def to_json(self) -> str:
        return json.dumps(
            [asdict(s) | {"status": s.status} for s in self.sessions], indent=2, ensure_ascii=False
        )

    def render(self) -> str:
        lines = []
        for s in self.sessions:
            state = "live" if s.live else ("closed" if s.anchored else "unclosed")
            head = f"{s.status:8} {s.session_id}: {s.events} events ({state}"
            head += f", {s.tombstones} purged tombstones)" if s.tombstones else ")"
            lines.append(head)
            if s.error:
                lines.append(f"    error: {s.error}")
            for kind in ("modified", "deleted", "inserted", "reordered"):
                seqs = getattr(s, kind)
                if seqs:
                    lines.append(f"    {kind}: seq {_ranges(seqs)}")
            lines.extend(f"    - {p}" for p in s.problems[:50])
        verified = sum(1 for s in self.sessions if s.status == "ok")
        lines.append(f"{verified}/{len(self.sessions)} sessions verified")
        return "\n".join(lines)


def _ranges(values: list[int]) -> str:
    values = sorted(set(values))
    out, start, prev = [], None, None
    for v in values:
        if start is None:
            start = prev = v
        elif prev is not None and v == prev + 1:
            prev = v
        else:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = v
    if start is not None:
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(out)


def read_anchors(audit_dir: Path) -> dict[str, dict[str, Any]]:
    """The latest close anchor of each session (a torn last line is ignored)."""
    anchors: dict[str, dict[str, Any]] = {}
    path = Path(audit_dir) / ANCHORS_FILE
    if not path.exists():
        return anchors
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("kind") == "close" and isinstance(record.get("seq"), int):
            current = anchors.get(record["session_id"])
            if current is None or record["seq"] >= current["seq"]:
                anchors[record["session_id"]] = record
    return anchors


def _prove_in_process(
    query: AuditQuery, subset: dict[str, AttachedSession]
) -> dict[str, tuple[Any, ...] | None]:
    """The fast path in this process: DuckDB's column check on a second thread while this one
    streams the chains. Returns the heads of the sessions it proved."""
    heads: dict[str, tuple[Any, ...] | None] = {}
    if not subset:
        return heads
    fields_cursor, cursor = query.cursor(), query.cursor()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-verify")
    try:
        fields = pool.submit(_fast_fields, fields_cursor, subset)
        for session_id, attached in subset.items():
            try:
                heads[session_id] = _fast_chain(cursor, attached, session_id)
            except _NotProven:
                pass
            except Exception:  # noqa: BLE001, S110 - the precise path reports what is wrong
                pass
        try:
            bad_fields = fields.result()
        except Exception:  # noqa: BLE001 - e.g. one unreadable file: every session gets the precise path
            bad_fields = {a.alias: 1 for a in subset.values()}
        for session_id, attached in subset.items():
            if bad_fields.get(attached.alias, 1):
                heads.pop(session_id, None)
    finally:
        pool.shutdown(wait=True)
        cursor.close()
        fields_cursor.close()
    return heads


@dataclass(frozen=True)
class _WorkerSession:
    """What the fast path needs of an `AttachedSession`, in a worker (file attached as s0)."""

    promoted_stored: bool
    alias: str = "s0"


def _prove_in_worker(path: str, session_id: str, promoted_stored: bool) -> tuple[bool, Any]:
    """The fast path for one closed session file, in a pool process: (True, head) if it is a
    perfect chain whose columns equal the signed content, else (False, why) - the parent then runs
    the precise passes, which classify what is wrong. The file is attached read-only (a shared
    lock, like the parent's, so no writer can open it meanwhile)."""
    import duckdb

    con = duckdb.connect(":memory:", config={"threads": 1})
    try:
        con.execute("ATTACH '" + path.replace("'", "''") + "' AS s0 (READ_ONLY)")
        con.execute("SET enable_external_access = false")
        attached = _WorkerSession(promoted_stored)
        return True, _fast_chain(con, attached, session_id, check_columns=True)
    except _NotProven as exc:
        return False, str(exc)
    except Exception as exc:  # noqa: BLE001 - the precise path in the parent reports what is wrong
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        con.close()


def _prove_in_pool(
    subset: dict[str, AttachedSession], workers: int, timeout_s: float
) -> tuple[dict[str, tuple[Any, ...] | None], dict[str, str]]:
    """The fast path for closed sessions in `workers` worker processes (`python -m
    ironcage_jupyter.audit.verify`: a fresh interpreter, never a fork of this one, which may run
    DuckDB or kernel threads), the session files split between them by size. Returns (heads of the
    sessions proven, {session: error} for those whose worker crashed, answered nonsense or did not
    finish in time: those sessions FAIL, they are never taken as verified)."""
    shares: list[list[tuple[str, str, bool]]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for session_id, attached in sorted(subset.items(), key=lambda item: -_size(item[1].path)):
        least = loads.index(min(loads))
        shares[least].append((session_id, str(attached.path), attached.promoted_stored))
        loads[least] += max(1, _size(attached.path))
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the directory ironcage_jupyter is imported from
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    procs = []
    for share in shares:
        if share:
            proc = subprocess.Popen(  # noqa: S603 - this interpreter, this module, no shell
                [sys.executable, "-P", "-m", __name__],  # -P: never a module from the cwd
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )
            procs.append((proc, share))
    heads: dict[str, tuple[Any, ...] | None] = {}
    failed: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    try:
        for proc, share in procs:
            try:
                out, err = proc.communicate(
                    json.dumps(share).encode(), timeout=max(0.001, deadline - time.monotonic())
                )
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                for session_id, _path, _promoted in share:
                    failed[session_id] = f"verify worker did not finish within {timeout_s:g} s"
                continue
            answers: dict[str, Any] = {}
            for line in out.splitlines():
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    answer = json.loads(line)
                    answers[answer["session_id"]] = answer
            why = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            for session_id, _path, _promoted in share:
                answer = answers.get(session_id)
                if proc.returncode != 0 or answer is None:
                    failed[session_id] = (
                        f"verify worker failed (exit status {proc.returncode}) before answering for "
                        f"this session: {why[0]}"
                    ).rstrip(": ")
                elif answer.get("proven") is True:
                    head = answer.get("head")
                    heads[session_id] = tuple(head) if head is not None else None
    finally:
        for proc, _share in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return heads, failed


def _worker_main() -> int:
    """A pool worker: reads [[session_id, path, promoted_stored], ...] on stdin, writes one JSON
    line per session on stdout."""
    tasks = json.loads(sys.stdin.buffer.read())
    for session_id, path, promoted in tasks:
        proven, value = _prove_in_worker(str(path), str(session_id), bool(promoted))
        answer = {"session_id": session_id, "proven": proven}
        answer["head" if proven else "why"] = list(value) if proven and value is not None else value
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    return 0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# Below this many usable cores the pool is not used by default: a worker costs ~0.4 s of CPU to
# start (interpreter, DuckDB, pyarrow) and ~0.2 s more on its first file, and the in-process path
# already keeps two cores busy (DuckDB's column check beside the Python hashing). Measured on two
# cores (docs/perf/audit.md): the pool 1.3x slower than the in-process path, same minutes.
POOL_MIN_CORES = 3


# glibc mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory_for_scans() -> bool:
    """Let this process's C allocator keep and reuse freed memory (glibc only); for the short-lived
    `audit verify` process, never for a kernel.

    The fast path streams ~600 MB of Arrow batches per million events out of DuckDB. With glibc's
    defaults each batch's buffers are fresh mappings (or the heap top is trimmed back to the OS after
    each batch), so every page is faulted in anew: ~200,000 minor faults and 0.45-0.75 s of system
    time per million events, measured. Buffers of up to 32 MiB from the heap and no trimming below
    1 GiB removes most of that; the cost is that the process keeps its peak memory until it exits.
    Process-wide and permanent (glibc's dynamic thresholds stay off), so only the CLI calls it.
    Returns whether the settings were applied."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))


def _default_workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores if cores >= POOL_MIN_CORES else 1


def verify(
    audit_dir: str | os.PathLike[str],
    *,
    sessions: list[str] | None = None,
    workers: int | None = None,
    timeout_s: float = 3600.0,
) -> VerifyReport:
    """Verify every session's chain. `workers`: processes for the closed sessions' fast path
    (default: `_default_workers()`; 1 runs everything in this process). A worker that crashes or
    does not finish within `timeout_s` makes its session an error (non-zero exit), never verified."""
    audit_dir = Path(audit_dir)
    anchors = read_anchors(audit_dir)
    reports: list[SessionReport] = []
    if workers is None:
        workers = _default_workers()
    from .query import AuditQuery

    with AuditQuery(audit_dir, sessions=sessions, timeout_s=timeout_s) as query:
        for session_id, reason in sorted(query.unreadable.items()):
            reports.append(SessionReport(session_id, error=f"cannot read session file: {reason}"))
        # Fast path: one streaming scan per session proves it is a perfect chain in storage order.
        # A session it cannot prove (anything tampered, or just stored out of order) gets the
        # precise passes below, which find and classify every problem. Each session's chain is
        # independent: closed session files are proven in a process pool (true parallelism: the
        # hashing loop holds the GIL); live ones (snapshot copies) in this process.
        closed = {sid: a for sid, a in query.attached.items() if not a.live}
        failed: dict[str, str] = {}
        if workers > 1 and len(closed) > 1:
            heads, failed = _prove_in_pool(closed, min(workers, len(closed)), timeout_s)
            rest = {sid: a for sid, a in query.attached.items() if sid not in closed}
        else:
            heads, rest = {}, dict(query.attached)
        heads.update(_prove_in_process(query, rest))
        doubtful = {sid: a for sid, a in query.attached.items() if sid not in heads and sid not in failed}
        content_by_alias = _content_pass_all(query, doubtful) if doubtful else {}
        for session_id, attached in sorted(query.attached.items()):
            report = SessionReport(session_id, live=attached.live, anchored=session_id in anchors)
            if session_id in failed:
                report.error = failed[session_id]
                reports.append(report)
                continue
            try:
                if session_id in heads:
                    # Proven: a perfect chain in storage order, so its first row is its only link
                    # row and the scan counted what the statistics query would.
                    proof = heads[session_id]
                    _verify_session(
                        query, attached, report, anchors.get(session_id), [],
                        link_rows=[] if proof is None else [(1, *proof[:3], None, None)],
                        stats=(0, 0, None, None) if proof is None else (proof[3], proof[4], proof[0], proof[5]),
                    )  # fmt: skip
                else:
                    content_rows = (
                        content_by_alias.get(attached.alias, [])
                        if content_by_alias is not None
                        else _content_pass(query, attached, session_id)
                    )
                    _verify_session(query, attached, report, anchors.get(session_id), content_rows)
            except Exception as exc:  # a corrupt file is reported, never crashes the whole verify
                report.error = f"{type(exc).__name__}: {exc}"
            reports.append(report)
        seen = set(query.attached) | set(query.unreadable)
    for session_id, anchor in sorted(anchors.items()):
        if session_id not in seen and (sessions is None or session_id in sessions):
            report = SessionReport(session_id, anchored=True)
            report.problems.append(
                f"session file is missing but the session closed at seq {anchor['seq']}: deleted"
            )
            report.deleted.extend(range(1, min(anchor["seq"], _MAX_LISTED) + 1))
            reports.append(report)
    return VerifyReport(reports)


def _for_format(sql: str, attached: AttachedSession | _WorkerSession | None) -> str:
    """Format-1 files have no stored promoted columns (the views compute them from the canonical
    bytes): their checks compare only the envelope columns."""
    if attached is None or attached.promoted_stored:
        return sql
    return "\n".join(line for line in sql.splitlines() if "TRY_CAST(f[" not in line)


def _content_sql(alias: str, where: str, param: str, attached: AttachedSession | None = None) -> str:
    return (
        _for_format(_CONTENT_SQL, attached)
        .replace("{source}", f"{alias}.events")
        .replace("{where}", where)
        .replace("$session", f"${param}_session")
        .replace("$hashes", f"${param}_hashes")
    )


def _fields_pass(cursor: Any, subset: dict[str, AttachedSession]) -> dict[str, list[tuple[Any, ...]]]:
    branches, params = [], {}
    for session_id, attached in subset.items():
        alias = attached.alias
        branches.append(
            f"SELECT '{alias}' AS alias, * FROM ({_content_sql(alias, _ANOMALIES, alias, attached)})"  # noqa: S608
        )
        params[f"{alias}_session"] = session_id
    grouped: dict[str, list[tuple[Any, ...]]] = {}
    for row in cursor.execute(" UNION ALL ".join(branches) + " ORDER BY alias, seq, hash", params).fetchall():
        grouped.setdefault(row[0], []).append(tuple(row[1:]))
    return grouped


def _hash_pass(cursor: Any, subset: dict[str, AttachedSession]) -> dict[str, set[str]]:
    """Aliases -> hashes whose stored value is not SHA-256 of the stored canonical bytes."""
    sql = " UNION ALL ".join(_HASH_SQL.replace("{alias}", a.alias) for a in subset.values())
    bad: dict[str, set[str]] = {}
    sha256 = hashlib.sha256
    reader = cursor.sql(sql).to_arrow_reader(65536)
    try:
        for batch in reader:
            hashes = batch.column(1).to_pylist()
            canonicals = batch.column(2).to_pylist()
            mismatched = [
                i for i, (data, digest) in enumerate(zip(canonicals, hashes, strict=True))
                if sha256(data).hexdigest() != digest
            ]  # fmt: skip
            for i in mismatched:
                bad.setdefault(batch.column(0)[i].as_py(), set()).add(hashes[i])
    finally:
        reader.close()
    return bad


def _content_pass_all(
    query: AuditQuery, subset: dict[str, AttachedSession]
) -> dict[str, list[tuple[Any, ...]]] | None:
    """Content anomalies of every session, as rows for `_verify_session`; None if a pass fails
    (say, one unreadable file): sessions are then checked one by one, pinning the failure on it."""
    if not subset:
        return {}
    # Sequential on purpose: overlapping the Python hashing with DuckDB's scan measured slower on
    # two cores (three busy threads), not faster.
    cursor = query.cursor()
    try:
        bad = _hash_pass(cursor, subset)
        grouped = _fields_pass(cursor, subset)
    except Exception:
        return None
    finally:
        cursor.close()
    for alias, hashes in bad.items():
        session_id, attached = next((sid, a) for sid, a in subset.items() if a.alias == alias)
        rows = {(r[0], r[1]): r for r in grouped.get(alias, [])}
        for row in _bad_rows(query, attached, session_id, hashes):
            rows[(row[0], row[1])] = row
        grouped[alias] = sorted(rows.values(), key=lambda r: (r[0], r[1]))
    return grouped


def _bad_rows(
    query: AuditQuery, attached: AttachedSession, session_id: str, hashes: set[str]
) -> list[tuple[Any, ...]]:
    sql = _content_sql(attached.alias, _KEYS, "p", attached)
    rows = query.run_trusted(sql, {"p_session": session_id, "p_hashes": sorted(hashes)}).rows
    return [(r[0], r[1], False, *r[3:]) for r in rows]


def _content_pass(query: AuditQuery, attached: AttachedSession, session_id: str) -> list[tuple[Any, ...]]:
    """One session on its own (the fallback): same checks, sha256 in SQL."""
    rows = query.run_trusted(
        _content_sql(attached.alias, _ANOMALIES + " OR sha256(canonical) <> hash", "p", attached)
        + " ORDER BY seq, hash",
        {"p_session": session_id},
    ).rows
    return [
        (
            r[0],
            r[1],
            (hashlib.sha256(r[6].encode()).hexdigest() == r[1]) if r[6] is not None else None,
            *r[3:],
        )
        for r in rows
    ]


def _verify_session(
    query: AuditQuery,
    attached: AttachedSession,
    report: SessionReport,
    anchor: dict[str, Any] | None,
    content_rows: list[tuple[Any, ...]],
    *,
    link_rows: list[tuple[Any, ...]] | None = None,
    stats: tuple[Any, ...] | None = None,
) -> None:
    """Classify a session's problems. `link_rows`: the rows where the (seq, hash) order breaks the
    chain, and always the first one; None computes them with a window over the whole session.
    `stats`: (events, tombstones, first seq, last seq) if the caller counted them already."""
    alias = attached.alias
    con_run = query.run_trusted
    if stats is None:
        stats = con_run(
            f"SELECT count(*), count(*) FILTER (WHERE canonical IS NULL), min(seq), max(seq) FROM {alias}.events"  # noqa: S608
        ).rows[0]
    report.events, report.tombstones, report.first_seq, report.last_seq = stats
    purge = con_run(
        f"SELECT coalesce(sum(tombstoned), 0), coalesce(max(compacted_through_seq), 0) FROM {alias}.purge_log"  # noqa: S608
    ).rows[0]
    tombstoned_total, compacted_through = int(purge[0]), int(purge[1])
    from .events import genesis_hash

    compacted_hash = genesis_hash(report.session_id)
    if compacted_through:
        compacted_hash = con_run(
            f"SELECT compacted_through_hash FROM {alias}.purge_log WHERE compacted_through_seq = ? LIMIT 1",  # noqa: S608
            [compacted_through],
        ).rows[0][0]
    if report.tombstones + compacted_through != tombstoned_total:
        report.problems.append(
            f"{report.tombstones} tombstones + {compacted_through} compacted events do not match the "
            f"{tombstoned_total} events the purge log says were purged"
        )

    if link_rows is None:
        link_rows = con_run(_LINK_SQL.replace("{alias}", alias)).rows

    def seq_of_hash(digest: str) -> int | None:
        found = con_run(f"SELECT min(seq) FROM {alias}.events WHERE hash = ?", [digest]).rows  # noqa: S608
        return found[0][0] if found else None

    broken_content: set[tuple[int, str]] = set()
    for row in content_rows:
        seq, digest, content_ok, fields_ok, tombstone, has_purged_at, canonical = row[:7]
        columns = dict(zip(("prev_hash", *_SIGNED_FIELDS), row[7:], strict=True)) | {"seq": seq}
        if tombstone != has_purged_at:
            report._add("modified", seq, "content removed outside a purge" if tombstone else "purge mark set")
        if content_ok is False:
            broken_content.add((seq, digest))
            report._add("modified", seq, "stored hash is not SHA-256 of the stored canonical bytes")
        elif fields_ok is False:
            moved_from = _signed_seq_only(canonical, columns)
            if moved_from is not None:
                report._add("reordered", seq, f"the signed content belongs at seq {moved_from}")
            else:
                report._add("modified", seq, "a column differs from the signed canonical content")

    for pos, seq, digest, prev_hash, prev_row_hash, prev_row_seq in link_rows:
        if pos == 1:
            expected_seq = compacted_through + 1
            if seq > expected_seq:
                for missing in range(expected_seq, seq):
                    report._add("deleted", missing, "missing at the start of the chain")
            elif seq < expected_seq:
                report._add("inserted", seq, f"precedes the purge checkpoint at seq {compacted_through}")
            if seq == expected_seq and prev_hash != compacted_hash:
                report._add("modified", seq, "does not chain to the session's genesis / purge checkpoint")
            continue
        if seq == prev_row_seq:
            # Two rows claim this seq: the genuine one is the one its successor chains to.
            report._add("inserted", seq, "a second event with this seq")
            continue
        if seq > prev_row_seq + 1:
            for missing in range(prev_row_seq + 1, min(seq, prev_row_seq + 1 + _MAX_LISTED)):
                report._add("deleted", missing, "missing from the chain")
            continue
        if prev_hash != prev_row_hash and (seq, digest) not in broken_content:
            elsewhere = seq_of_hash(prev_hash)
            if elsewhere == prev_row_seq:
                continue  # chains to the genuine one of two rows sharing a seq: reported as inserted
            if prev_row_seq in report.reordered or elsewhere in report.reordered:
                continue  # the break is the consequence of a moved event already reported
            if elsewhere is not None:
                report._add(
                    "reordered", seq, f"chains to the event at seq {elsewhere}, not to seq {prev_row_seq}"
                )
            elif anchor is not None and seq > anchor["seq"]:
                report._add("inserted", seq, f"after the session closed at seq {anchor['seq']}")
            else:
                report._add(
                    "modified", prev_row_seq, f"its hash changed: seq {seq} chained to a different hash"
                )

    if anchor is not None and report.last_seq is not None:
        anchored_seq, anchored_hash = anchor["seq"], anchor["hash"]
        if report.last_seq < anchored_seq:
            for missing in range(report.last_seq + 1, min(anchored_seq, report.last_seq + _MAX_LISTED) + 1):
                report._add("deleted", missing, f"missing: the session closed at seq {anchored_seq}")
        elif report.last_seq > anchored_seq:
            for extra in range(anchored_seq + 1, min(report.last_seq, anchored_seq + _MAX_LISTED) + 1):
                report._add("inserted", extra, f"after the session closed at seq {anchored_seq}")
        head = con_run(f"SELECT hash FROM {alias}.events WHERE seq = ? ORDER BY hash", [anchored_seq]).rows  # noqa: S608
        if head and anchored_hash not in {h for (h,) in head}:
            report._add("modified", anchored_seq, "differs from the hash anchored when the session closed")
    elif anchor is not None and report.last_seq is None and anchor["seq"] > compacted_through:
        report.problems.append(f"all events deleted: the session closed at seq {anchor['seq']}")
        report.deleted.extend(range(compacted_through + 1, min(anchor["seq"], _MAX_LISTED) + 1))


if __name__ == "__main__":
    sys.exit(_worker_main())
