"""Exceptions tools raise; the broker turns them into refusals or error results."""

from __future__ import annotations


class ToolRefusal(Exception):
    """The call must not run (or its result must not pass): reported with a rule and a reason."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(f"{rule}: {reason}")
        self.rule = rule
        self.reason = reason


class ToolExecutionError(Exception):
    """The tool ran and failed in an ordinary way (file not found, HTTP error): an error result."""
