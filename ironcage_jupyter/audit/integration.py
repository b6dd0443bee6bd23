"""How the wrapper kernel records: one `KernelAudit` per kernel session, two pipeline stages, two magics.

    submit stage (first)      blocks every cell if the audit log is unusable; buffers `cell_submitted`
    decision stage (before execute, always runs)
                              records the policy decision (durable) or, without one, commits what is
                              buffered: one fsync, and the cell runs only after it succeeded
    record stage (last, always runs)
                              `execution` (+ `violation` for timeouts / child crashes), journaled by a
                              background thread so the reply does not wait for the disk; DuckDB
                              ingests in the background every 100 cells or when idle for 0.25 s

Any `AuditWriteError` leaves the `KernelAudit` failed: every later cell and tool call is refused with
the reason, until the kernel is restarted (fail closed). Other components record through
`kernel.audit.record(...)` (same signature as `AuditStore.record`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import getpass
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import AuditWriteError

if TYPE_CHECKING:
    from ..pipeline import CellRequest
    from .events import AuditEvent
    from .settings import AuditSettings
    from .store import AuditStore

# Bounded so that a huge cell cannot make the audit log the place a denial-of-service lands.
MAX_CODE_CHARS = 200_000


def _effect(value: Any) -> str:
    effect = str(value).rsplit(".", 1)[-1].lower()
    return effect if effect in ("allow", "deny", "escalate") else "deny"


def _text(value: Any, limit: int = 4000) -> str | None:
    return None if value is None else str(value)[:limit]


def _on_opening_thread() -> bool:
    import threading

    return threading.current_thread().name.startswith("audit-open")


def new_session_id() -> str:
    """Sortable by start time, unique across hosts and processes."""
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class KernelAudit:
    """The audit log of one kernel session, with the fail-closed state the kernel consults.

    The store is opened (DuckDB imported, file created, `session_start` committed) on a background
    thread, so the wrapper answers kernel_info without waiting for it; the first cell waits for it
    (`await ready()`), and if it failed, that cell and every later one is refused.
    """

    #: Cells whose events are ingested into DuckDB together during a burst of cells. A trivial
    #: cell records 3-4 events, so a burst's batch stays below the store's ``ARROW_MIN_ROWS`` and
    #: goes through the Appender: with 100 cells the first batch imported pyarrow and pandas
    #: (~0.3 s holding the GIL), stalling the ten cells around it at 20-60 ms each.
    INGEST_EVERY_CELLS = 50
    #: Seconds without a finished cell after which the buffered events are ingested.
    INGEST_IDLE_S = 0.25

    def __init__(
        self,
        audit_dir: str,
        *,
        session_id: str | None = None,
        settings: AuditSettings | None = None,
        redact: Callable[[str], str] | None = None,
        session_start: dict[str, Any] | None = None,
    ) -> None:
        self.audit_dir = audit_dir
        self.session_id = session_id or new_session_id()
        self._settings = settings
        #: Replaces secrets in recorded code; the credentials component plugs its redactor in here.
        self.redact: Callable[[str], str] = redact or (lambda code: code)
        self.store: AuditStore | None = None
        self.error: str | None = None
        self.cells = 0
        self.started = time.monotonic()
        self._idle_ingest: asyncio.TimerHandle | None = None
        self._cells_buffered = 0
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-open")
        self._opening = executor.submit(self._open, session_start)
        executor.shutdown(wait=False)

    def _open(self, session_start: dict[str, Any] | None) -> None:
        try:
            from .store import AuditStore

            self.store = AuditStore(self.audit_dir, self.session_id, batch_size=self.settings.batch_size)
            if session_start is not None:
                self.session_start(**session_start)
        except Exception as exc:  # whatever it is, the kernel runs on and refuses every cell with it
            self.error = self.error or f"cannot open the audit log: {exc}"

    @property
    def settings(self) -> AuditSettings:
        if self._settings is None:
            from .settings import AuditSettings

            self._settings = AuditSettings()
        return self._settings

    def wait_opened(self, timeout: float | None = None) -> None:
        self._opening.result(timeout)

    async def ready(self) -> None:
        """Wait (without blocking the event loop) until the store is open or has failed to open."""
        if self._opening.done():  # the per-cell case: no trip through the loop's self-pipe
            return
        await asyncio.wrap_future(self._opening)

    # -- state -------------------------------------------------------------------------------------
    @property
    def usable(self) -> bool:
        if not self._opening.done():
            return False
        return self.error is None and self.store is not None and self.store.failed is None

    def failure_reason(self) -> str:
        if self.error:
            return self.error
        if self.store is not None and self.store.failed is not None:
            return f"audit write failed: {self.store.failed}"
        if not self._opening.done():
            return "the audit log is still opening"
        return "audit log unavailable"

    # `AuditQuery(live_store=...)` protocol, so readers can pass the KernelAudit before it has opened.
    @property
    def failed(self) -> BaseException | str | None:
        if not self._opening.done():
            return None
        return None if self.usable else self.failure_reason()

    def flush(self, *, wait: bool = True) -> int:
        self.wait_opened()
        if self.store is None:
            raise AuditWriteError(self.failure_reason())
        return self.store.flush(wait=wait)

    def record(self, event_type: str, **kwargs: Any) -> AuditEvent:
        """`AuditStore.record`, remembering a failure so that nothing runs after it."""
        if not self._opening.done() and not _on_opening_thread():
            self.wait_opened()
        if self.store is None:
            raise AuditWriteError(self.failure_reason())
        try:
            return self.store.record(event_type, **kwargs)
        except Exception as exc:
            self.error = self.error or f"audit write failed: {exc}"
            raise AuditWriteError(self.error) from exc

    # -- session -----------------------------------------------------------------------------------
    def session_start(
        self, *, policy_name: str | None, workspace: str, kernel_version: str, **extra: Any
    ) -> None:
        detail: dict[str, Any] = {
            "kernel_version": kernel_version,
            "policy_name": policy_name,
            "workspace": workspace,
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
        }
        try:
            detail["user_name"] = getpass.getuser()
        except Exception:  # no passwd entry: the event is still worth having
            detail["user_name"] = None
        detail.update(extra)
        self.record("session_start", detail={k: v for k, v in detail.items() if v is not None})

    def close(self, *, status: str = "normal", reason: str | None = None) -> None:
        if self._idle_ingest is not None:
            self._idle_ingest.cancel()  # closing the store ingests everything
        self.wait_opened()
        if self.store is None:
            return
        try:
            if self.usable:
                self.record(
                    "session_end",
                    detail={
                        "status": status,
                        "reason": reason,
                        "cells_run": self.cells,
                        "duration_ms": (time.monotonic() - self.started) * 1e3,
                    },
                )
        finally:
            self.store.close()

    def status(self) -> dict[str, Any]:
        if not self._opening.done():
            state = "opening"
        else:
            state = "ok" if self.usable else f"FAILED: {self.failure_reason()}"
        return {
            "dir": self.audit_dir,
            "session_id": self.session_id,
            "state": state,
            "events": self.store.last_seq if self.store is not None else 0,
        }

    # -- other components ----------------------------------------------------------------------------
    def credentials_callback(self, event_type: str, detail: dict[str, Any]) -> None:
        """The credentials package's audit callback ``(event_type, detail)``, mapped onto this schema.

        Raises `AuditWriteError` when the log cannot be written, so the broker hands nothing out
        unrecorded (fail closed)."""
        name = str(detail.get("name") or "?")
        target = detail.get("host") or detail.get("tool")
        if target is None and detail.get("hosts"):
            target = ",".join(str(h) for h in detail["hosts"])
        common = {"cell_id": detail.get("cell_id")}
        if event_type in ("credential.request", "credential.grant", "credential.refuse"):
            granted = {"credential.request": None, "credential.grant": True, "credential.refuse": False}[
                event_type
            ]
            self.record(
                "credential_access",
                decision={True: "allow", False: "deny", None: None}[granted],
                reason=detail.get("reason"),
                detail={
                    "credential_name": name,
                    "scope": detail.get("scope"),
                    "granted": granted,
                    "target": target,
                    "ttl_s": detail.get("ttl_s"),
                    **common,
                },
            )
        elif event_type == "credential.source_error":
            self.record(
                "credential_access",
                reason=detail.get("reason"),
                detail={
                    "credential_name": name,
                    "scope": f"source:{detail.get('source')}",
                    "granted": False,
                    **common,
                },
            )
        elif event_type == "credential.taint":
            for tainted in detail.get("names") or []:
                self.record(
                    "credential_access",
                    reason="value injected into the sandboxed kernel for this cell",
                    detail={
                        "credential_name": str(tainted),
                        "scope": "injected",
                        "granted": True,
                        "used_by": "sandbox",
                        **common,
                    },
                )
        elif event_type == "output.redacted":
            for item in detail.get("redactions") or []:
                self.record(
                    "output_redaction",
                    detail={
                        "detector": str(item.get("detector")),
                        "matched_name": item.get("name"),
                        "count": int(item.get("count") or 0),
                        "action": "redacted",
                        "msg_type": detail.get("msg_type"),
                        **common,
                    },
                )
        elif event_type in ("output.withheld", "output.flagged"):
            self.record(
                "output_redaction",
                reason=detail.get("notice"),
                detail={
                    "detector": "output-policy",
                    "count": 1,
                    "action": event_type.split(".")[1],
                    "msg_type": detail.get("msg_type"),
                    **common,
                },
            )
        elif event_type == "credential.injection_end":
            # The cell that had secrets injected is over: they are unset in the child (and with
            # restart_after_injection, the child is restarted before the next cell).
            for ended in detail.get("names") or []:
                self.record(
                    "credential_access",
                    reason="removed from the sandboxed kernel's environment after the cell"
                    + ("; the kernel restarts before the next cell" if detail.get("restart_required") else ""),
                    detail={"credential_name": str(ended), "scope": "injected", "used_by": "sandbox", **common},
                )
        elif event_type == "credential.taint_cleared":
            self.record(
                "credential_access",
                reason="the child kernel restarted: values injected into it are gone with its memory",
                detail={"credential_name": "*", "scope": "injected", "used_by": "sandbox"},
            )
        elif event_type == "credential.settings_changed":
            # A policy reload's grants taking effect (the policy_change itself is recorded by the
            # policy session): not a violation.
            grants = [str(g) for g in detail.get("grants") or []]
            self.record(
                "policy_change",
                reason=_text("credential grants in force: " + (", ".join(grants) or "none")),
                detail={"source": "credential broker"},
            )
        else:  # e.g. credential.unmatchable: kept, as a violation worth a look
            self.record(
                "violation",
                reason=detail.get("reason"),
                detail={"kind": "other", "message": f"{event_type}: {name}", **common},
            )

    def audit_query(
        self,
        *,
        interface: str,
        text: str,
        started: float,
        output: Any = None,
        error: BaseException | None = None,
        output_variable: str | None = None,
        cell_id: str | None = None,
    ) -> None:
        """Record a read of the audit log (durable) before its result is shown; raises
        `AuditWriteError` if it cannot be recorded (the result is then not shown)."""
        record_query(
            self.record,
            interface=interface,
            text=text,
            redact=self.redact,
            started=started,
            output=output,
            error=error,
            output_variable=output_variable,
            cell_id=cell_id,
        )

    def drain_policy_events(self, kernel: Any) -> None:
        """Record what the kernel's policy session queued (policy loads/changes) since the last call."""
        session = getattr(kernel, "policy_session", None)
        drain = getattr(session, "drain_events", None)
        if callable(drain):
            self.policy_events(list(drain()))

    # -- per cell ----------------------------------------------------------------------------------
    def cell_submitted(self, cell: CellRequest) -> None:
        code = self.redact(cell.code)
        self.record(
            "cell_submitted",
            detail={
                "cell_id": cell.cell_id,
                "execution_count": cell.execution_count,
                "code_sha256": cell.code_sha256,
                "code_redacted": code[:MAX_CODE_CHARS],
                "code_length": len(cell.code),
                "origin": cell.origin,
            },
        )

    def findings(self, cell: CellRequest) -> None:
        """The input firewall's findings for the cell (batched; committed with the decision)."""
        found = list(getattr(cell.screen, "findings", None) or [])
        if not found:
            return
        self.record(
            "firewall_findings",
            detail={
                "cell_id": cell.cell_id,
                "target": "cell",
                "finding_count": len(found),
                "findings": [
                    {
                        "finding_id": str(getattr(f, "id", "?")),
                        "category": _text(getattr(f, "category", None)),
                        "severity": _text(getattr(f, "severity", None)),
                        "line": getattr(f, "line", None)
                        if isinstance(getattr(f, "line", None), int)
                        else None,
                        "message": _text(getattr(f, "message", None)),
                    }
                    for f in found[:200]
                ],
            },
        )

    def escalation(self, record: dict[str, Any], *, cell_id: str | None = None) -> None:
        """An escalation's question and answer (the policy package's EscalationRecord.to_dict())."""
        outcome = str(record.get("outcome") or "")
        self.record(
            "escalation",
            decision="allow" if outcome.startswith("allow") else "deny",
            reason=outcome or None,
            detail={
                "state": "timeout" if outcome == "deny-timeout" else "answered",
                "escalation_id": str(uuid.uuid4()),
                "question": _text(record.get("question")),
                "answer": "approve" if outcome.startswith("allow") else "deny",
                "approval_scope": "session" if outcome == "allow-session" else "once",
                "cell_id": cell_id,
            },
        )

    def policy_events(self, events: list[dict[str, Any]]) -> None:
        """Policy changes and failed loads drained from the policy session (`drain_events()`)."""
        for event in events:
            if event.get("escalation"):
                self.escalation(event["escalation"])
            failed = event.get("event") == "policy_load_failed"
            self.record(
                "policy_change",
                decision="deny" if failed else _effect(event.get("decision", "deny")),
                reason=_text(event.get("error") if failed else event.get("reason")),
                detail={
                    "old_policy": _text(event.get("from")),
                    "new_policy": None if failed else _text(event.get("to")),
                    "source": _text(event.get("target")),
                },
            )

    def decision(self, cell: CellRequest) -> None:
        """Commit the decision (or, without a policy engine, the submission) before the cell runs."""
        self.findings(cell)
        escalation = cell.notes.get("escalation") if isinstance(cell.notes, dict) else None
        if isinstance(escalation, dict):
            self.escalation(escalation, cell_id=cell.cell_id)
        decision = cell.decision
        if decision is None:
            if cell.block is not None:
                self.record(
                    "policy_decision",
                    decision="deny",
                    rule=cell.block.rule,
                    reason=cell.block.reason or cell.block.evalue,
                    detail={"subject": "cell", "cell_id": cell.cell_id},
                )
            elif self.store is not None:
                self.store.commit()  # the submission is durable before the cell runs
            return
        effect = _effect(getattr(decision, "effect", "deny"))
        rules = [str(r) for r in (getattr(decision, "rules", None) or [])]
        enforced = getattr(decision, "enforced", None)
        would_have = getattr(decision, "would_have", None)
        self.record(
            "policy_decision",
            decision=effect,
            rule=rules[0] if rules else None,
            reason=getattr(decision, "reason", None),
            detail={
                "subject": "cell",
                "cell_id": cell.cell_id,
                "rules": rules,
                "enforced": enforced if isinstance(enforced, bool) else None,
                "would_have": _effect(would_have) if would_have is not None else None,
                "invariant": getattr(decision, "invariant", None) or None,
            },
        )

    def cell_finished(self, cell: CellRequest) -> None:
        self.cells += 1
        reply = cell.reply or {}
        block = cell.block
        if block is not None:
            status = {"CellTimeout": "timeout", "KeyboardInterrupt": "interrupted"}.get(
                block.ename, "blocked"
            )
            if block.ename == "KernelStateLost":
                status = "error"
        else:
            status = {"ok": "ok", "error": "error", "aborted": "aborted"}.get(
                str(reply.get("status")), "error"
            )
        error_type = (
            reply.get("ename") if status == "error" and block is None else (block.ename if block else None)
        )
        self.record(
            "execution",
            detail={
                "cell_id": cell.cell_id,
                "execution_count": cell.execution_count,
                "status": status,
                "duration_ms": (time.monotonic() - cell.started) * 1e3,
                "output_bytes": cell.output_bytes or None,
                "error_type": error_type,
            },
        )
        if block is not None and block.ename in ("CellTimeout", "KernelStateLost"):
            self.record(
                "violation",
                detail={
                    "kind": "limit_hit" if block.ename == "CellTimeout" else "child_crash",
                    "limit": "cell_timeout_s" if block.ename == "CellTimeout" else None,
                    "message": block.evalue,
                    "cell_id": cell.cell_id,
                },
            )
        self._ingest_later()

    def _ingest_later(self) -> None:
        """Append the cell's closing events to the journal now, and move the buffered events into
        DuckDB once enough have gathered or the kernel goes quiet.

        This runs after the cell's reply and idle were sent (an after-reply stage). The append is a
        plain write without fdatasync (about 10 µs on the event loop; a background thread for it
        cost more in hand-off and GIL contention than the write): it survives the wrapper being
        killed, and the next decision's fdatasync, or the DuckDB ingestion, makes it durable on
        disk. Decisions and violations are synced before their action, as always.

        Ingesting after every cell cost more CPU than the whole plain kernel spends on a trivial
        cell (~2.8 ms of a background thread per cell, competing with the relay for the cores).
        Visibility does not need it: readers in other processes replay the journal, and queries
        through this kernel flush first. A burst of cells is ingested every `INGEST_EVERY_CELLS`
        cells, the rest `INGEST_IDLE_S` after the last cell (a timer on the event loop, re-armed per
        cell; no polling)."""
        store = self.store
        if store is None:
            return
        store.commit(sync=False)  # raises AuditWriteError: the next cell is refused with the reason
        self._cells_buffered += 1
        if self._cells_buffered >= self.INGEST_EVERY_CELLS:
            self._cells_buffered = 0
            store.flush(wait=False)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on an event loop (tests, scripts): ingest now, as before
            store.flush(wait=False)
            return
        if self._idle_ingest is not None:
            self._idle_ingest.cancel()
        self._idle_ingest = loop.call_later(self.INGEST_IDLE_S, self._ingest_idle)

    def _ingest_idle(self) -> None:
        self._idle_ingest = None
        self._cells_buffered = 0
        store = self.store
        if store is not None and store.failed is None:
            try:
                store.flush(wait=False)
            except AuditWriteError:
                pass  # the store is failed: the next cell is refused with the reason


def record_query(
    record: Callable[..., Any],
    *,
    interface: str,
    text: str,
    redact: Callable[[str], str] = lambda text: text,
    started: float,
    output: Any = None,
    error: BaseException | None = None,
    output_variable: str | None = None,
    cell_id: str | None = None,
) -> None:
    """One `audit_query` event: the text, how many rows, how long; a refused query as refused.
    `output` is a `MagicOutput` or a `QueryResult`; `started` a `time.monotonic()` reading."""
    import hashlib

    from .query import ReadOnlyViolation

    refused = isinstance(error, ReadOnlyViolation)
    rows = getattr(output, "fetched", None)
    if rows is None and output is not None:
        rows = len(getattr(output, "rows", []))
    result = getattr(output, "result", output)
    record(
        "audit_query",
        decision="deny" if refused else None,
        rule="invariant.audit-read-only" if refused else None,
        reason=_text(error) if error is not None else None,
        detail={
            "interface": interface,
            "sql_redacted": redact(text[:MAX_CODE_CHARS]),
            "sql_sha256": hashlib.sha256(text.encode("utf-8", "replace")).hexdigest(),
            "status": "refused" if refused else ("error" if error is not None else "ok"),
            "row_count": rows if error is None else None,
            "truncated": getattr(output, "truncated", None) if error is None else None,
            "duration_ms": (time.monotonic() - started) * 1e3,
            "sessions": getattr(result, "sessions", None) if error is None else None,
            "output_variable": output_variable,
            "error": _text(error, 1000) if error is not None and not refused else None,
            "cell_id": cell_id,
        },
    )


def _cell_id(kernel: Any) -> str | None:
    """The front end's cell id of the request being handled, if it sent one."""
    try:
        parent = kernel.get_parent("shell") if hasattr(kernel, "get_parent") else {}
        cell_id = ((parent or {}).get("metadata") or {}).get("cellId")
    except Exception:  # no parent (tests calling the handler directly)
        return None
    return str(cell_id) if cell_id else None


def _out_name(argstring: str) -> str | None:
    """`-o NAME` / `--out NAME` of the magic line, for the record (None if absent or unparsable)."""
    import shlex

    try:
        words = shlex.split(argstring)
    except ValueError:
        return None
    for i, word in enumerate(words[:-1]):
        if word in ("-o", "--out"):
            return words[i + 1][:200]
    return None


class _AuditStage:
    def __init__(self, audit: KernelAudit) -> None:
        self.audit = audit


class AuditSubmitStage(_AuditStage):
    """First stage: no cell runs while the audit log is unusable."""

    name = "audit-submit"
    always = False

    def __init__(self, audit: KernelAudit, kernel: Any = None) -> None:
        super().__init__(audit)
        self.kernel = kernel

    async def run(self, cell: CellRequest) -> None:
        from ..pipeline import Block

        await self.audit.ready()
        if not self.audit.usable:
            cell.block = Block(
                ename="AuditUnavailable",
                evalue="the audit log cannot be written, so no cell runs: " + self.audit.failure_reason(),
                rule="invariant.audit-fail-closed",
                reason="every decision must be recorded before the action it allows",
                details=["Fix the audit directory (disk space, permissions) and restart the kernel."],
            )
            return
        self.audit.drain_policy_events(self.kernel)
        self.audit.cell_submitted(cell)


class AuditDecisionStage(_AuditStage):
    """Right before execute, and also after a refusal: the decision is durable before anything runs."""

    name = "audit-decision"
    always = True

    async def run(self, cell: CellRequest) -> None:
        from ..pipeline import Block

        if not self.audit.usable:
            return  # the submit stage (or the failure below) already blocked the cell
        try:
            self.audit.decision(cell)
        except AuditWriteError as exc:
            cell.block = cell.block or Block(
                ename="AuditUnavailable",
                evalue=f"the decision could not be recorded, so the cell was not run: {exc}",
                rule="invariant.audit-fail-closed",
                reason="audit write failed",
            )


class AuditRecordStage(_AuditStage):
    """Last stage, run after the reply is sent: how the cell ended. Nothing in it changes the
    cell's outcome, so the frontend does not wait for it; a failure refuses the next cell."""

    name = "audit-record"
    always = True
    after_reply = True

    async def run(self, cell: CellRequest) -> None:
        if not self.audit.usable:
            return
        try:
            self.audit.cell_finished(cell)
        except AuditWriteError:
            pass  # the cell already ran; the failure blocks the next one (see AuditSubmitStage)


# -- %%ironcage sql / %ironcage audit ------------------------------------------------------------------
def register_magics() -> None:
    """Add the `sql` and `audit` subcommands to the wrapper's %ironcage magic."""
    from ..magics import MagicResult, subcommand

    def _kernel_audit(kernel: Any) -> KernelAudit | None:
        return getattr(kernel, "audit", None)

    async def _recorded_read(
        audit: KernelAudit, record: dict[str, Any], run: Any, *args: Any
    ) -> tuple[Any, MagicResult | None]:
        """Run one read of the log (in a thread) and record it before its result is shown: no record,
        no result (fail closed). Returns (output, None) or (None, the refusal to show)."""
        from .query import AuditQueryError

        if not audit.usable:  # every read of the log is recorded in it: no record, no read
            return None, MagicResult.fail(
                "the audit log cannot be written, so it is not queried: " + audit.failure_reason(),
                "AuditUnavailable",
            )
        try:
            output = await asyncio.to_thread(
                run, *args, audit_dir=audit.audit_dir, store=audit.store, settings=audit.settings
            )
        except AuditQueryError as exc:
            try:
                audit.audit_query(**record, error=exc)
            except AuditWriteError as write_error:
                return None, MagicResult.fail(f"the query could not be recorded: {write_error}", "AuditUnavailable")
            return None, MagicResult.fail(str(exc), "AuditQueryError")
        try:
            audit.audit_query(**record, output=output)
        except AuditWriteError as exc:
            return None, MagicResult.fail(
                f"the query could not be recorded, so its result is not shown: {exc}", "AuditUnavailable"
            )
        return output, None

    @subcommand("sql", "%%ironcage sql [-o NAME] [--limit N]: read-only SQL over the audit log")
    async def _sql(kernel: Any, argstring: str, body: str | None) -> MagicResult:
        audit = _kernel_audit(kernel)
        if audit is None:
            return MagicResult.fail("the audit log is not configured in this kernel", "AuditQueryError")
        from .magic import run_sql_magic

        await audit.ready()
        if body is None:
            return MagicResult.fail(
                "use the cell magic: %%ironcage sql [-o NAME] [--limit N], with the SQL below it",
                "UsageError",
            )
        record: dict[str, Any] = {"interface": "sql_magic", "text": body, "started": time.monotonic(),
                  "output_variable": _out_name(argstring), "cell_id": _cell_id(kernel)}  # fmt: skip
        output, refused = await _recorded_read(audit, record, run_sql_magic, argstring, body)
        if refused is not None:
            return refused
        if output.child_code is not None:
            problem = await _transfer_to_child(kernel, audit, output.child_code, len(output.result.rows))
            if problem:
                return MagicResult.fail(problem, "AuditQueryError")
        return MagicResult(data=output.data)

    @subcommand("audit", "%ironcage audit [--last N] [--type T] [--denied] [--session ID]: recent events")
    async def _audit(kernel: Any, argstring: str, body: str | None) -> MagicResult:
        audit = _kernel_audit(kernel)
        if audit is None:
            return MagicResult.fail("the audit log is not configured in this kernel", "AuditQueryError")
        from .magic import run_audit_magic

        await audit.ready()
        record: dict[str, Any] = {"interface": "audit_magic", "text": f"%ironcage audit {argstring}".strip(),
                  "started": time.monotonic(), "cell_id": _cell_id(kernel)}  # fmt: skip
        output, refused = await _recorded_read(audit, record, run_audit_magic, argstring)
        if refused is not None:
            return refused
        return MagicResult(data=output.data)


async def _transfer_to_child(kernel: Any, audit: KernelAudit, code: str, rows: int) -> str | None:
    """Run the DataFrame-building code in the child; returns a problem description or None."""
    from ..pipeline import CellRequest

    if not audit.usable:
        return "the audit log is unusable, so nothing is sent to the kernel: " + audit.failure_reason()
    cell = CellRequest(
        code=code,
        silent=True,
        store_history=False,
        user_expressions={},
        allow_stdin=False,
        cell_id=None,
        metadata={},
        execution_count=kernel.execution_count,
    )
    try:
        audit.record(
            "cell_submitted",
            detail={
                "code_sha256": cell.code_sha256,
                "code_redacted": f"<%%ironcage sql -o: DataFrame of {rows} rows as a JSON literal>",
                "code_length": len(code),
                "origin": "ironcage:sql-transfer",
            },
            durable=True,
        )
    except AuditWriteError as exc:
        return f"not sent to the kernel: {exc}"
    await kernel.execute_in_child(cell)
    if cell.block is not None:
        return f"the result could not be handed to the kernel: {cell.block.evalue}"
    if (cell.reply or {}).get("status") != "ok":
        reply = cell.reply or {}
        return f"building the DataFrame failed in the kernel: {reply.get('ename')}: {reply.get('evalue')}"
    return None
