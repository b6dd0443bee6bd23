"""Policy sections for tool calls and runaway budgets."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ToolSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fs_roots: list[str] = Field(default_factory=list, description="Extra roots fs.* tools may touch.")


class BudgetSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cells_per_minute: int | None = None
    tool_calls_per_minute: int | None = 60
    total_tool_calls: int | None = None
    identical_call_limit: int = 20
    identical_call_window_s: float = 60.0
    warn_fraction: float = 0.8
