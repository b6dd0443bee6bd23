"""The tool broker: every tool call, from any channel, passes this one pipeline.

schema validation -> budgets -> input firewall on the arguments -> canonical argument roles -> policy
-> escalation -> execution (brokered credentials are swapped inside, per grant) -> output firewall ->
audit (OpenTelemetry GenAI names). Every stage fails closed: an exception or a timeout is a refusal
naming the stage's rule, and nothing the tool produced passes without a successful audit write. Per
call one fdatasync: the decision's, before the tool runs (the outcome rides with the next one).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from . import audit_events
from .budgets import BudgetTracker
from .errors import ToolExecutionError, ToolRefusal
from .hooks import (
    ArgumentScreen,
    AuditSink,
    CredentialSwapper,
    Escalator,
    OutputScreen,
    ToolDecision,
    ToolPolicy,
    ToolRequest,
    normalize_decision,
)
from .models import (
    PATH_ROLES,
    Refusal,
    RoledValue,
    SchemaError,
    ToolCall,
    ToolOutcome,
    ToolSchema,
    validate_arguments,
)

AUDIT_EVENT = "tool_call"
ARGUMENT_AUDIT_CHARS = 2000


@dataclass
class ExecutionContext:
    call: ToolCall
    schema: ToolSchema
    request: ToolRequest
    credentials: CredentialSwapper | None


Executor = Callable[[dict[str, Any], ExecutionContext], Awaitable[Any]]
Canonicalizer = Callable[[ToolSchema, str, str], str]  # (schema, role, value) -> canonical


@dataclass
class RegisteredTool:
    schema: ToolSchema
    execute: Executor
    canonicalize: Canonicalizer | None = None


def canonical_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ToolRefusal("tools.bad_url", f"not an http(s) URL: {value[:200]!r}")
    if parts.username or parts.password:
        raise ToolRefusal("tools.bad_url", "URLs with user info are refused (credentials go through grants)")
    from .netguard import DestinationRefused, normalize_host

    try:
        host = normalize_host(parts.hostname)
    except DestinationRefused as exc:
        raise ToolRefusal(exc.rule, exc.reason) from None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    shown = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{shown}:{port}{parts.path or '/'}"


def _short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > ARGUMENT_AUDIT_CHARS:
        return value[:ARGUMENT_AUDIT_CHARS] + f"...[{len(value)} chars]"
    if isinstance(value, dict):
        return {k: _short(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_short(v) for v in value[:100]]
    return value


class ToolBroker:
    """One per session. Channels (unix socket, comm, magics, CLI) all call `await broker.call(...)`."""

    def __init__(
        self,
        *,
        policy: ToolPolicy,
        audit: AuditSink,
        budgets: BudgetTracker | None = None,
        screen_arguments: ArgumentScreen | None = None,
        escalate: Escalator | None = None,
        escalation_timeout_s: float = 300.0,
        credentials: CredentialSwapper | None = None,
        screen_output: OutputScreen | None = None,
        call_timeout_s: float = 30.0,
        max_result_bytes: int = 1_000_000,
        clock: Callable[[], float] = time.perf_counter,
        durable_outcomes: bool = False,
    ) -> None:
        self.policy = policy
        self.audit = audit
        self.budgets = budgets or BudgetTracker()
        self.screen_arguments = screen_arguments
        self.escalate = escalate
        self.escalation_timeout_s = escalation_timeout_s
        self.credentials = credentials
        self.screen_output = screen_output
        self.call_timeout_s = call_timeout_s
        self.max_result_bytes = max_result_bytes
        self.clock = clock
        self.durable_outcomes = durable_outcomes
        self._tools: dict[str, RegisteredTool] = {}

    # registry -------------------------------------------------------------------------------------
    def register(self, schema: ToolSchema, execute: Executor, canonicalize: Canonicalizer | None = None) -> None:
        self._tools[schema.name] = RegisteredTool(schema, execute, canonicalize)

    def unregister_prefix(self, prefix: str) -> None:
        for name in [n for n in self._tools if n.startswith(prefix)]:
            del self._tools[name]

    def schemas(self) -> list[ToolSchema]:
        return [t.schema for t in sorted(self._tools.values(), key=lambda t: t.schema.name)]

    def preview(self, name: str) -> ToolDecision:
        """What the policy says about a call without arguments (for `%ironcage tools`); never raises."""
        tool = self._tools.get(name)
        if tool is None:
            return ToolDecision("deny", ("invariant.unknown_tool",), f"unknown tool {name}")
        request = ToolRequest(ToolCall(name=name, origin="magic"), tool.schema, [])
        try:
            return normalize_decision(self.policy.decide_tool(request))
        except Exception as exc:  # noqa: BLE001 - preview reports, never raises
            return ToolDecision("deny", ("policy.error",), f"policy failed: {type(exc).__name__}: {exc}")

    # pipeline -------------------------------------------------------------------------------------
    async def call_raw(self, payload: Any, origin: str = "cell") -> ToolOutcome:
        """Entry point for untrusted payloads (JSON from a socket or a comm): malformed -> refusal."""
        if not isinstance(payload, dict):
            return self._malformed("?", "?", "request must be a JSON object")
        data = {k: payload[k] for k in ("name", "arguments", "call_id", "cell_id") if k in payload}
        extra = sorted(set(payload) - {"name", "arguments", "call_id", "cell_id", "origin"})
        if extra:
            return self._malformed(str(payload.get("call_id", "?")), str(payload.get("name", "?")),
                                   f"unknown request field(s): {', '.join(extra)}")
        if data.get("arguments") is None:
            data["arguments"] = {}
        try:
            call = ToolCall(origin=origin, **data)  # type: ignore[arg-type]
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            return self._malformed(str(payload.get("call_id", "?")), str(payload.get("name", "?")),
                                   f"malformed tool call: {where}: {first.get('msg')}")
        return await self.call(call)

    def _malformed(self, call_id: str, name: str, reason: str) -> ToolOutcome:
        outcome = ToolOutcome(call_id=call_id[:200] or "?", name=name[:200] or "?", ok=False,
                              refusal=Refusal(rule="schema.malformed_request", reason=reason, stage="schema"))
        self._audit_refusal_best_effort(None, outcome, self.clock())
        return outcome

    async def call(self, call: ToolCall) -> ToolOutcome:
        started = self.clock()
        warnings: list[str] = []
        stage = "schema"
        request: ToolRequest | None = None
        decision: ToolDecision | None = None
        try:
            tool = self._tools.get(call.name)
            if tool is None:
                raise ToolRefusal("invariant.unknown_tool", f"unknown tool {call.name!r}: not a built-in or a configured MCP tool")
            try:
                validate_arguments(tool.schema, call.arguments)
            except SchemaError as exc:
                rule = f"schema.{exc.argument}" if exc.argument else "schema.invalid"
                raise ToolRefusal(rule, str(exc)) from None

            stage = "budget"
            verdict = self.budgets.check_tool_call(call.name, call.arguments)
            if not verdict.allowed:
                raise ToolRefusal(verdict.rule or "budget", verdict.reason or "budget exhausted")
            warnings.extend(verdict.warnings)
            for warning in verdict.warnings:
                self.audit.record(
                    audit_events.POLICY_DECISION, decision="allow", rule="budget.warning", reason=warning,
                    detail=audit_events.tool_decision_detail(name=call.name, call_id=call.call_id, cell_id=call.cell_id,
                                                             target=None, rules=["budget.warning"]))

            stage = "input_firewall"
            findings = list(self.screen_arguments(call.name, call.arguments)) if self.screen_arguments else []

            stage = "roles"
            request = ToolRequest(call, tool.schema, self._roled_values(tool, call.arguments), findings,
                                  screened=self.screen_arguments is not None)

            stage = "policy"
            decision = normalize_decision(self.policy.decide_tool(request))
            if decision.effect == "escalate":
                stage = "escalation"
                decision = await self._escalate(request, decision)
            # The decision is recorded before anything runs; a failed write refuses the call.
            stage = "audit"
            self.audit.record(
                audit_events.POLICY_DECISION, decision="allow" if decision.effect == "allow" else "deny",
                rule=",".join(decision.rules) or None, reason=decision.reason,
                detail=audit_events.tool_decision_detail(
                    name=call.name, call_id=call.call_id, cell_id=call.cell_id,
                    target="; ".join(f"{v.role} {v.canonical}" for v in request.roled) or None,
                    rules=list(decision.rules), duration_ms=self._elapsed_ms(started)),
                durable=True,
            )
            stage = "policy"
            if decision.effect != "allow":
                raise ToolRefusal(",".join(decision.rules) or "policy.deny", decision.reason or "denied by policy")

            stage = "execution"
            context = ExecutionContext(call, tool.schema, request, self.credentials)
            is_error = False
            try:
                result = await asyncio.wait_for(tool.execute(call.arguments, context), self.call_timeout_s)
            except ToolExecutionError as exc:
                result, is_error = {"error": str(exc)}, True
            except TimeoutError:
                raise ToolRefusal("tools.timeout", f"{call.name} did not finish within {self.call_timeout_s:g} s") from None

            stage = "output_firewall"
            if self.credentials is not None:
                # A result echoing a brokered secret (a server returning the Authorization header, an
                # error quoting the URL) goes back with the sentinel, never the real value.
                result = self.credentials.restore(result)
            redactions: list[dict[str, Any]] = []
            if self.screen_output is not None:
                result, redactions = self.screen_output(call.name, result)
            encoded = json.dumps(result, default=str, ensure_ascii=False).encode()
            if len(encoded) > self.max_result_bytes:
                raise ToolRefusal("tools.result_too_large",
                                  f"result of {len(encoded)} bytes exceeds the {self.max_result_bytes}-byte limit")

            stage = "audit"
            outcome = ToolOutcome(call_id=call.call_id, name=call.name, ok=True, result=result, is_error=is_error,
                                  warnings=warnings, redactions=redactions)
            # The decision was committed (journaled, fdatasync'd) before the tool ran. The outcome is a
            # report, not a gate: like a cell's `execution` record it is recorded (validated, chained;
            # a failed write refuses the result) before the result passes, and becomes durable with
            # the next durable write or batch. Without a `decision` the store does not force a second
            # sync per call; the allow it reports is the `policy_decision` with the same call id.
            # durable_outcomes=True commits it as well (a second fdatasync per call).
            self.audit.record(
                AUDIT_EVENT, decision="allow" if self.durable_outcomes else None,
                rule=",".join(decision.rules) or None, reason=decision.reason,
                detail=self._detail(call, tool.schema, started, status="error" if is_error else "ok",
                                    result_size=len(encoded)),
                durable=self.durable_outcomes,
            )
            return outcome
        except ToolRefusal as exc:
            return self._refuse(call, request, started, stage, exc.rule, exc.reason, warnings)
        except TimeoutError:
            return self._refuse(call, request, started, stage, f"{stage}.timeout", f"{stage} timed out", warnings)
        except Exception as exc:  # noqa: BLE001 - fail closed on anything unexpected, saying where
            rule = "audit.write_failed" if stage == "audit" else f"{stage}.error"
            return self._refuse(call, request, started, stage, rule,
                                f"{stage} failed ({type(exc).__name__}: {exc}); the call is refused", warnings)

    async def _escalate(self, request: ToolRequest, decision: ToolDecision) -> ToolDecision:
        if self.escalate is None:
            return ToolDecision("deny", (*decision.rules, "escalation.no_handler"),
                                f"{decision.reason}; no one to ask, so denied")
        try:
            approved = await asyncio.wait_for(self.escalate(request, decision), self.escalation_timeout_s)
        except TimeoutError:
            return ToolDecision("deny", (*decision.rules, "escalation.timeout"),
                                f"no answer within {self.escalation_timeout_s:g} s, so denied")
        if approved is True:
            return ToolDecision("allow", (*decision.rules, "escalation.approved"), "approved by a human")
        return ToolDecision("deny", (*decision.rules, "escalation.rejected"), "rejected by a human")

    def _roled_values(self, tool: RegisteredTool, arguments: dict[str, Any]) -> list[RoledValue]:
        values: list[RoledValue] = []
        for name, spec in tool.schema.arguments.items():
            if spec.role == "opaque" or name not in arguments:
                continue
            raw = arguments[name]
            items = raw if isinstance(raw, list) else [raw]
            for item in items:
                if not isinstance(item, str):
                    raise ToolRefusal(f"schema.{name}", f"argument {name!r} has role {spec.role} and must be text")
                if spec.role == "url":
                    canonical = canonical_url(item)
                elif spec.role in PATH_ROLES and tool.canonicalize is not None:
                    canonical = tool.canonicalize(tool.schema, spec.role, item)
                else:
                    canonical = item
                values.append(RoledValue(argument=name, role=spec.role, value=item, canonical=canonical))
        return values

    def _elapsed_ms(self, started: float) -> float:
        return round((self.clock() - started) * 1000, 3)

    def _detail(self, call: ToolCall, schema: ToolSchema | None, started: float, *, status: str,
                result_size: int | None = None, error_type: str | None = None) -> dict[str, Any]:
        return audit_events.tool_call_detail(
            name=call.name, call_id=call.call_id, server=schema.server if schema else None,
            arguments=_short(call.arguments), status=status, duration_ms=self._elapsed_ms(started),
            result_size_bytes=result_size, error_type=error_type)

    def _refuse(self, call: ToolCall, request: ToolRequest | None, started: float, stage: str,
                rule: str, reason: str, warnings: list[str]) -> ToolOutcome:
        if self.credentials is not None:
            try:
                reason = self.credentials.restore(reason)
            except Exception as exc:  # noqa: BLE001 - a reason that cannot be checked is not shown
                reason = f"refused (reason withheld: restoring sentinels failed with {type(exc).__name__})"
        outcome = ToolOutcome(call_id=call.call_id, name=call.name, ok=False,
                              refusal=Refusal(rule=rule, reason=reason, stage=stage), warnings=warnings)
        self._audit_refusal_best_effort(call, outcome, started, request.schema if request else self._schema(call))
        return outcome

    def _schema(self, call: ToolCall) -> ToolSchema | None:
        tool = self._tools.get(call.name)
        return tool.schema if tool else None

    def _audit_refusal_best_effort(self, call: ToolCall | None, outcome: ToolOutcome, started: float,
                                   schema: ToolSchema | None = None) -> None:
        # The call is already refused; a failing audit write cannot make it less safe, so only note it.
        assert outcome.refusal is not None
        status = "timeout" if outcome.refusal.rule.endswith("timeout") else "denied"
        if call is None:
            call = ToolCall(name=outcome.name or "?", call_id=outcome.call_id or "?", origin="cell")
        detail = self._detail(call, schema, started, status=status, error_type=f"refused.{outcome.refusal.stage}")
        try:
            self.audit.record(AUDIT_EVENT, decision="deny", rule=outcome.refusal.rule, reason=outcome.refusal.reason,
                              detail=detail, durable=True)
        except Exception as exc:  # noqa: BLE001
            outcome.warnings.append(f"audit write failed for this refusal: {type(exc).__name__}")
