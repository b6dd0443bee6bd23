"""Glue between the kernel's pipeline and the ``ironcage.ui`` bridge, so wiring is two calls:

* :func:`policy_ask` builds the ``ask(prompt) -> answer`` callable that the policy's escalation step
  (``PolicyStage(session, ask=...)``) awaits: with the lab extension attached it opens the approval
  dialog; without it it falls back to the kernel's ``ask_frontend`` (``input_request``).
* :func:`report_cell` sends a finished cell's ``cell_event`` and the new ``status``.

Both only read what the pipeline recorded (``cell.decision``, ``cell.block``, ``cell.notes``,
``cell.redactions``); they decide nothing.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from .bridge import EscalationRequest, UiBridge

Ask = Callable[[str], Awaitable[str]]

#: The policy's EscalationRecord.outcome -> cell_event.outcome
ESCALATION_OUTCOMES = {
    "allow-once": "approved_once",
    "allow-session": "approved_session",
    "deny": "denied",
    "deny-timeout": "timeout",
    "deny-no-stdin": "denied",
}

#: Pseudo-rules the policy appends to an approved decision; the marker shows the outcome instead.
APPROVAL_MARKERS = {"human-approval", "human.approval"}

#: Dialog answer -> a word the policy's parse_answer() understands (anything else is "no").
_ANSWER_WORDS = {"once": "once", "session": "session", "deny": "no"}

_RULE_RE = re.compile(r"^Rule: (.*)$", re.MULTILINE)
_REASON_RE = re.compile(r"^Reason: (.*)$", re.MULTILINE)
_TIMEOUT_RE = re.compile(r"No answer within ([0-9.]+) s")


def request_from_question(question: str, *, cell_id: str | None, msg_id: str | None) -> EscalationRequest:
    """Structure the policy's question text (policy/escalation.py ``format_question``) for the dialog."""
    lines = question.splitlines()
    headline = lines[0].removeprefix("Iron Cage asks: ").strip() if lines else "Approve this request?"
    body = [line[4:] for line in lines[1:] if line.startswith("    ")]
    rules_match = _RULE_RE.search(question)
    reason_match = _REASON_RE.search(question)
    kind = "cell"
    for word, name in (("tool call", "tool"), ("connection", "network"), ("credential", "credential"),
                       ("policy", "policy")):
        if word in headline.lower():
            kind = name
    return EscalationRequest(
        kind=kind,
        summary=headline,
        canonical="\n".join(body).strip() or headline,
        rules=[r.strip() for r in rules_match.group(1).split(",") if r.strip()] if rules_match else [],
        reason=reason_match.group(1).strip() if reason_match else "",
        cell_id=cell_id,
        msg_id=msg_id,
    )


def policy_ask(
    bridge: UiBridge,
    fallback: Ask | None,
    current: Callable[[], tuple[str | None, dict[str, Any] | None]],
    *,
    default_timeout_s: float = 300.0,
) -> Ask:
    """``ask`` for the policy's escalations. ``current()`` returns (cell_id, execute_request parent)."""

    async def ask(question: str) -> str:
        if not bridge.attached:
            if fallback is None:
                return "no"
            bridge.counts.escalated += 1
            return await fallback(question)
        cell_id, parent = current()
        msg_id = (parent or {}).get("header", {}).get("msg_id")
        timeout = _TIMEOUT_RE.search(question)
        result = await bridge.escalate(
            request_from_question(question, cell_id=cell_id, msg_id=msg_id),
            timeout_s=float(timeout.group(1)) if timeout else default_timeout_s,
            allow_session="[s]ession" in question,
            parent=parent,
        )
        return _ANSWER_WORDS[result.answer]

    return ask


def _findings(cell: Any) -> list[dict[str, Any]]:
    decision = getattr(cell, "decision", None)
    findings = list(getattr(decision, "findings", None) or [])
    if not findings and getattr(cell, "screen", None) is not None:
        findings = list(getattr(cell.screen, "findings", None) or [])
    return [
        {"id": getattr(f, "id", ""), "severity": str(getattr(f, "severity", "")),
         "line": getattr(f, "line", None), "message": getattr(f, "message", "")}
        for f in findings[:20]
    ]


def report_cell(bridge: UiBridge, cell: Any, parent: dict[str, Any] | None) -> dict[str, Any]:
    """Send the ``cell_event`` for a finished :class:`~ironcage_jupyter.pipeline.CellRequest`."""
    decision = getattr(cell, "decision", None)
    block = getattr(cell, "block", None)
    escalation = (getattr(cell, "notes", None) or {}).get("escalation")
    rules: list[str] = list(getattr(decision, "rules", None) or [])
    reason: str = getattr(decision, "reason", "") or ""
    outcome: str | None = None
    if isinstance(escalation, dict):
        verdict = "escalate"
        outcome = ESCALATION_OUTCOMES.get(str(escalation.get("outcome")), "denied")
    elif block is not None or getattr(decision, "effect", "allow") == "deny":
        verdict = "deny"
    else:
        verdict = "allow"
    if block is not None:
        if block.rule and block.rule not in rules:
            rules.append(block.rule)
        reason = reason if verdict == "escalate" and reason else (block.reason or block.evalue or reason)
    return bridge.cell_finished(
        cell_id=getattr(cell, "cell_id", None),
        msg_id=(parent or {}).get("header", {}).get("msg_id"),
        decision=verdict,
        outcome=outcome,
        redacted=int(getattr(cell, "redactions", 0) or 0),
        rules=[r for r in rules if r not in APPROVAL_MARKERS],
        reason=reason,
        findings=_findings(cell),
        parent=parent,
    )
