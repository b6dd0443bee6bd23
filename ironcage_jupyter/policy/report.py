"""Text and markdown for `%ironcage policy`, `%ironcage policy show` and `%%ironcage explain`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import yaml as _yaml

from ..firewall import ScreenResult, screen_cell
from .engine import Decision, PolicyEngine
from .models import Policy


def policy_summary(policy: Policy, markdown: bool = False) -> str:
    effects = Counter(r.effect for r in policy.rules)
    subjects = Counter(r.subject for r in policy.rules)
    rows = [
        ("Policy", policy.name + (" (locked)" if policy.locked else "")),
        ("Mode", policy.mode + (" (records, blocks only invariants)" if policy.mode == "observe" else "")),
        ("Rules", f"{len(policy.rules)}: " + ", ".join(f"{n} {e}" for e, n in sorted(effects.items()))),
        ("Subjects", ", ".join(f"{s} {n}" for s, n in sorted(subjects.items())) or "none"),
        ("Network allowlist", ", ".join(policy.network.allow_domains + policy.network.allow_addresses) or "none"),
        ("Escalation", f"timeout {policy.escalation.timeout_s:g} s, session approval "
                       f"{'on' if policy.escalation.allow_session_approval else 'off'}"),
        ("Isolation", ", ".join(policy.isolation.required_layers) + (" (UNSAFE)" if policy.isolation.unsafe else "")),
        ("Limits", f"cell {policy.limits.cell_timeout_s:g} s, memory {policy.limits.memory_mb} MB, "
                   f"{policy.limits.max_processes} processes"),
        ("Credentials", ", ".join(sorted(policy.credentials.grants)) or "none granted"),
        ("Firewall", "bandit " + ("on" if policy.firewall.bandit else "off")
         + (f", disabled checks: {', '.join(policy.firewall.disabled_checks)}" if policy.firewall.disabled_checks else "")),
    ]
    if markdown:
        out = [f"**Iron Cage policy `{policy.name}`**", ""]
        if policy.description:
            out += [policy.description.strip(), ""]
        out += ["| | |", "|---|---|"] + [f"| {k} | {v.replace('|', '/')} |" for k, v in rows]
        return "\n".join(out)
    width = max(len(k) for k, _ in rows)
    out = [f"{k.ljust(width)}  {v}" for k, v in rows]
    if policy.description:
        out.insert(1, f"{''.ljust(width)}  {policy.description.strip()}")
    return "\n".join(out)


def policy_show(policy: Policy, yaml: bool = False, markdown: bool = False) -> str:
    """The full effective policy (after `extends`): YAML (`yaml=True`), or a rule table (text or markdown)."""
    if yaml:
        return _yaml.safe_dump(policy.model_dump(mode="json", exclude={"extends"}), sort_keys=False, width=110)
    if markdown:
        lines = [policy_summary(policy, markdown=True), "", "| id | subject | effect | match | reason |",
                 "|---|---|---|---|---|"]
        for rule in sorted(policy.rules, key=lambda r: (r.subject, r.id)):
            match = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in rule.match.model_dump().items() if v)
            lines.append(f"| `{rule.id}` | {rule.subject} | **{rule.effect}** | {match.replace('|', '/') or 'any'} "
                         f"| {rule.reason.replace('|', '/')} |")
        return "\n".join(lines)
    lines = [policy_summary(policy), "", "Rules:"]
    for rule in sorted(policy.rules, key=lambda r: (r.subject, r.id)):
        match = "; ".join(f"{k}={','.join(map(str, v))}" for k, v in rule.match.model_dump().items() if v)
        lines.append(f"  {rule.effect:8} {rule.subject:10} {rule.id}: {match or 'any'}")
    return "\n".join(lines)


@dataclass
class ExplainReport:
    screen: ScreenResult
    decision: Decision
    policy_name: str = ""
    notes: list[str] = field(default_factory=list)

    def to_text(self) -> str:
        d = self.decision
        head = f"Decision: {d.effect.upper()}"
        if not d.enforced:
            head += f" (observe mode; enforced it would be {d.would_have})"
        lines = [head + f"   policy: {self.policy_name}", f"Rules: {', '.join(d.rules)}", f"Reason: {d.reason}", ""]
        lines.append("Elements:")
        for e in d.elements:
            lines.append(f"  {e.effect:8} {e.element}  <- {', '.join(e.rules)}" + ("  [invariant]" if e.invariant else ""))
        lines.append("")
        lines.append(f"Findings ({len(self.screen.findings)}):" if self.screen.findings else "Findings: none")
        for f in self.screen.findings:
            lines.append(f"  line {f.line}: {f.id} [{f.category}/{f.severity}] {f.message}")
        if self.screen.magics:
            lines.append("Magics and shell escapes: " + ", ".join(m.display for m in self.screen.magics))
        if self.screen.transformed.strip() != self.screen.raw.strip():
            lines += ["", "After IPython's input transformation:"] + ["    " + ln for ln in self.screen.transformed.splitlines()[:40]]
        lines += ["", "Static screening is advisory; the sandbox is the boundary. Nothing was run."]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        d = self.decision
        icon = {"allow": "✅", "escalate": "❓", "deny": "⛔"}[d.effect]
        lines = [f"### {icon} {d.effect.upper()}" + ("" if d.enforced else f" (observe mode: would be **{d.would_have}**)"),
                 f"Policy `{self.policy_name}` · rules {', '.join(f'`{r}`' for r in d.rules)}", "", f"> {d.reason}", "",
                 "| effect | element | rules |", "|---|---|---|"]
        for e in d.elements:
            lines.append(f"| {e.effect} | {e.element.replace('|', '/')} | {', '.join(e.rules)} |")
        if self.screen.findings:
            lines += ["", "| line | id | category | severity | message |", "|---|---|---|---|---|"]
            for f in self.screen.findings:
                lines.append(f"| {f.line} | `{f.id}` | {f.category} | {f.severity} | {f.message.replace('|', '/')} |")
        lines += ["", "_Static screening is advisory; the sandbox is the boundary. Nothing was run._"]
        return "\n".join(lines)


def explain(code: str, engine: PolicyEngine) -> ExplainReport:
    """Screen and decide `code` without running it (`%%ironcage explain`)."""
    screen = screen_cell(code, engine.policy.firewall)
    return ExplainReport(screen, engine.decide_cell(screen), engine.policy.name)
