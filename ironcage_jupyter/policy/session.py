"""What the kernel holds for one session: the active policy, its engine and session approvals, the
per-cell screen/decide stages, policy reload with the loosening check, and `%ironcage policy` /
`%%ironcage explain` output.

Wiring (kernel side):
    session = PolicySession.open(kernel.policy, PolicyContext.create(workspace, config_dir=..., audit_dir=...,
                                 policy_paths=[...], secrets_paths=[...], runtime_dir=...))
        -> raises PolicyError: refuse to start, show str(error) (file, line, field).
    stages: [FirewallStage(session), PolicyStage(session, ask=kernel.ask_frontend), ..., ExecuteStage]
    magics: await session.magic("policy", argstring, body, ask=...) / session.magic("explain", "", body)
"""

from __future__ import annotations

import asyncio
import shlex
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..firewall import ScreenResult, screen_cell
from .cli import read_cells
from .engine import Decision, PolicyEngine
from .escalation import Answer, format_question, parse_answer
from .loader import _BUILTIN_NAME, PolicyError, load_policy
from .models import Policy
from .report import explain, policy_show, policy_summary
from .subjects import PolicyContext

#: ask(prompt) -> the human's answer. The kernel passes its `ask_frontend`.
Ask = Callable[[str], Awaitable[str]]


@dataclass
class MagicOutput:
    text: str
    markdown: str | None = None
    error: str | None = None
    #: Records for the audit log (escalation questions/answers, policy changes).
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class EscalationRecord:
    question: str
    answer: str | None
    outcome: str  # "allow-once" | "allow-session" | "deny" | "deny-timeout" | "deny-no-stdin"

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question, "answer": self.answer, "outcome": self.outcome}


class PolicySession:
    #: Recent screen results kept (see `screen`).
    SCREEN_CACHE_SIZE = 256
    SCREEN_CACHE_MAX_CHARS = 20_000

    def __init__(self, policy: Policy, context: PolicyContext, source: str = "") -> None:
        self.context = context
        self.source = source
        self.engine = PolicyEngine(policy, context)
        #: Policy changes and failed loads, for the audit log (bounded; the audit stage drains them).
        self.events: list[dict[str, Any]] = []
        self._screens: OrderedDict[str, tuple[Any, ScreenResult]] = OrderedDict()

    def drain_events(self) -> list[dict[str, Any]]:
        events, self.events = self.events, []
        return events

    @classmethod
    def open(cls, name_or_path: str, context: PolicyContext) -> PolicySession:
        """Load the policy; a PolicyError means the kernel must not run cells (fail closed)."""
        return cls(load_policy(name_or_path), context, str(name_or_path))

    @property
    def policy(self) -> Policy:
        return self.engine.policy

    # -- cells
    def screen(self, code: str) -> ScreenResult:
        """The firewall's findings for the cell. Screening is a pure function of the exact source and
        the firewall settings, and notebooks re-run the same cells, so recent results are kept by
        source (cells up to `SCREEN_CACHE_MAX_CHARS`, entries valid only for the settings object
        they were computed with). Each caller gets its own copy of the lists."""
        settings = self.policy.firewall
        if len(code) > self.SCREEN_CACHE_MAX_CHARS:  # also keeps worker threads off the cache
            return screen_cell(code, settings)
        cached = self._screens.get(code)
        if cached is not None and cached[0] is settings:
            self._screens.move_to_end(code)
            result = cached[1]
        else:
            result = screen_cell(code, settings)
            self._screens[code] = (settings, result)
            if len(self._screens) > self.SCREEN_CACHE_SIZE:
                self._screens.popitem(last=False)
        return ScreenResult(raw=result.raw, transformed=result.transformed, findings=list(result.findings),
                            magics=list(result.magics), paths=list(result.paths), parsed=result.parsed)

    def decide(self, screen: ScreenResult) -> Decision:
        return self.engine.decide_cell(screen)

    async def escalate(self, decision: Decision, detail: str, ask: Ask | None, allow_stdin: bool) -> tuple[Decision, EscalationRecord]:
        """Ask the human about an `escalate` decision. No stdin, a timeout or anything but yes -> deny."""
        settings = self.policy.escalation
        question = format_question(decision, detail, session_allowed=settings.allow_session_approval,
                                   timeout_s=settings.timeout_s)
        if ask is None or not (allow_stdin or _answers_without_stdin(ask)):
            return _denied(decision, "no frontend can answer (allow_stdin is false)"), EscalationRecord(
                question.text, None, "deny-no-stdin")
        try:
            raw = await asyncio.wait_for(ask(question.text + "\n" + question.prompt), settings.timeout_s)
        except TimeoutError:
            return _denied(decision, f"no answer within {settings.timeout_s:g} s"), EscalationRecord(
                question.text, None, "deny-timeout")
        answer = parse_answer(raw, session_allowed=settings.allow_session_approval)
        if answer is Answer.NO:
            return _denied(decision, "the human answered no"), EscalationRecord(question.text, raw, "deny")
        if answer is Answer.SESSION:
            self.engine.approvals.approve(decision)
        approved = Decision("allow", [*decision.rules, "human.approval"], f"approved by a human: {decision.reason}",
                            decision.findings, True, "escalate", False, decision.subject, decision.summary,
                            decision.request_key, decision.elements)
        outcome = "allow-session" if answer is Answer.SESSION else "allow-once"
        return approved, EscalationRecord(question.text, raw, outcome)

    # -- policy reload
    def prepare_load(self, name_or_path: str) -> tuple[Policy, Decision]:
        """Load a new policy and decide the change (allow: tighter; escalate: looser, ask a human; deny:
        looser and the active policy is locked). Raises PolicyError; the active policy stays."""
        new_policy = load_policy(name_or_path)
        return new_policy, self.engine.decide_policy_change(new_policy)

    def commit(self, new_policy: Policy, source: str) -> None:
        # in place: the tool broker and the egress gate hold this engine. Session approvals are not
        # carried over: they were given under the old policy's rules.
        self.engine.reload(new_policy)
        self.source = source

    # -- magics
    async def magic(self, command: str, argstring: str, body: str | None = None, *, ask: Ask | None = None,
                    allow_stdin: bool = False) -> MagicOutput:
        """`%ironcage policy [show [--yaml] | load NAME|PATH | check PATH]` and `%%ironcage explain`."""
        out = await self._magic(command, argstring, body, ask=ask, allow_stdin=allow_stdin)
        self.events = [*self.events, *out.events][-200:]
        return out

    async def _magic(self, command: str, argstring: str, body: str | None, *, ask: Ask | None,
                     allow_stdin: bool) -> MagicOutput:
        if command == "explain":
            if body is None or not body.strip():
                return MagicOutput("", error="%%ironcage explain needs the cell to explain as its body")
            report = explain(body, self.engine)
            return MagicOutput(report.to_text(), report.to_markdown())
        if command != "policy":
            return MagicOutput("", error=f"unknown command {command!r}")
        try:
            words = shlex.split(argstring)
        except ValueError as exc:
            return MagicOutput("", error=f"cannot parse arguments: {exc}")
        if not words:
            return MagicOutput(policy_summary(self.policy), policy_summary(self.policy, markdown=True))
        sub, rest = words[0], words[1:]
        if sub == "show":
            as_yaml = "--yaml" in rest
            if as_yaml:
                text = policy_show(self.policy, yaml=True)
                return MagicOutput(text, f"```yaml\n{text}```")
            return MagicOutput(policy_show(self.policy), policy_show(self.policy, markdown=True))
        if sub == "load" and len(rest) == 1:
            return await self._load(rest[0], ask, allow_stdin)
        if sub == "check" and len(rest) == 1:
            return self._check(rest[0])
        return MagicOutput("", error="usage: %ironcage policy [show [--yaml] | load NAME|PATH | check PATH]")

    async def _load(self, target: str, ask: Ask | None, allow_stdin: bool) -> MagicOutput:
        path = target
        if not _BUILTIN_NAME.match(target) or target.endswith((".yaml", ".yml")):
            candidate = Path(target).expanduser()
            path = str(candidate if candidate.is_absolute() else Path(self.context.workspace) / candidate)
        try:
            new_policy, decision = self.prepare_load(path)
        except PolicyError as exc:
            return MagicOutput("", error=f"policy not loaded, {self.policy.name!r} stays active:\n{exc}",
                               events=[{"event": "policy_load_failed", "target": target, "error": str(exc)}])
        event: dict[str, Any] = {"event": "policy_change", "target": target, "from": self.policy.name,
                                 "to": new_policy.name, "decision": decision.effect, "reason": decision.reason}
        if decision.effect == "deny":
            return MagicOutput("", error=f"policy not loaded: {decision.reason}", events=[event])
        if decision.effect == "escalate":
            decision, record = await self.escalate(decision, f"load policy {new_policy.name!r} from {target}",
                                                   ask, allow_stdin)
            event["escalation"] = record.to_dict()
            if decision.effect != "allow":
                event["decision"] = "deny"
                return MagicOutput("", error=f"policy not loaded ({record.outcome}): {decision.reason}", events=[event])
            event["decision"] = "allow"
        self.commit(new_policy, target)
        return MagicOutput(f"Loaded policy {new_policy.name!r} from {target}.\n\n" + policy_summary(new_policy),
                           policy_summary(new_policy, markdown=True), events=[event])

    def _check(self, target: str) -> MagicOutput:
        path = Path(target).expanduser()
        if not path.is_absolute():
            path = Path(self.context.workspace) / path
        try:
            cells = read_cells(path.read_text(encoding="utf-8"), str(path))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            return MagicOutput("", error=f"cannot read {target}: {exc}")
        lines, rows = [], ["| cell | decision | rules | reason |", "|---|---|---|---|"]
        for index, code in enumerate(cells):
            d = self.engine.decide_cell(code)
            lines.append(f"cell {index}: {d.effect.upper()} [{', '.join(d.rules)}] {d.reason}")
            rows.append(f"| {index} | {d.effect} | {', '.join(d.rules)} | {d.reason.replace('|', '/')} |")
        head = f"{target}: {len(cells)} code cells under policy {self.policy.name!r} (nothing was run)"
        return MagicOutput(head + "\n" + "\n".join(lines), f"**{head}**\n\n" + "\n".join(rows))


def _answers_without_stdin(ask: Any) -> bool:
    """An ask that reaches a human by another way than input_request (the lab extension's dialog)."""
    probe = getattr(ask, "available_without_stdin", None)
    return bool(probe()) if callable(probe) else False


class KernelAsk:
    """How the wrapper asks its human: the lab extension's approval dialog when it is attached (this
    works for cells sent with allow_stdin=False, e.g. by an agent), else input_request."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel

    def available_without_stdin(self) -> bool:
        ui = getattr(self.kernel, "ui", None)
        return getattr(self.kernel, "ui_ask", None) is not None and bool(getattr(ui, "attached", False))

    async def __call__(self, prompt: str) -> str:
        ui_ask = getattr(self.kernel, "ui_ask", None)
        if ui_ask is not None:
            return str(await ui_ask(prompt))  # falls back to input_request when no dialog is attached
        return str(await self.kernel.ask_frontend(prompt))


def _denied(decision: Decision, why: str) -> Decision:
    return Decision("deny", decision.rules, f"{decision.reason} — {why}", decision.findings, True, "escalate",
                    decision.invariant, decision.subject, decision.summary, decision.request_key, decision.elements)


# ------------------------------------------------------------------ pipeline stages
class FirewallStage:
    """Screens the cell (sets `cell.screen`). Never blocks: the policy decides."""

    name = "screen"
    always = False

    def __init__(self, session: PolicySession) -> None:
        self.session = session

    #: Cells larger than this are screened in a worker thread so the kernel's event loop stays responsive
    #: (screening costs roughly 0.1 ms per line).
    thread_threshold = 20_000

    async def run(self, cell: Any) -> None:
        if len(cell.code) > self.thread_threshold:
            cell.screen = await asyncio.to_thread(self.session.screen, cell.code)
        else:
            cell.screen = self.session.screen(cell.code)


class PolicyStage:
    """Decides the screened cell (sets `cell.decision`), asks the human on `escalate`, blocks on deny.
    `cell.notes["escalation"]` keeps the question and answer for the audit record."""

    name = "decide"
    always = False

    def __init__(self, session: PolicySession, ask: Ask | None = None) -> None:
        self.session = session
        self.ask = ask

    async def run(self, cell: Any) -> None:
        from ..pipeline import Block

        screen = cell.screen if isinstance(cell.screen, ScreenResult) else self.session.screen(cell.code)
        decision = self.session.decide(screen)
        if decision.effect == "escalate":
            decision, record = await self.session.escalate(decision, cell.code, self.ask, bool(cell.allow_stdin))
            cell.notes["escalation"] = record.to_dict()
        cell.decision = decision
        if decision.effect != "allow":
            # the kernel prints rule and reason itself (Block.rule / Block.reason); details list the findings
            details = [f"line {f.line}: {f.id} [{f.category}/{f.severity}] {f.message}" for f in decision.findings[:20]]
            cell.block = Block(ename="PolicyDenied", evalue=f"Iron Cage policy {self.session.policy.name!r} "
                               f"denied this cell: {decision.reason}", rule=",".join(decision.rules),
                               reason=decision.reason, details=details)


class PolicyUnavailableStage:
    """Stands in for the firewall and policy stages when the policy did not load: every cell is refused
    (fail closed) with the loader's error, which names file, line and field."""

    name = "decide"
    always = False

    def __init__(self, error: str) -> None:
        self.error = error

    async def run(self, cell: Any) -> None:
        from ..pipeline import Block

        cell.block = Block(ename="PolicyError", evalue="the policy could not be loaded, so no cell runs",
                           rule="invariant.policy-unavailable", reason="fail closed on an invalid policy",
                           details=self.error.splitlines()[:20])


def kernel_policy_context(kernel: Any, tools: Any = ()) -> PolicyContext:
    """The PolicyContext for a wrapper kernel: its workspace, audit dir, secrets file, the policy file
    itself, Iron Cage's Jupyter config files, plus the defaults (Jupyter runtime dir, home secrets, ...)."""
    from jupyter_core.paths import jupyter_config_path

    from .loader import _BUILTIN_NAME

    policy_paths = []
    policy = str(getattr(kernel, "policy", "") or "")
    if policy and not (_BUILTIN_NAME.match(policy) and not policy.endswith((".yaml", ".yml"))):
        policy_paths.append(policy)
    config_files = [str(Path(d) / f"jupyter_ironcage_config.{ext}") for d in jupyter_config_path() for ext in ("py", "json")]
    secrets = [s for s in [getattr(kernel, "secrets_file", "")] if s]
    return PolicyContext.create(
        getattr(kernel, "workspace", "") or ".",
        audit_dir=getattr(kernel, "audit_dir", None) or None,
        policy_paths=policy_paths,
        secrets_paths=secrets,
        extra_protected=config_files,
        tools=tools,
    )


def build_policy_stages(kernel: Any) -> tuple[PolicySession | None, str | None, list[Any]]:
    """(session, error, [screen stage, decide stage]) for IronCageKernel._build_stages. Never raises:
    a policy that does not load gives a stage refusing every cell."""
    try:
        session = PolicySession.open(str(getattr(kernel, "policy", "") or "default"), kernel_policy_context(kernel))
    except Exception as exc:  # noqa: BLE001 - any failure to load a policy fails closed
        error = str(exc) if isinstance(exc, PolicyError) else f"{type(exc).__name__}: {exc}"
        return None, error, [PolicyUnavailableStage(error)]
    return session, None, [FirewallStage(session), PolicyStage(session, ask=KernelAsk(kernel))]


def status(session: PolicySession | None, error: str | None) -> dict[str, Any]:
    """Policy part of `%ironcage status`."""
    if session is None:
        return {"policy": None, "policy_error": error}
    policy = session.policy
    return {"policy": policy.name, "policy_source": session.source, "policy_mode": policy.mode,
            "policy_locked": policy.locked, "policy_rules": len(policy.rules),
            "session_approvals": len(session.engine.approvals)}
