"""Policy section for the audit log."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .events import EventType

# Retention classes: an event type, or "default" for every type not named.
_RETENTION_KEYS = {"default", *(t.value for t in EventType)}


class AuditSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    retention_days: dict[str, int] = Field(
        default_factory=lambda: {
            "default": 90,
            "tool_call": 90,
            "credential_access": 365,
            "violation": 365,
            "policy_change": 365,
            "isolation": 365,
        },
        description=(
            "Days to keep each event class (an event type name, or `default`); applied by "
            "`ironcage-jupyter audit purge`. Purged events leave a content-free tombstone so the hash "
            "chain of what stays still verifies."
        ),
    )
    batch_size: int = Field(
        default=10_000,
        gt=0,
        description="High-volume events buffered before a forced flush (they are also flushed at cell end).",
    )
    query_row_limit: int = Field(
        default=50, gt=0, description="Rows displayed by `%%ironcage sql` unless --limit says otherwise."
    )
    query_timeout_s: float = Field(default=30.0, gt=0, description="A query running longer is interrupted.")
    query_memory_limit: str = Field(default="1GB", description="DuckDB memory_limit of query connections.")
    transfer_max_rows: int = Field(
        default=100_000, gt=0, description="Most rows `%%ironcage sql -o NAME` hands to the notebook."
    )

    @field_validator("retention_days")
    @classmethod
    def _known_classes(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(value) - _RETENTION_KEYS)
        if unknown:
            raise ValueError(
                f"unknown retention class(es) {unknown}; use `default` or one of {sorted(_RETENTION_KEYS - {'default'})}"
            )
        negative = sorted(k for k, v in value.items() if v < 0)
        if negative:
            raise ValueError(f"retention must be >= 0 days: {negative}")
        return value

    def retention_for(self, event_type: str) -> int:
        return self.retention_days.get(event_type, self.retention_days.get("default", 90))
