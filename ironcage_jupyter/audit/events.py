"""Audit event model: one envelope shared by every event, one detail model per event type.

The envelope mirrors the `events` table columns. The bytes that are hashed and stored are the canonical
JSON of the envelope (sorted keys, compact separators, UTF-8), so verification hashes exactly what was
stored and never a re-derivation. Detail field names follow OCSF 1.x attributes where one fits and the
OpenTelemetry GenAI semantic conventions for tool calls (``gen_ai.*`` keys, kept dotted in the JSON).

Values of secrets never appear in any event: credential events carry names and scopes, redaction events
carry detector names and counts, and code/arguments are stored only after the caller redacted them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from math import isfinite
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1

Decision = Literal["allow", "deny", "escalate"]


class EventType(StrEnum):
    SESSION_START = "session_start"
    SESSION_END = "session_end"
    CELL_SUBMITTED = "cell_submitted"
    FIREWALL_FINDINGS = "firewall_findings"
    POLICY_DECISION = "policy_decision"
    ESCALATION = "escalation"
    EXECUTION = "execution"
    OUTPUT_REDACTION = "output_redaction"
    CREDENTIAL_ACCESS = "credential_access"
    TOOL_CALL = "tool_call"
    VIOLATION = "violation"
    POLICY_CHANGE = "policy_change"
    ISOLATION = "isolation"
    AUDIT_QUERY = "audit_query"


# Events that gate an action or report a breach are committed before `record` returns, whatever the
# caller asked: the action they allow must never proceed on an unrecorded decision.
ALWAYS_DURABLE: frozenset[str] = frozenset(
    {
        EventType.SESSION_START,
        EventType.SESSION_END,
        EventType.POLICY_DECISION,
        EventType.ESCALATION,
        EventType.CREDENTIAL_ACCESS,
        EventType.VIOLATION,
        EventType.POLICY_CHANGE,
        EventType.ISOLATION,
        EventType.AUDIT_QUERY,
    }
)


class _Detail(BaseModel):
    # allow_inf_nan=False: JSON has no NaN/Infinity, and the canonical bytes must be plain JSON.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, allow_inf_nan=False)


class SessionStartDetail(_Detail):
    """OCSF: Application Lifecycle (6002) activity "start"."""

    kernel_name: str = "ironcage"
    kernel_version: str | None = None
    policy_name: str | None = None
    policy_sha256: str | None = None
    isolation: dict[str, str] = Field(
        default_factory=dict, description="Layer -> active/degraded/missing (sandbox self-test result)."
    )
    isolation_reasons: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, Any] = Field(default_factory=dict, description="Resource limits in force.")
    workspace: str | None = None
    user_name: str | None = Field(default=None, description="OCSF actor.user.name")
    hostname: str | None = Field(default=None, description="OCSF device.hostname")
    pid: int | None = Field(default=None, description="OCSF process.pid of the wrapper")
    child_pid: int | None = None


class SessionEndDetail(_Detail):
    status: str = Field(default="normal", description="normal, restart, crash, audit_failure, ...")
    reason: str | None = None
    cells_run: int | None = None
    duration_ms: float | None = None


class CellSubmittedDetail(_Detail):
    cell_id: str | None = None
    execution_count: int | None = None
    code_sha256: str = Field(description="SHA-256 of the code exactly as submitted (before redaction).")
    code_redacted: str = Field(description="The code after secret redaction.")
    code_length: int | None = None
    origin: str | None = Field(
        default=None, description="Claimed origin from execute_request metadata (agent, user, ...)."
    )
    origin_metadata: dict[str, Any] = Field(default_factory=dict)


class FindingRecord(_Detail):
    finding_id: str
    category: str | None = None
    severity: str | None = None
    line: int | None = None
    message: str | None = None


class FirewallFindingsDetail(_Detail):
    """OCSF: Detection Finding (2004); one event per screened cell or tool call."""

    cell_id: str | None = None
    tool_call_id: str | None = Field(default=None, alias="gen_ai.tool.call.id")
    target: Literal["cell", "tool_arguments", "output"] = "cell"
    findings: list[FindingRecord] = Field(default_factory=list)
    finding_count: int | None = None
    duration_ms: float | None = None


class PolicyDecisionDetail(_Detail):
    """The envelope's decision/rule/reason columns carry the outcome; this carries the context."""

    subject: Literal["cell", "tool", "network", "credential", "output", "other"] = "cell"
    cell_id: str | None = None
    tool_call_id: str | None = Field(default=None, alias="gen_ai.tool.call.id")
    tool_name: str | None = Field(default=None, alias="gen_ai.tool.name")
    target: str | None = Field(default=None, description="Host:port, path or credential name decided on.")
    rules: list[str] = Field(default_factory=list, description="Every rule that matched.")
    policy_name: str | None = None
    duration_ms: float | None = None
    enforced: bool | None = Field(default=None, description="False under an observe-only policy.")
    would_have: Decision | None = Field(default=None, description="The enforced outcome when not enforced.")
    invariant: bool | None = Field(default=None, description="Decided by a hardcoded invariant.")
    server: str | None = Field(default=None, description="MCP server whose own egress proxy decided (network).")


class EscalationDetail(_Detail):
    state: Literal["asked", "answered", "timeout", "cancelled"]
    escalation_id: str
    question: str | None = None
    answer: Literal["approve", "deny"] | None = None
    answered_by: str | None = Field(default=None, description="OCSF actor.user.name of the approver.")
    approval_scope: Literal["once", "session"] | None = None
    timeout_s: float | None = None
    waited_ms: float | None = None
    cell_id: str | None = None
    tool_call_id: str | None = Field(default=None, alias="gen_ai.tool.call.id")


class ExecutionDetail(_Detail):
    cell_id: str | None = None
    execution_count: int | None = None
    status: Literal["ok", "error", "aborted", "interrupted", "timeout", "blocked"]
    duration_ms: float | None = None
    cpu_time_s: float | None = None
    max_rss_kb: int | None = None
    output_bytes: int | None = None
    error_type: str | None = Field(default=None, description="OTel error.type (exception name).")


class OutputRedactionDetail(_Detail):
    cell_id: str | None = None
    tool_call_id: str | None = Field(default=None, alias="gen_ai.tool.call.id")
    detector: str
    matched_name: str | None = Field(default=None, description="Secret or pattern name; never the value.")
    count: int = Field(ge=0)
    action: Literal["redacted", "withheld", "truncated", "flagged"] = "redacted"
    msg_type: str | None = None
    stream_name: str | None = None


class CredentialAccessDetail(_Detail):
    credential_name: str
    scope: str | None = Field(
        default=None, description="cell, tool, egress, sentinel, injected, source:<kind>"
    )
    granted: bool | None = Field(default=None, description="None for a request whose outcome follows.")
    target: str | None = Field(default=None, description="Host or tool the credential is used toward.")
    ttl_s: float | None = None
    used_by: Literal["trusted", "sandbox"] | None = None
    cell_id: str | None = None
    tool_call_id: str | None = Field(default=None, alias="gen_ai.tool.call.id")


class ToolCallDetail(_Detail):
    """OpenTelemetry GenAI execute_tool span attributes."""

    operation_name: Literal["execute_tool"] = Field(default="execute_tool", alias="gen_ai.operation.name")
    tool_name: str = Field(alias="gen_ai.tool.name")
    tool_call_id: str | None = Field(default=None, alias="gen_ai.tool.call.id")
    tool_type: str | None = Field(default=None, alias="gen_ai.tool.type")
    arguments_redacted: dict[str, Any] = Field(default_factory=dict)
    status: Literal["ok", "error", "denied", "timeout"] | None = None
    duration_ms: float | None = None
    result_size_bytes: int | None = None
    error_type: str | None = Field(default=None, alias="error.type")
    server: str | None = Field(default=None, description="MCP server or tool provider name.")


class ViolationDetail(_Detail):
    kind: Literal[
        "sandbox_denial", "limit_hit", "child_crash", "selftest_failure", "audit_failure", "protocol", "other"
    ]
    layer: str | None = Field(default=None, description="process, filesystem, network, syscall")
    limit: str | None = Field(default=None, description="Which resource limit was hit.")
    message: str | None = None
    cell_id: str | None = None
    exit_code: int | None = None
    signal: int | None = None


class PolicyChangeDetail(_Detail):
    old_policy: str | None = None
    new_policy: str | None = None
    old_sha256: str | None = None
    new_sha256: str | None = None
    changed_by: str | None = None
    source: str | None = Field(default=None, description="File path or UI that made the change.")


class IsolationDetail(_Detail):
    """The sandbox's self-test verdict when a child kernel is started (one event per verdict)."""

    outcome: Literal["active", "degraded", "unsafe", "refused"] = Field(
        description="active: every layer held; degraded: cells run with degraded layers; unsafe: cells "
        "run under the policy's `unsafe` opt-in although layers are missing; refused: a required layer "
        "is missing and no cell runs."
    )
    mode: str | None = Field(default=None, description="bubblewrap, degraded (no namespaces), failed")
    layers: dict[str, str] = Field(default_factory=dict, description="Layer -> active/degraded/missing.")
    reasons: dict[str, str] = Field(default_factory=dict, description="Layer -> why, in words.")
    mechanisms: dict[str, list[str]] = Field(default_factory=dict, description="Layer -> mechanisms held.")
    required_layers: list[str] = Field(default_factory=list)
    missing_required: list[str] = Field(default_factory=list)
    unsafe: bool = False
    selftest_ms: float | None = None
    error: str | None = Field(default=None, description="Why the self-test itself could not run.")


class AuditQueryDetail(_Detail):
    """A read of the audit log itself (`%%ironcage sql`, `%ironcage audit`, `audit query`, the lab
    extension's audit panel): recorded
    before its result is shown. A refused query has decision `deny`."""

    interface: Literal["sql_magic", "audit_magic", "cli", "ui_panel"]
    sql_redacted: str = Field(description="The query text after secret redaction (bounded).")
    sql_sha256: str = Field(description="SHA-256 of the query text exactly as submitted.")
    status: Literal["ok", "refused", "error"]
    row_count: int | None = Field(default=None, description="Rows fetched (at most the fetch limit).")
    truncated: bool | None = None
    duration_ms: float | None = None
    sessions: int | None = Field(default=None, description="Session files the query read.")
    output_variable: str | None = Field(default=None, description="`-o NAME`: the DataFrame's name.")
    error: str | None = None
    cell_id: str | None = None


DETAIL_MODELS: dict[str, type[_Detail]] = {
    EventType.SESSION_START: SessionStartDetail,
    EventType.SESSION_END: SessionEndDetail,
    EventType.CELL_SUBMITTED: CellSubmittedDetail,
    EventType.FIREWALL_FINDINGS: FirewallFindingsDetail,
    EventType.POLICY_DECISION: PolicyDecisionDetail,
    EventType.ESCALATION: EscalationDetail,
    EventType.EXECUTION: ExecutionDetail,
    EventType.OUTPUT_REDACTION: OutputRedactionDetail,
    EventType.CREDENTIAL_ACCESS: CredentialAccessDetail,
    EventType.TOOL_CALL: ToolCallDetail,
    EventType.VIOLATION: ViolationDetail,
    EventType.POLICY_CHANGE: PolicyChangeDetail,
    EventType.ISOLATION: IsolationDetail,
    EventType.AUDIT_QUERY: AuditQueryDetail,
}


class AuditEventError(ValueError):
    """An event that does not match its schema (a programming error on the recording side)."""


# Which detail field becomes the envelope's `name` column (what the event is about), per event type.
NAME_FIELDS: dict[str, str] = {
    EventType.SESSION_START: "policy_name",
    EventType.SESSION_END: "status",
    EventType.CELL_SUBMITTED: "origin",
    EventType.FIREWALL_FINDINGS: "target",
    EventType.POLICY_DECISION: "subject",
    EventType.ESCALATION: "state",
    EventType.EXECUTION: "status",
    EventType.OUTPUT_REDACTION: "detector",
    EventType.CREDENTIAL_ACCESS: "credential_name",
    EventType.TOOL_CALL: "gen_ai.tool.name",
    EventType.VIOLATION: "kind",
    EventType.POLICY_CHANGE: "new_policy",
    EventType.ISOLATION: "outcome",
    EventType.AUDIT_QUERY: "interface",
}


class AuditEvent(BaseModel):
    """The envelope; its canonical JSON is what is hashed and stored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: str
    ts: str = Field(description="UTC, ISO 8601 with microseconds and a Z suffix.")
    session_id: str
    seq: int = Field(ge=1)
    event_type: EventType
    decision: Decision | None = None
    rule: str | None = None
    reason: str | None = None
    cell_id: str | None = Field(default=None, description="Copied from detail.cell_id for fast queries.")
    name: str | None = Field(default=None, description="What the event is about (see NAME_FIELDS).")
    detail: dict[str, Any] = Field(default_factory=dict)
    prev_hash: str
    hash: str | None = Field(default=None, description="SHA-256 of the canonical bytes (not part of them).")

    def canonical(self) -> str:
        return canonical_json(self.model_dump(exclude={"hash"}, mode="json"))


_ORJSON_OPTIONS = orjson.OPT_SORT_KEYS


def canonical_bytes(envelope: dict[str, Any]) -> bytes:
    """Sorted-key compact JSON, UTF-8 (not ASCII-escaped): the bytes that are hashed and stored.

    orjson writes exactly this form (sorted keys, no whitespace, raw UTF-8, the shortest round-trip
    float), ~10x faster than `json.dumps`. Values orjson refuses (integers beyond 64 bits, non-string
    keys) fall back to `json.dumps` with the same options; either way the hash is over the stored
    bytes, never a re-derivation. Non-finite floats are refused (typed fields by the detail models;
    free-form fields here), as JSON has no NaN/Infinity. (An envelope's own fields are strings,
    integers and null; with a `detail`, only the detail is searched for floats.)"""
    try:
        data = orjson.dumps(envelope, option=_ORJSON_OPTIONS)
    except TypeError:
        data = json.dumps(
            envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    else:
        if _has_non_finite(envelope.get("detail", envelope)):  # orjson writes NaN/Infinity as null
            raise ValueError("Out of range float values are not JSON compliant")
    return data


def _has_non_finite(value: Any) -> bool:
    """A non-finite float anywhere in `value` (only called after orjson serialised it, so nesting
    is at most orjson's 255 levels). Scalars are checked inline; only containers recurse."""
    kind = type(value)
    if kind is dict:
        items = value.values()
    elif kind is list or kind is tuple:
        items = value
    else:
        return kind is float and not isfinite(value)
    for item in items:
        kind = type(item)
        if kind is float:
            if not isfinite(item):
                return True
        elif (kind is dict or kind is list or kind is tuple) and _has_non_finite(item):
            return True
    return False


def canonical_json(envelope: dict[str, Any]) -> str:
    """`canonical_bytes` as text."""
    return canonical_bytes(envelope).decode("utf-8")


# Control characters other than \b \t \n \f \r: JSON escapes them as \u00XX, and DuckDB's to_json
# writes the hex digits in upper case where Python writes lower case. Envelope strings are
# rebuilt in SQL by `verify`, so they must not contain them (they are replaced, visibly).
_CONTROL = {c: "\ufffd" for c in range(0x20) if chr(c) not in "\b\t\n\f\r"}


def envelope_text(value: Any) -> str | None:
    """An envelope string field (rule, reason, cell_id, name): str or None, no odd control chars."""
    if value is None:
        return None
    return str(value).translate(_CONTROL)


def event_hash(canonical: str) -> str:
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def genesis_hash(session_id: str) -> str:
    """prev_hash of a session's first event: binds the chain to its session id."""
    return hashlib.sha256(f"ironcage-audit/v{SCHEMA_VERSION}/genesis/{session_id}".encode()).hexdigest()


def format_ts(moment: datetime) -> str:
    """`YYYY-MM-DDTHH:MM:SS.ffffffZ` in UTC."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"


def new_event_id() -> str:
    """A random (version 4) UUID as text, without the `uuid` module's per-call overhead."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def validate_detail(event_type: str, detail: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
    """Validate against the event type's model; return the JSON-ready dict (aliases, no None noise)."""
    try:
        model = DETAIL_MODELS[EventType(event_type)]
    except ValueError:
        raise AuditEventError(f"unknown audit event type {event_type!r}") from None
    try:
        parsed = (
            detail
            if isinstance(detail, model)
            else model.model_validate(
                detail.model_dump(by_alias=True) if isinstance(detail, BaseModel) else detail
            )
        )
    except ValidationError as exc:
        raise AuditEventError(f"invalid detail for {event_type}: {exc}") from exc
    return parsed.model_dump(mode="json", by_alias=True, exclude_none=True)
