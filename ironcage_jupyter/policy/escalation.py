"""Asking a human: the question text and the answer parser (default answer: no).

The kernel sends `question.prompt` through the frontend's `input_request`; with no stdin (nbclient, many
agents), or after `timeout_s`, the answer is "no". A kernel cannot tell a human from an agent that holds
the same Jupyter credentials: an answer only proves that someone with access to the frontend typed it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .engine import Decision

MAX_SUMMARY = 600


class Answer(enum.Enum):
    NO = "no"
    ONCE = "once"
    SESSION = "session"

    @property
    def allows(self) -> bool:
        return self is not Answer.NO


@dataclass(frozen=True)
class EscalationQuestion:
    text: str  # full explanation (printed to the cell's output before asking)
    prompt: str  # the one-line prompt for input_request
    session_allowed: bool

    def to_dict(self) -> dict[str, object]:
        return {"text": self.text, "prompt": self.prompt, "session_allowed": self.session_allowed}


def format_question(decision: Decision, detail: str | None = None, *, session_allowed: bool = True,
                    timeout_s: float | None = None) -> EscalationQuestion:
    """Question shown to the human for an `escalate` decision: what is asked, which rule, why."""
    subject = {"cell": "Run this cell", "tool": "Allow this tool call", "network": "Allow this connection",
               "credential": "Hand out this credential", "policy": "Load this policy"}.get(decision.subject,
                                                                                       "Allow this")
    body = (detail if detail is not None else decision.summary) or ""
    if len(body) > MAX_SUMMARY:
        body = body[:MAX_SUMMARY] + f"\n... ({len(body) - MAX_SUMMARY} more characters)"
    lines = [f"Iron Cage asks: {subject}?", ""]
    if body:
        lines += ["    " + line for line in body.splitlines()] + [""]
    lines.append(f"Rule: {', '.join(decision.rules)}")
    lines.append(f"Reason: {decision.reason}")
    escalated = [e for e in decision.elements if e.effect == "escalate"]
    for element in escalated[:5]:
        lines.append(f"  - {element.element}: {element.reason}")
    if decision.findings:
        lines.append("Findings:")
        for finding in decision.findings[:8]:
            lines.append(f"  - line {finding.line}: {finding.id} [{finding.category}/{finding.severity}] "
                         f"{finding.message}")
    if timeout_s is not None:
        lines.append(f"No answer within {timeout_s:g} s means no.")
    choices = "[y]es once / [s]ession (same request, this session) / [N]o" if session_allowed else "[y]es once / [N]o"
    return EscalationQuestion("\n".join(lines), f"{subject}? {choices}: ", session_allowed)


def parse_answer(text: str | None, *, session_allowed: bool = True) -> Answer:
    """Anything but an explicit yes is no. `s`/`session` only when session approvals are allowed."""
    if text is None:
        return Answer.NO
    word = text.strip().lower()
    if word in ("y", "yes", "once", "allow"):
        return Answer.ONCE
    if word in ("s", "session", "always") and session_allowed:
        return Answer.SESSION
    return Answer.NO
