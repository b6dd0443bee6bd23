"""Policy sections for tool calls and runaway budgets."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts this server may reach (`example.com`, `*.example.com`, `api.example.com:443`, "
        "`127.0.0.1:8080`, `10.0.0.0/8`; no port means any port), through an egress proxy of its own "
        "that decides and audits every connection. Empty: the server has no network at all.",
    )

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        from .netguard import AllowEntry

        for item in value:
            try:
                entry = AllowEntry.parse(item)
            except ValueError:
                raise ValueError(f"invalid host entry {item!r} (bad port)") from None
            if not entry.pattern or any(c in entry.pattern for c in "/@ \t") and entry.network is None:
                raise ValueError(f"invalid host entry {item!r}")
            if entry.port is not None and not 0 < entry.port < 65536:
                raise ValueError(f"invalid port in host entry {item!r}")
        return value


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
