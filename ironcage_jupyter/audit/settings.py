"""Policy section for the audit log."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AuditSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    retention_days: dict[str, int] = Field(
        default_factory=lambda: {
            "default": 90,
            "tool_call": 90,
            "credential_access": 365,
            "violation": 365,
        },
        description="Days to keep each event class; applied by `ironcage-jupyter audit purge`.",
    )
