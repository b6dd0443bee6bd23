"""Per-session runaway control: rate budgets, a total budget and a circuit breaker on identical calls.

Windows are sliding (timestamps in deques), the clock is injectable so tests need no sleeps, and a call
that is refused does not consume budget.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .settings import BudgetSettings

Clock = Callable[[], float]


@dataclass
class BudgetVerdict:
    allowed: bool
    rule: str | None = None
    reason: str | None = None
    warnings: list[str] = field(default_factory=list)


def call_fingerprint(name: str, arguments: dict[str, Any]) -> str:
    canonical = json.dumps([name, arguments], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class _Window:
    def __init__(self, length_s: float) -> None:
        self.length_s = length_s
        self.stamps: deque[float] = deque()

    def count(self, now: float) -> int:
        while self.stamps and self.stamps[0] <= now - self.length_s:
            self.stamps.popleft()
        return len(self.stamps)

    def add(self, now: float) -> None:
        self.stamps.append(now)


class BudgetTracker:
    """One per session. `check_tool_call` / `check_cell` decide and, when allowed, count the call."""

    def __init__(self, settings: BudgetSettings | None = None, clock: Clock = time.monotonic) -> None:
        self.settings = settings or BudgetSettings()
        self.clock = clock
        self.tool_calls_total = 0
        self._tool_minute = _Window(60.0)
        self._cell_minute = _Window(60.0)
        self._identical: dict[str, _Window] = {}
        self._warned: set[str] = set()

    def _warn(self, key: str, used: int, limit: int, what: str, warnings: list[str]) -> None:
        # Warn once each time a budget crosses the threshold; re-arm when usage drops back below it.
        threshold = self.settings.warn_fraction * limit
        if used >= threshold:
            if key not in self._warned:
                self._warned.add(key)
                warnings.append(f"{what}: {used} of {limit} used ({used / limit:.0%})")
        else:
            self._warned.discard(key)

    def check_tool_call(self, name: str, arguments: dict[str, Any]) -> BudgetVerdict:
        s = self.settings
        now = self.clock()
        if s.total_tool_calls is not None and self.tool_calls_total >= s.total_tool_calls:
            return BudgetVerdict(
                False, "budget.total_tool_calls",
                f"session tool-call budget exhausted ({s.total_tool_calls} calls)",
            )
        per_minute = self._tool_minute.count(now)
        if s.tool_calls_per_minute is not None and per_minute >= s.tool_calls_per_minute:
            return BudgetVerdict(
                False, "budget.tool_calls_per_minute",
                f"tool-call rate budget exhausted ({s.tool_calls_per_minute} per minute); retry later",
            )
        fingerprint = call_fingerprint(name, arguments)
        window = self._identical.get(fingerprint)
        if window is None:
            window = self._identical[fingerprint] = _Window(s.identical_call_window_s)
            if len(self._identical) > 10_000:
                self._prune(now)
        identical = window.count(now)
        if identical >= s.identical_call_limit:
            return BudgetVerdict(
                False, "budget.circuit_breaker",
                f"circuit breaker open: more than {s.identical_call_limit} identical calls to {name} "
                f"in {s.identical_call_window_s:g} s (runaway loop?)",
            )
        self.tool_calls_total += 1
        self._tool_minute.add(now)
        window.add(now)
        warnings: list[str] = []
        if s.total_tool_calls is not None:
            self._warn("total", self.tool_calls_total, s.total_tool_calls, "session tool-call budget", warnings)
        if s.tool_calls_per_minute is not None:
            self._warn("minute", per_minute + 1, s.tool_calls_per_minute, "tool calls per minute", warnings)
        self._warn(f"identical:{fingerprint}", identical + 1, s.identical_call_limit,
                   f"identical calls to {name}", warnings)
        return BudgetVerdict(True, warnings=warnings)

    def check_cell(self) -> BudgetVerdict:
        s = self.settings
        now = self.clock()
        if s.cells_per_minute is None:
            return BudgetVerdict(True)
        used = self._cell_minute.count(now)
        if used >= s.cells_per_minute:
            return BudgetVerdict(
                False, "budget.cells_per_minute",
                f"cell rate budget exhausted ({s.cells_per_minute} cells per minute); retry later",
            )
        self._cell_minute.add(now)
        warnings: list[str] = []
        self._warn("cells", used + 1, s.cells_per_minute, "cells per minute", warnings)
        return BudgetVerdict(True, warnings=warnings)

    def _prune(self, now: float) -> None:
        for key in [k for k, w in self._identical.items() if w.count(now) == 0]:
            del self._identical[key]

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        s = self.settings
        return {
            "tool_calls_total": self.tool_calls_total,
            "total_tool_calls_limit": s.total_tool_calls,
            "tool_calls_last_minute": self._tool_minute.count(now),
            "tool_calls_per_minute_limit": s.tool_calls_per_minute,
            "cells_last_minute": self._cell_minute.count(now),
            "cells_per_minute_limit": s.cells_per_minute,
        }
