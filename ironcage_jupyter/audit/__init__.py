"""Audit log: hash-chained, per-session DuckDB files, queried read-only across sessions.

Exports resolve lazily (PEP 562) so that importing the kernel does not import DuckDB and pydantic
models before the first kernel_info reply.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ALWAYS_DURABLE": ".events",
    "AuditEvent": ".events",
    "AuditEventError": ".events",
    "EventType": ".events",
    "MagicOutput": ".magic",
    "run_audit_magic": ".magic",
    "run_sql_magic": ".magic",
    "default_audit_dir": ".paths",
    "AuditQuery": ".query",
    "AuditQueryError": ".query",
    "QueryResult": ".query",
    "ReadOnlyViolation": ".query",
    "AuditSettings": ".settings",
    "AuditStore": ".store",
    "AuditWriteError": ".errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


def __dir__() -> list[str]:
    return __all__
