"""The broker pipeline: schema first, then budgets, firewall, roles, policy, escalation, execution,
output firewall and audit — each failing closed."""

from __future__ import annotations

import asyncio
import os

import pytest

from ironcage_jupyter.tools.broker import ToolBroker
from ironcage_jupyter.tools.budgets import BudgetTracker
from ironcage_jupyter.tools.builtin import register_builtins
from ironcage_jupyter.tools.errors import ToolExecutionError
from ironcage_jupyter.tools.fs import ConfinedFs, FsRoot
from ironcage_jupyter.tools.hooks import MemoryAudit, SettingsToolPolicy, ToolDecision
from ironcage_jupyter.tools.models import ArgumentSpec, ToolCall, ToolSchema
from ironcage_jupyter.tools.settings import BudgetSettings, ToolSettings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FailingAudit(MemoryAudit):
    def record(self, event_type, **kwargs):  # type: ignore[override]
        if kwargs.get("decision") == "allow":
            raise OSError("disk full")
        return super().record(event_type, **kwargs)


ECHO = ToolSchema(name="t.echo", arguments={
    "text": ArgumentSpec(name="text", required=True),
    "times": ArgumentSpec(name="times", types=("integer",)),
    "flag": ArgumentSpec(name="flag", types=("boolean",)),
})


def make_broker(tmp_path, *, settings: ToolSettings | None = None, **kwargs) -> tuple[ToolBroker, MemoryAudit, list]:
    settings = settings or ToolSettings(allow=["fs.*", "t.*"])
    audit = kwargs.pop("audit", None) or MemoryAudit()
    broker = ToolBroker(policy=kwargs.pop("policy", None) or SettingsToolPolicy(settings), audit=audit, **kwargs)
    executed: list = []

    async def echo(arguments, context):
        executed.append(arguments)
        if arguments["text"] == "boom":
            raise ToolExecutionError("tool failed")
        if arguments["text"] == "hang":
            await asyncio.sleep(30)
        if arguments["text"] == "crash":
            raise RuntimeError("bug in tool")
        return {"echo": arguments["text"] * arguments.get("times", 1)}

    broker.register(ECHO, echo)
    os.makedirs(tmp_path / "ws", exist_ok=True)
    register_builtins(broker, enabled=settings.builtins, fs=ConfinedFs([FsRoot(str(tmp_path / "ws"), True)]), http=None)
    return broker, audit, executed


async def test_allowed_call_runs_and_is_audited_with_genai_names(tmp_path):
    broker, audit, executed = make_broker(tmp_path)
    outcome = await broker.call(ToolCall(name="t.echo", arguments={"text": "hi", "times": 2}, call_id="c1"))
    assert outcome.ok and outcome.result == {"echo": "hihi"}
    assert executed == [{"text": "hi", "times": 2}]
    event = audit.events[-1]
    # The outcome reports; the allow it reports is the decision record committed before the tool ran.
    assert event["event_type"] == "tool_call" and event["decision"] is None and not event["durable"]
    assert event["rule"] == "tools.allow[t.*]"
    assert event["detail"]["gen_ai.operation.name"] == "execute_tool"
    assert event["detail"]["gen_ai.tool.name"] == "t.echo"
    assert event["detail"]["gen_ai.tool.call.id"] == "c1"
    assert event["detail"]["result_size_bytes"] > 0 and event["detail"]["status"] == "ok"
    decision = audit.events[-2]  # recorded before the tool ran
    assert decision["event_type"] == "policy_decision" and decision["decision"] == "allow" and decision["durable"]
    assert decision["detail"]["subject"] == "tool" and decision["detail"]["gen_ai.tool.call.id"] == "c1"


@pytest.mark.parametrize(
    ("arguments", "rule"),
    [
        ({"text": "hi", "extra": 1}, "schema.extra"),
        ({"times": 1}, "schema.text"),
        ({"text": 5}, "schema.text"),
        ({"text": "hi", "times": True}, "schema.times"),  # bool is not an integer
        ({"text": "hi", "times": "3"}, "schema.times"),
        ({"text": "hi", "flag": 1}, "schema.flag"),
    ],
)
async def test_schema_refuses_before_policy_and_execution(tmp_path, arguments, rule):
    calls = []

    class SpyPolicy:
        def decide_tool(self, request):
            calls.append(request)
            return ToolDecision("allow", ("x",), "")

    broker, audit, executed = make_broker(tmp_path, policy=SpyPolicy())
    outcome = await broker.call(ToolCall(name="t.echo", arguments=arguments))
    assert not outcome.ok and outcome.refusal.rule == rule and outcome.refusal.stage == "schema"
    assert calls == [] and executed == []
    assert audit.events[-1]["decision"] == "deny"


async def test_unknown_tool_is_denied_by_invariant(tmp_path):
    broker, audit, _ = make_broker(tmp_path, settings=ToolSettings(allow=["*"]))
    outcome = await broker.call(ToolCall(name="shell.exec", arguments={"cmd": "id"}))
    assert outcome.refusal.rule == "invariant.unknown_tool"


async def test_default_deny_and_deny_overrides_allow(tmp_path):
    broker, _, executed = make_broker(tmp_path, settings=ToolSettings(allow=["t.*"], deny=["t.echo"]))
    outcome = await broker.call(ToolCall(name="t.echo", arguments={"text": "x"}))
    assert outcome.refusal.rule == "tools.deny[t.echo]"
    broker, _, executed = make_broker(tmp_path, settings=ToolSettings())
    outcome = await broker.call(ToolCall(name="t.echo", arguments={"text": "x"}))
    assert outcome.refusal.rule == "default.deny" and executed == []


@pytest.mark.parametrize(
    ("answer", "effect", "rule"),
    [(True, True, None), (False, False, "escalation.rejected"), ("hang", False, "escalation.timeout"),
     (None, False, "escalation.no_handler")],
)
async def test_escalation(tmp_path, answer, effect, rule):
    async def ask(request, decision):
        if answer == "hang":
            await asyncio.sleep(30)
        return answer

    settings = ToolSettings(allow=["t.*"], escalate=["t.echo"])
    broker, _, executed = make_broker(tmp_path, settings=settings, escalate=None if answer is None else ask,
                                      escalation_timeout_s=0.05)
    outcome = await broker.call(ToolCall(name="t.echo", arguments={"text": "x"}))
    assert outcome.ok is effect
    if rule:
        assert rule in outcome.refusal.rule and executed == []


async def test_every_hook_failing_fails_closed(tmp_path):
    def bad_screen(name, args):
        raise ValueError("firewall crashed")

    broker, _, executed = make_broker(tmp_path, screen_arguments=bad_screen)
    outcome = await broker.call(ToolCall(name="t.echo", arguments={"text": "x"}))
    assert outcome.refusal.rule == "input_firewall.error" and executed == []

    class BadPolicy:
        def decide_tool(self, request):
            raise KeyError("policy bug")

    broker, _, executed = make_broker(tmp_path, policy=BadPolicy())
    outcome = await broker.call(ToolCall(name="t.echo", arguments={"text": "x"}))
    assert outcome.refusal.rule == "policy.error" and executed == []

    class WeirdPolicy:
        def decide_tool(self, request):
            return object()

    broker, _, executed = make_broker(tmp_path, policy=WeirdPolicy())
    outcome = await broker.call(ToolCall(name="t.echo", arguments={"text": "x"}))
    assert outcome.refusal.rule == "policy.malformed_decision" and executed == []

    def bad_output(name, result):
        raise RuntimeError("scanner down")

    broker, _, executed = make_broker(tmp_path, screen_output=bad_output)
    outcome = await broker.call(ToolCall(name="t.echo", arguments={"text": "secret"}))
    assert outcome.refusal.rule == "output_firewall.error" and outcome.result is None

    broker, _, _ = make_broker(tmp_path, audit=FailingAudit())
    outcome = await broker.call(ToolCall(name="t.echo", arguments={"text": "x"}))
    assert outcome.refusal.rule == "audit.write_failed" and outcome.result is None

    class FailingOutcomeAudit(MemoryAudit):
        def record(self, event_type, **kwargs):  # type: ignore[override]
            if event_type == "tool_call" and kwargs.get("decision") is None:
                raise OSError("disk full")
            return super().record(event_type, **kwargs)

    broker, _, executed = make_broker(tmp_path, audit=FailingOutcomeAudit())
    outcome = await broker.call(ToolCall(name="t.echo", arguments={"text": "y"}))
    assert executed and outcome.refusal.rule == "audit.write_failed" and outcome.result is None

    broker, _, _ = make_broker(tmp_path, call_timeout_s=0.05)
    outcome = await broker.call(ToolCall(name="t.echo", arguments={"text": "hang"}))
    assert outcome.refusal.rule == "tools.timeout"

    broker, _, _ = make_broker(tmp_path)
    outcome = await broker.call(ToolCall(name="t.echo", arguments={"text": "crash"}))
    assert outcome.refusal.rule == "execution.error" and "RuntimeError" in outcome.refusal.reason


async def test_tool_error_is_a_result_not_a_refusal(tmp_path):
    broker, _, _ = make_broker(tmp_path)
    outcome = await broker.call(ToolCall(name="t.echo", arguments={"text": "boom"}))
    assert outcome.ok and outcome.is_error and outcome.result == {"error": "tool failed"}


async def test_output_firewall_redacts_and_high_findings_deny(tmp_path):
    def redact(name, result):
        return {"echo": "[REDACTED]"}, [{"detector": "test", "count": 1}]

    broker, audit, _ = make_broker(tmp_path, screen_output=redact)
    outcome = await broker.call(ToolCall(name="t.echo", arguments={"text": "AKIA..."}))
    assert outcome.result == {"echo": "[REDACTED]"} and outcome.redactions == [{"detector": "test", "count": 1}]
    assert "AKIA" not in repr(audit.events[-1]["detail"].get("result"))

    class Finding:
        id, severity, message = "exfil-url", "high", "argument carries an exfiltration URL"

    broker, _, executed = make_broker(tmp_path, screen_arguments=lambda n, a: [Finding()])
    outcome = await broker.call(ToolCall(name="t.echo", arguments={"text": "x"}))
    assert outcome.refusal.rule == "firewall.exfil-url" and executed == []


async def test_result_size_limit(tmp_path):
    broker, _, _ = make_broker(tmp_path, max_result_bytes=100)
    outcome = await broker.call(ToolCall(name="t.echo", arguments={"text": "x", "times": 500}))
    assert outcome.refusal.rule == "tools.result_too_large"


@pytest.mark.parametrize(
    "payload",
    [[1, 2], {"name": 5}, {"name": "t.echo", "arguments": "text"}, {"name": "t.echo", "evil": 1}, {"arguments": {}}],
)
async def test_malformed_raw_payloads_get_a_refusal(tmp_path, payload):
    broker, audit, executed = make_broker(tmp_path)
    outcome = await broker.call_raw(payload)
    assert not outcome.ok and outcome.refusal.rule == "schema.malformed_request" and executed == []
    assert audit.events[-1]["decision"] == "deny"


async def test_path_roles_are_canonical_for_the_policy(tmp_path):
    seen = []

    class SpyPolicy:
        def decide_tool(self, request):
            seen.extend(request.roled)
            return ToolDecision("allow", ("spy",), "")

    broker, _, _ = make_broker(tmp_path, policy=SpyPolicy())
    (tmp_path / "ws" / "d").mkdir()
    (tmp_path / "ws" / "d" / "f.txt").write_text("x")
    outcome = await broker.call(ToolCall(name="fs.read", arguments={"path": "./d//f.txt"}))
    assert outcome.ok
    assert seen[0].role == "read-path" and seen[0].canonical == str(tmp_path / "ws" / "d" / "f.txt")


# budgets --------------------------------------------------------------------------------------------

async def test_circuit_breaker_trips_after_limit_identical_calls(tmp_path):
    clock = FakeClock()
    budgets = BudgetTracker(BudgetSettings(tool_calls_per_minute=None, identical_call_limit=20), clock)
    broker, audit, executed = make_broker(tmp_path, budgets=budgets)
    outcomes = []
    for _ in range(21):
        clock.now += 0.5
        outcomes.append(await broker.call(ToolCall(name="t.echo", arguments={"text": "same"})))
    assert all(o.ok for o in outcomes[:20])
    assert outcomes[20].refusal.rule == "budget.circuit_breaker" and len(executed) == 20
    assert "identical" in outcomes[20].refusal.reason
    assert audit.events[-1]["event_type"] == "tool_call" and audit.events[-1]["rule"] == "budget.circuit_breaker"
    assert audit.events[-1]["detail"]["status"] == "denied"
    warned = [o for o in outcomes if o.warnings]
    assert len(warned) == 1 and warned[0] is outcomes[15]  # 16 of 20 = 80%
    # different arguments still pass; the same ones pass again once the window has slid
    assert (await broker.call(ToolCall(name="t.echo", arguments={"text": "other"}))).ok
    clock.now += 61
    assert (await broker.call(ToolCall(name="t.echo", arguments={"text": "same"}))).ok


async def test_rate_and_total_budgets(tmp_path):
    clock = FakeClock()
    budgets = BudgetTracker(BudgetSettings(tool_calls_per_minute=5, total_tool_calls=8), clock)
    broker, audit, _ = make_broker(tmp_path, budgets=budgets)
    results = [await broker.call(ToolCall(name="t.echo", arguments={"text": str(i)})) for i in range(6)]
    assert [r.ok for r in results] == [True] * 5 + [False]
    assert results[5].refusal.rule == "budget.tool_calls_per_minute"
    assert any(e["rule"] == "budget.warning" and e["event_type"] == "policy_decision" for e in audit.events)
    clock.now += 60.5
    more = [await broker.call(ToolCall(name="t.echo", arguments={"text": f"n{i}"})) for i in range(4)]
    assert [r.ok for r in more] == [True, True, True, False]
    assert more[3].refusal.rule == "budget.total_tool_calls"
    assert audit.events[-1]["rule"] == "budget.total_tool_calls" and audit.events[-1]["decision"] == "deny"


def test_cells_per_minute_budget():
    clock = FakeClock()
    tracker = BudgetTracker(BudgetSettings(cells_per_minute=3), clock)
    verdicts = [tracker.check_cell() for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert verdicts[3].rule == "budget.cells_per_minute"
    assert verdicts[2].warnings  # 3 of 3 crosses 80%
    clock.now += 60.1
    assert tracker.check_cell().allowed


async def test_audit_records_match_the_audit_store_schema(tmp_path):
    """Every record the broker writes validates against the audit store's event models."""
    events = pytest.importorskip("ironcage_jupyter.audit.events")
    clock = FakeClock()
    budgets = BudgetTracker(BudgetSettings(tool_calls_per_minute=5), clock)
    broker, audit, _ = make_broker(tmp_path, budgets=budgets, settings=ToolSettings(allow=["t.*", "fs.read"]))
    for arguments in ({"text": "a"}, {"text": "boom"}, {"text": "b", "bad": 1}, {"text": "crash"}):
        await broker.call(ToolCall(name="t.echo", arguments=arguments, cell_id="cell-1"))
    await broker.call(ToolCall(name="fs.write", arguments={"path": "x", "content": "y"}))
    await broker.call_raw({"name": 5})
    for _ in range(3):
        await broker.call(ToolCall(name="fs.read", arguments={"path": "../x"}))
    assert len(audit.events) > 8
    for event in audit.events:
        events.validate_detail(event["event_type"], event["detail"])
        assert event["decision"] in (None, "allow", "deny", "escalate")


async def test_real_audit_store_decision_is_journaled_before_the_tool_runs_one_sync_per_call(tmp_path):
    """With the DuckDB AuditStore: the decision is on disk (journal, fdatasync) when the tool starts; the
    outcome is chained at once and rides with the next durable write (one sync per call, not two)."""
    from ironcage_jupyter.audit import AuditQuery, AuditStore

    store = AuditStore(tmp_path / "audit", "tools-bench")
    broker, _, _ = make_broker(tmp_path, audit=store)
    seen_while_running: list[int] = []

    async def probe(arguments, context):
        seen_while_running.append(store.pending_count)
        journal = store.journal_path.read_text()
        assert f'"gen_ai.tool.call.id":"{context.call.call_id}"' in journal  # the decision, on disk
        return {"ok": True}

    broker.register(ToolSchema(name="t.probe", arguments={}), probe)
    syncs = []
    real_journal = store._journal_locked

    def counting_journal():
        syncs.append(1)
        return real_journal()

    store._journal_locked = counting_journal  # type: ignore[method-assign]
    for i in range(3):
        outcome = await broker.call(ToolCall(name="t.probe", arguments={}, call_id=f"p{i}"))
        assert outcome.ok
    assert seen_while_running == [0, 0, 0]  # nothing undurable when each tool started
    assert len(syncs) == 3 and store.pending_count == 1  # one sync per call; the last outcome pending
    store.close()
    with AuditQuery(tmp_path / "audit") as query:
        rows = query.sql("SELECT tool_call_id, status, decision FROM tool_calls ORDER BY seq").rows
        decisions = query.sql("SELECT count(*) FROM decisions WHERE detail->>'subject' = 'tool' "
                              "AND decision = 'allow'").rows
    assert rows == [(f"p{i}", "ok", None) for i in range(3)] and decisions == [(3,)]
