"""Exceptions of the audit package, importable without DuckDB or pydantic (the wrapper's start path)."""

from __future__ import annotations


class AuditWriteError(RuntimeError):
    """The audit log could not be written. The kernel must stop running cells and tool calls."""
