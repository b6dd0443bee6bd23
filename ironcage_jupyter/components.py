"""The wrapper's components: policy and firewall, credentials and output firewall, audit, tools, UI.

Importing them takes over a second (pydantic models, bandit, detect-secrets, DuckDB, httpx, the MCP
SDK), so the kernel imports this module off its event loop after answering the frontend's first
kernel_info_request, while the child kernel starts. No cell runs before it has loaded.
"""

from __future__ import annotations

from .audit.integration import (
    AuditDecisionStage,
    AuditRecordStage,
    AuditSubmitStage,
    KernelAudit,
    register_magics,
)
from .credentials.session import CredentialSession
from .credentials.wiring import (
    CredentialStage,
    OutputFinishStage,
    make_session,
    prepare_child_launch,
    screen_child_buffers,
    screen_child_output,
)
from .policy.session import build_policy_stages
from .policy.session import status as policy_status
from .tools import kernel_glue
from .ui import UiBridge
from .ui.audit_feed import audit_panel_query
from .ui.integration import policy_ask, report_cell

register_magics()

__all__ = [
    "AuditDecisionStage",
    "AuditRecordStage",
    "AuditSubmitStage",
    "CredentialSession",
    "CredentialStage",
    "KernelAudit",
    "OutputFinishStage",
    "UiBridge",
    "audit_panel_query",
    "build_policy_stages",
    "kernel_glue",
    "make_session",
    "policy_ask",
    "policy_status",
    "prepare_child_launch",
    "report_cell",
    "screen_child_buffers",
    "screen_child_output",
]
