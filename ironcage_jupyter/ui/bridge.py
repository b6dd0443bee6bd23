"""Kernel side of the ``ironcage.ui`` comm protocol (docs/ui-protocol.md).

The wrapper kernel owns one :class:`UiBridge`. It routes the frontend's comm traffic for the
``ironcage.ui`` target to :meth:`UiBridge.handle`, tells it about each finished cell
(:meth:`UiBridge.cell_finished`) and asks it for human approvals (:meth:`UiBridge.escalate`).
Nothing here decides anything: the bridge only carries decisions the policy engine made and
answers humans gave. Malformed frontend messages get an ``error`` message back, never an exception.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

COMM_TARGET = "ironcage.ui"
PROTOCOL_VERSION = 1

Answer = Literal["once", "session", "deny"]
ANSWERS: tuple[str, ...] = ("once", "session", "deny")
OUTCOMES = {"once": "approved_once", "session": "approved_session", "deny": "denied"}
DECISION_RANK = {"allow": 0, "escalate": 1, "deny": 2}

AUDIT_LIMIT_MAX = 1000
AUDIT_LIMIT_DEFAULT = 200
SUMMARY_MAX = 200

#: send(comm_id, data, parent) -> None; the kernel's ``send_comm_msg``.
SendFn = Callable[[str, dict[str, Any], "dict[str, Any] | None"], None]

log = logging.getLogger(__name__)


@dataclass
class SessionCounts:
    denied: int = 0
    escalated: int = 0
    redacted: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"denied": self.denied, "escalated": self.escalated, "redacted": self.redacted}


@dataclass
class IsolationStatus:
    """What the status bar shows about the sandbox; ``layers`` maps layer -> (state, reason)."""

    layers: dict[str, tuple[str, str]] = field(default_factory=dict)
    sandbox_enabled: bool = True

    @property
    def overall(self) -> str:
        """``all`` / ``degraded`` / ``unsafe`` exactly as docs/ui-protocol.md defines them."""
        states = [state for state, _ in self.layers.values()]
        if not self.sandbox_enabled or not states or "missing" in states:
            return "unsafe"
        if all(state == "active" for state in states):
            return "all"
        return "degraded"

    def layers_payload(self) -> dict[str, dict[str, str]]:
        return {name: {"state": state, "reason": reason} for name, (state, reason) in self.layers.items()}


@dataclass
class AuditQuery:
    """A validated ``audit_request`` from the audit panel."""

    limit: int = AUDIT_LIMIT_DEFAULT
    event_type: str | None = None
    decision: str | None = None
    scope: Literal["session", "all"] = "session"


#: audit_query(query) -> (events newest first, total matching). Events are dicts with at least
#: seq, ts, event_type, decision (see docs/ui-protocol.md, audit_events).
AuditQueryFn = Callable[[AuditQuery], "tuple[list[dict[str, Any]], int]"]


@dataclass
class EscalationRequest:
    """What the policy escalated; ``canonical`` is the text a session approval covers."""

    kind: str
    summary: str
    canonical: str
    rules: list[str] = field(default_factory=list)
    reason: str = ""
    cell_id: str | None = None
    msg_id: str | None = None


@dataclass
class EscalationResult:
    answer: Answer
    #: ui | stdin | timeout | interrupt | no_approver | session
    by: str

    @property
    def approved(self) -> bool:
        return self.answer in ("once", "session")

    @property
    def outcome(self) -> str:
        """The ``cell_event.outcome`` value for this result."""
        if self.by == "timeout":
            return "timeout"
        return OUTCOMES[self.answer]


class BadRequest(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _clip(text: Any, limit: int = SUMMARY_MAX) -> str | None:
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def parse_audit_request(data: Mapping[str, Any]) -> AuditQuery:
    limit = data.get("limit", AUDIT_LIMIT_DEFAULT)
    if limit is None:
        limit = AUDIT_LIMIT_DEFAULT
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= AUDIT_LIMIT_MAX:
        raise BadRequest("bad_request", f"limit must be an integer in 1..{AUDIT_LIMIT_MAX}")
    filters: dict[str, str | None] = {}
    for key in ("event_type", "decision"):
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > 100):
            raise BadRequest("bad_request", f"{key} must be a string or null")
        filters[key] = value or None
    scope = data.get("scope") or "session"
    if scope not in ("session", "all"):
        raise BadRequest("bad_request", 'scope must be "session" or "all"')
    return AuditQuery(
        limit=limit,
        event_type=filters["event_type"],
        decision=filters["decision"],
        scope="all" if scope == "all" else "session",
    )


def normalise_audit_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """Map one audit row to the protocol's shape (and keep it small)."""
    ts: Any = event.get("ts")
    if ts is not None and hasattr(ts, "isoformat"):
        ts = ts.isoformat()
    out: dict[str, Any] = {
        "seq": int(event.get("seq", 0)),
        "ts": str(ts or ""),
        "event_type": str(event.get("event_type", "")),
        "decision": event.get("decision"),
    }
    for key in ("session_id", "rule", "reason", "cell_id"):
        value = event.get(key)
        out[key] = None if value is None else str(value)
    out["summary"] = _clip(event.get("summary"))
    out["reason"] = _clip(out["reason"], 500)
    return out


class UiBridge:
    """State and message handling of the ``ironcage.ui`` comms of one kernel session.

    ``send`` is the kernel's ``send_comm_msg(comm_id, data, parent)``. ``isolation`` and ``policy``
    are read each time a status is built, so the kernel can update them (e.g. after the sandbox
    selftest). ``audit_query`` answers the audit panel; without it the panel gets
    ``audit_unavailable``.
    """

    def __init__(
        self,
        send: SendFn,
        *,
        session_id: str,
        policy: str = "unknown",
        isolation: IsolationStatus | None = None,
        audit_query: AuditQueryFn | None = None,
    ) -> None:
        self._send = send
        self.session_id = session_id
        self.policy = policy
        self.isolation = isolation or IsolationStatus()
        self.audit_query = audit_query
        self.counts = SessionCounts()
        self.comm_ids: list[str] = []
        self._pending: dict[str, tuple[asyncio.Future[str], EscalationRequest, dict[str, Any]]] = {}
        #: the last status broadcast; a cell only triggers a new one when something in it changed
        self._published_status: dict[str, Any] = {}
        #: escalation id -> who settled it when it was not a frontend (interrupt, shutdown)
        self._settled_by: dict[str, str] = {}

    # -- frontend -> kernel ------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        """True when at least one frontend has the UI comm open (it can answer escalations)."""
        return bool(self.comm_ids)

    def owns(self, comm_id: str | None) -> bool:
        return comm_id in self.comm_ids

    async def handle(self, event: str, content: Mapping[str, Any], parent: dict[str, Any] | None = None) -> None:
        """Route one ``comm_open`` / ``comm_msg`` / ``comm_close`` (``event`` = open/msg/close)."""
        comm_id = content.get("comm_id")
        if not isinstance(comm_id, str) or not comm_id:
            return
        if event == "close":
            if comm_id in self.comm_ids:
                self.comm_ids.remove(comm_id)
            return
        if event == "open":
            if content.get("target_name", COMM_TARGET) != COMM_TARGET:
                return
            if comm_id not in self.comm_ids:
                self.comm_ids.append(comm_id)
        elif comm_id not in self.comm_ids:
            return
        data = content.get("data")
        try:
            await self._dispatch(comm_id, data if isinstance(data, Mapping) else {}, parent)
        except BadRequest as exc:
            self._error(comm_id, exc.code, str(exc), data, parent)
        except Exception as exc:  # never let a UI message hurt the kernel
            log.exception("ironcage.ui message failed")
            self._error(comm_id, "bad_request", f"internal error: {exc!r}", data, parent)

    async def _dispatch(self, comm_id: str, data: Mapping[str, Any], parent: dict[str, Any] | None) -> None:
        kind = data.get("type")
        if kind in ("hello", "status_request"):
            self._send(comm_id, self.status_message(), parent)
            if kind == "hello":
                # A reloaded page must still see escalations that wait for an answer.
                for esc_id, (_future, request, extra) in self._pending.items():
                    self._send(comm_id, self._escalation_message(esc_id, request, extra), parent)
        elif kind == "escalation_answer":
            self._answer(data)
        elif kind == "audit_request":
            self._send(comm_id, await self._audit(data), parent)
        else:
            raise BadRequest("unknown_type", f"unknown message type {kind!r}")

    def _answer(self, data: Mapping[str, Any]) -> None:
        esc_id = data.get("id")
        answer = data.get("answer")
        entry = self._pending.get(esc_id) if isinstance(esc_id, str) else None
        if entry is None or entry[0].done():
            raise BadRequest("unknown_escalation", f"no pending escalation {esc_id!r}")
        future = entry[0]
        if answer not in ANSWERS:
            future.set_result("deny")  # fail closed
            raise BadRequest("bad_answer", f"answer must be one of {', '.join(ANSWERS)}; denied")
        future.set_result(answer)

    async def _audit(self, data: Mapping[str, Any]) -> dict[str, Any]:
        request_id = data.get("request_id")
        query = parse_audit_request(data)
        if self.audit_query is None:
            raise BadRequest("audit_unavailable", "this kernel has no audit store")
        try:
            # DuckDB work off the event loop: cells and escalation answers keep flowing meanwhile.
            events, total = await asyncio.to_thread(self.audit_query, query)
        except Exception as exc:
            raise BadRequest("audit_unavailable", f"audit query failed: {exc}") from exc
        return {
            "type": "audit_events",
            "request_id": request_id if isinstance(request_id, str) else None,
            "events": [normalise_audit_event(event) for event in events][: query.limit],
            "total": int(total),
        }

    def _error(self, comm_id: str, code: str, message: str, data: Any, parent: dict[str, Any] | None) -> None:
        request_id = data.get("request_id") if isinstance(data, Mapping) else None
        self._send(
            comm_id,
            {
                "type": "error",
                "request_id": request_id if isinstance(request_id, str) else None,
                "code": code,
                "message": message,
            },
            parent,
        )

    # -- kernel -> frontend ------------------------------------------------------------------------
    def broadcast(self, data: dict[str, Any], parent: dict[str, Any] | None = None) -> None:
        for comm_id in list(self.comm_ids):
            try:
                self._send(comm_id, data, parent)
            except Exception:
                log.warning("could not send to ironcage.ui comm %s", comm_id, exc_info=True)

    def status_message(self) -> dict[str, Any]:
        return {
            "type": "status",
            "protocol": PROTOCOL_VERSION,
            "session_id": self.session_id,
            "policy": self.policy,
            "isolation": self.isolation.overall,
            "layers": self.isolation.layers_payload(),
            "counts": self.counts.as_dict(),
        }

    def publish_status(self, parent: dict[str, Any] | None = None) -> None:
        message = self.status_message()
        self._published_status = message
        self.broadcast(message, parent)

    def cell_finished(
        self,
        *,
        cell_id: str | None,
        msg_id: str | None,
        decision: str,
        outcome: str | None = None,
        redacted: int = 0,
        rules: Iterable[str] = (),
        reason: str | None = None,
        findings: Iterable[Mapping[str, Any]] = (),
        parent: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Count the cell's outcome, then send its ``cell_event`` (and ``status`` if it changed).

        Call once per execute request, after output filtering (so ``redacted`` is complete) and
        before the execute_reply. ``decision`` is the strictest one taken for the cell.
        """
        if decision not in DECISION_RANK:
            decision = "deny"  # an unknown decision is reported as the strictest
        if decision == "deny" or outcome in ("denied", "timeout"):
            self.counts.denied += 1
        self.counts.redacted += max(0, int(redacted))
        event = {
            "type": "cell_event",
            "cell_id": cell_id,
            "msg_id": msg_id,
            "decision": decision,
            "outcome": outcome if decision == "escalate" else None,
            "redacted": max(0, int(redacted)),
            "rules": [str(rule) for rule in rules],
            "reason": reason or "",
            "findings": [
                {
                    "id": str(f.get("id", "")),
                    "severity": str(f.get("severity", "")),
                    "line": f.get("line") if isinstance(f.get("line"), int) else None,
                    "message": str(f.get("message", "")),
                }
                for f in findings
            ],
        }
        self.broadcast(event, parent)
        # A new status when anything on the status bar changed: counts, or the policy / isolation
        # layers the kernel updated meanwhile (e.g. after the sandbox selftest).
        if self.status_message() != self._published_status:
            self.publish_status(parent)
        return event

    def _escalation_message(self, esc_id: str, request: EscalationRequest, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "escalation",
            "id": esc_id,
            "cell_id": request.cell_id,
            "msg_id": request.msg_id,
            "kind": request.kind,
            "summary": request.summary,
            "canonical": request.canonical,
            "rules": list(request.rules),
            "reason": request.reason,
            **extra,
        }

    async def escalate(
        self,
        request: EscalationRequest,
        *,
        timeout_s: float,
        allow_session: bool,
        parent: dict[str, Any] | None = None,
    ) -> EscalationResult:
        """Ask the attached frontends; the first answer wins, no answer in time is a deny.

        Must be awaited on the kernel's event loop while the cell waits: ipykernel 7 dispatches
        comm messages concurrently with a waiting async ``do_execute``, so the answer arrives.
        Raises ``LookupError`` when no frontend is attached (use :class:`..approval.Approver`,
        which falls back to ``input_request`` or denies).
        """
        if not self.attached:
            raise LookupError("no ironcage.ui frontend attached")
        esc_id = f"esc-{uuid.uuid4().hex}"
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        extra = {"allow_session": bool(allow_session), "timeout_s": timeout_s}
        self._pending[esc_id] = (future, request, extra)
        self.counts.escalated += 1
        by = "ui"
        answer = "deny"
        try:
            self.broadcast(self._escalation_message(esc_id, request, extra), parent)
            try:
                answer = await asyncio.wait_for(asyncio.shield(future), timeout_s)
                by = self._settled_by.pop(esc_id, "ui")
            except TimeoutError:
                by, answer = "timeout", "deny"
            except asyncio.CancelledError:
                by, answer = "interrupt", "deny"
                raise
        finally:
            self._pending.pop(esc_id, None)
            self._settled_by.pop(esc_id, None)
            self.broadcast(
                {"type": "escalation_resolved", "id": esc_id, "answer": answer, "by": by}, parent
            )
        if answer == "session" and not allow_session:
            answer = "once"
        return EscalationResult(answer=answer, by=by)  # type: ignore[arg-type]

    def cancel_escalations(self, by: str = "interrupt") -> None:
        """Deny every waiting escalation (interrupt, shutdown)."""
        for esc_id, (future, _request, _extra) in list(self._pending.items()):
            if not future.done():
                self._settled_by[esc_id] = by
                future.set_result("deny")
