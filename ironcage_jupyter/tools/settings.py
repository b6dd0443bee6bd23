"""Policy sections for tool calls and runaway budgets."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ArgumentRole = Literal["read-path", "write-path", "delete-path", "url", "identifier", "opaque"]

BUILTIN_TOOL_NAMES = ("fs.read", "fs.write", "fs.list", "http.request")


class McpServerSettings(BaseModel):
    """One MCP server reached over stdio, each in its own sandbox."""

    model_config = ConfigDict(extra="forbid")

    command: str = Field(description="Executable of the server (resolved on PATH when not absolute).")
    args: list[str] = Field(default_factory=list, description="Arguments of the server command.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for the server.")
    cwd: str | None = Field(default=None, description="Working directory inside the server's sandbox.")
    read_paths: list[str] = Field(
        default_factory=list,
        description="Host paths bound read-only into the server's sandbox (its code, its data).",
    )
    write_paths: list[str] = Field(
        default_factory=list, description="Host paths bound read-write into the server's sandbox."
    )
    tools: list[str] | None = Field(
        default=None, description="Server tools exposed as `server.tool`; None exposes every listed tool."
    )
    roles: dict[str, dict[str, ArgumentRole]] = Field(
        default_factory=dict,
        description="Argument roles per tool (tool -> argument -> role). Unnamed path-like arguments are "
        "treated as read-path, every other unnamed argument as opaque.",
    )
    timeout_s: float = Field(default=30.0, gt=0, description="Limit for start-up and for each call.")


class ToolSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fs_roots: list[str] = Field(default_factory=list, description="Extra roots fs.* tools may touch.")
    fs_read_only_roots: list[str] = Field(
        default_factory=list, description="Extra roots fs.read / fs.list may read but fs.write may not."
    )
    builtins: list[str] = Field(
        default_factory=lambda: list(BUILTIN_TOOL_NAMES),
        description="Built-in tools offered (fs.read, fs.write, fs.list, http.request).",
    )
    allow: list[str] = Field(
        default_factory=list, description="Tool names (fnmatch patterns) allowed without asking."
    )
    escalate: list[str] = Field(default_factory=list, description="Tool names that need a human's approval.")
    deny: list[str] = Field(default_factory=list, description="Tool names always refused (deny overrides).")
    mcp_servers: dict[str, McpServerSettings] = Field(
        default_factory=dict, description="MCP servers proxied by the wrapper; their tools appear as `name.tool`."
    )
    call_timeout_s: float = Field(default=30.0, gt=0, description="Wall-clock limit of one tool call.")
    max_result_bytes: int = Field(default=1_000_000, gt=0, description="Largest tool result passed back.")
    http_max_response_bytes: int = Field(
        default=5_000_000, gt=0, description="Largest HTTP response body http.request reads."
    )
    egress_intercept_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts whose HTTPS egress is always TLS-terminated by the proxy (besides hosts of "
        "brokered credentials, which always are).",
    )


class BudgetSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cells_per_minute: int | None = Field(default=None, ge=1, description="Cells a session may run per minute.")
    tool_calls_per_minute: int | None = Field(default=60, ge=1, description="Tool calls per minute.")
    total_tool_calls: int | None = Field(default=None, ge=1, description="Tool calls per session.")
    identical_call_limit: int = Field(
        default=20, ge=1, description="Circuit breaker: more identical calls than this in the window are refused."
    )
    identical_call_window_s: float = Field(default=60.0, gt=0, description="Window of the circuit breaker.")
    warn_fraction: float = Field(default=0.8, gt=0, le=1, description="Warn when a budget is this full.")
