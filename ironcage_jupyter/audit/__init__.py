"""Audit log: hash-chained, per-session DuckDB files, queried read-only across sessions."""

from .events import ALWAYS_DURABLE, AuditEvent, AuditEventError, EventType
from .magic import MagicOutput, run_audit_magic, run_sql_magic
from .paths import default_audit_dir
from .query import AuditQuery, AuditQueryError, QueryResult, ReadOnlyViolation
from .settings import AuditSettings
from .store import AuditStore, AuditWriteError

__all__ = [
    "ALWAYS_DURABLE",
    "AuditEvent",
    "AuditEventError",
    "AuditQuery",
    "AuditQueryError",
    "AuditSettings",
    "AuditStore",
    "AuditWriteError",
    "EventType",
    "MagicOutput",
    "QueryResult",
    "ReadOnlyViolation",
    "default_audit_dir",
    "run_audit_magic",
    "run_sql_magic",
]
