"""Kernel side of the JupyterLab extension: the ``ironcage.ui`` comm and human approvals."""

from .approval import Approver, SessionApprovals
from .bridge import (
    COMM_TARGET,
    PROTOCOL_VERSION,
    AuditQuery,
    EscalationRequest,
    EscalationResult,
    IsolationStatus,
    SessionCounts,
    UiBridge,
)

__all__ = [
    "COMM_TARGET",
    "PROTOCOL_VERSION",
    "Approver",
    "AuditQuery",
    "EscalationRequest",
    "EscalationResult",
    "IsolationStatus",
    "SessionApprovals",
    "SessionCounts",
    "UiBridge",
]
