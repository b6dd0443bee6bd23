"""Human approval of escalated requests: the lab extension's dialog when it is attached, the
frontend's plain ``input_request`` prompt otherwise, and a deny when nobody can answer.

Session approvals are remembered here by canonical request text; they only ever turn an escalation
into an allow for the identical canonical request, never a deny into anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from .bridge import EscalationRequest, EscalationResult, UiBridge

#: ask(prompt) -> the user's typed line; the kernel's ``ask_frontend``.
AskFn = Callable[[str], Awaitable[str]]

STDIN_ANSWERS = {
    "o": "once", "once": "once", "y": "once", "yes": "once",
    "s": "session", "session": "session",
    "d": "deny", "deny": "deny", "n": "deny", "no": "deny",
}


def parse_stdin_answer(text: str) -> str:
    """Anything unrecognised is a deny (fail closed)."""
    return STDIN_ANSWERS.get(text.strip().lower(), "deny")


def stdin_prompt(request: EscalationRequest, allow_session: bool) -> str:
    choices = "[o]nce/[s]ession/[d]eny" if allow_session else "[o]nce/[d]eny"
    rule = f" (rule {', '.join(request.rules)})" if request.rules else ""
    reason = f": {request.reason}" if request.reason else ""
    return (
        f"Iron Cage: approve {request.summary or request.canonical}?{rule}{reason}\n"
        f"  request: {request.canonical}\n  {choices}: "
    )


class SessionApprovals:
    """Canonical requests approved "for the session" (forgotten at kernel restart)."""

    def __init__(self) -> None:
        self._approved: set[str] = set()

    def __contains__(self, canonical: object) -> bool:
        return canonical in self._approved

    def add(self, canonical: str) -> None:
        self._approved.add(canonical)

    def clear(self) -> None:
        self._approved.clear()

    def __len__(self) -> int:
        return len(self._approved)


class Approver:
    """Obtain a human answer for an escalation, failing closed."""

    def __init__(self, bridge: UiBridge, ask_stdin: AskFn | None = None) -> None:
        self.bridge = bridge
        self.ask_stdin = ask_stdin
        self.session = SessionApprovals()

    async def approve(
        self,
        request: EscalationRequest,
        *,
        allow_stdin: bool,
        timeout_s: float,
        allow_session: bool,
        parent: dict[str, Any] | None = None,
    ) -> EscalationResult:
        if allow_session and request.canonical in self.session:
            return EscalationResult(answer="session", by="session")
        if self.bridge.attached:
            result = await self.bridge.escalate(
                request, timeout_s=timeout_s, allow_session=allow_session, parent=parent
            )
        elif allow_stdin and self.ask_stdin is not None:
            self.bridge.counts.escalated += 1
            try:
                text = await asyncio.wait_for(self.ask_stdin(stdin_prompt(request, allow_session)), timeout_s)
            except TimeoutError:
                return EscalationResult(answer="deny", by="timeout")
            answer = parse_stdin_answer(text)
            if answer == "session" and not allow_session:
                answer = "once"
            result = EscalationResult(answer=answer, by="stdin")  # type: ignore[arg-type]
        else:
            self.bridge.counts.escalated += 1
            return EscalationResult(answer="deny", by="no_approver")
        if result.answer == "session":
            self.session.add(request.canonical)
        return result
