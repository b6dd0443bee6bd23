"""What the broker needs from the other subsystems, as small Protocols, plus adapters.

The real implementations live elsewhere (policy engine, firewall, credentials broker, output firewall,
audit store). The broker only depends on these shapes so each side can change without the other, and
so that anything returned is normalised here (enums, lists or strings for rules) before it is trusted.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .models import RoledValue, ToolCall, ToolSchema


@dataclass
class ToolRequest:
    """What the policy sees: the validated call, its schema and the canonical value of every roled argument."""

    call: ToolCall
    schema: ToolSchema
    roled: list[RoledValue]
    findings: list[Any] = field(default_factory=list)
    screened: bool = False  # True when the broker's input firewall hook produced `findings`

    @property
    def name(self) -> str:
        return self.call.name

    def values(self, *roles: str) -> list[str]:
        return [v.canonical for v in self.roled if v.role in roles]


@dataclass(frozen=True)
class ToolDecision:
    effect: str  # "allow" | "deny" | "escalate"
    rules: tuple[str, ...]
    reason: str


def normalize_decision(decision: Any) -> ToolDecision:
    """Accept any object with effect / rules (or rule) / reason; anything unexpected becomes a deny."""
    effect = getattr(decision, "effect", None)
    effect = str(getattr(effect, "value", effect) or "").lower()
    rules_raw = getattr(decision, "rules", None)
    if rules_raw is None:
        rules_raw = getattr(decision, "rule", None)
    if isinstance(rules_raw, str):
        rules: tuple[str, ...] = (rules_raw,)
    elif rules_raw:
        rules = tuple(str(getattr(r, "id", r)) for r in rules_raw)
    else:
        rules = ()
    reason = str(getattr(decision, "reason", "") or "")
    if effect not in ("allow", "deny", "escalate"):
        return ToolDecision("deny", ("policy.malformed_decision",), f"policy returned an unknown effect {effect!r}")
    return ToolDecision(effect, rules, reason)


class ToolPolicy(Protocol):
    def decide_tool(self, request: ToolRequest) -> Any: ...


class ArgumentScreen(Protocol):
    def __call__(self, tool_name: str, arguments: dict[str, Any]) -> list[Any]: ...


class Escalator(Protocol):
    async def __call__(self, request: ToolRequest, decision: ToolDecision) -> bool: ...


@runtime_checkable
class CredentialSwapper(Protocol):
    """Brokered credentials: swap sentinels for real values only where the grant allows.

    `swap` returns the text with every permitted sentinel replaced and the secret names used; it raises
    (any exception) if the text carries a sentinel that may not go to this tool / host, or if `secure`
    is False (real values never travel in clear text). `tool` is the tool name, or "egress" for cells'
    HTTPS traffic through the proxy; `host` is None for tools without a destination (MCP).
    `hosts_needing_interception` lists the hosts whose HTTPS egress must be TLS-terminated to swap.
    `restore` is the reverse for everything going back toward the child (tool results, proxied
    responses): every real value becomes its sentinel again (str, bytes, or nested dicts / lists,
    keys included). `restore_hold_length` is how many trailing characters of a restored stream piece
    could begin a real value cut by the piece boundary (held back until the next piece).
    """

    def swap(self, text: str, *, tool: str, host: str | None, secure: bool = True) -> tuple[str, list[str]]: ...

    def hosts_needing_interception(self) -> Sequence[str]: ...

    def restore(self, data: Any) -> Any: ...

    def restore_hold_length(self, data: str | bytes) -> int: ...


class OutputScreen(Protocol):
    """Output firewall for tool results: returns the (possibly redacted) result and redaction records."""

    def __call__(self, tool_name: str, result: Any) -> tuple[Any, list[dict[str, Any]]]: ...


class AuditSink(Protocol):
    def record(
        self,
        event_type: str,
        *,
        decision: str | None = None,
        rule: str | None = None,
        reason: str | None = None,
        detail: dict[str, Any] | None = None,
        durable: bool = False,
    ) -> Any: ...


class MemoryAudit:
    """An in-process audit sink (CLI dry runs, tests of units that are not about the audit store)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def record(self, event_type: str, *, decision: str | None = None, rule: str | None = None,
               reason: str | None = None, detail: dict[str, Any] | None = None, durable: bool = False) -> dict[str, Any]:
        event = {"event_type": event_type, "decision": decision, "rule": rule, "reason": reason,
                 "detail": detail or {}, "durable": durable}
        self.events.append(event)
        return event


def _matches_any(name: str, patterns: Sequence[str]) -> str | None:
    for pattern in patterns:
        if fnmatch.fnmatchcase(name, pattern):
            return pattern
    return None


class SettingsToolPolicy:
    """A deny-overrides evaluator over the `tools` section, used when no policy engine is wired (CLI, tests).

    Default deny; `deny` beats `escalate` beats `allow`; url arguments must match the egress allowlist;
    MCP path arguments must lie inside the server's allowed paths; high-severity firewall findings deny.
    """

    def __init__(self, settings: Any, network_allowlist: Any = None) -> None:
        self.settings = settings
        self.network_allowlist = network_allowlist

    def decide_tool(self, request: ToolRequest) -> ToolDecision:
        from urllib.parse import urlsplit

        from .fs import is_beneath
        from .netguard import DestinationRefused, normalize_host

        name = request.name
        votes: list[ToolDecision] = []
        for finding in request.findings:
            severity = str(getattr(finding, "severity", "")).lower()
            if severity in ("high", "critical"):
                fid = getattr(finding, "id", "finding")
                votes.append(ToolDecision("deny", (f"firewall.{fid}",), str(getattr(finding, "message", fid))))
        if (p := _matches_any(name, self.settings.deny)) is not None:
            votes.append(ToolDecision("deny", (f"tools.deny[{p}]",), f"{name} is denied by the policy"))
        for value in request.roled:
            if value.role == "url":
                parts = urlsplit(value.canonical)
                try:
                    host = normalize_host(parts.hostname or "")
                except DestinationRefused as exc:
                    votes.append(ToolDecision("deny", (exc.rule,), exc.reason))
                    continue
                port = parts.port or (443 if parts.scheme == "https" else 80)
                if self.network_allowlist is None or self.network_allowlist.match(host, port) is None:
                    votes.append(ToolDecision("deny", ("network.not_allowed",), f"{host}:{port} is not in the egress allowlist"))
            elif request.schema.source == "mcp" and value.role in ("read-path", "write-path", "delete-path"):
                server = self.settings.mcp_servers.get(request.schema.server or "")
                writable = list(server.write_paths) if server else []
                readable = writable + (list(server.read_paths) if server else [])
                allowed = readable if value.role == "read-path" else writable
                import os

                if not any(is_beneath(value.canonical, os.path.realpath(root)) for root in allowed):
                    votes.append(ToolDecision(
                        "deny", ("mcp.path_outside_allowed",),
                        f"{value.argument}={value.canonical} is outside the paths allowed to {request.schema.server}",
                    ))
        if (p := _matches_any(name, self.settings.escalate)) is not None:
            votes.append(ToolDecision("escalate", (f"tools.escalate[{p}]",), f"{name} needs approval"))
        if (p := _matches_any(name, self.settings.allow)) is not None:
            votes.append(ToolDecision("allow", (f"tools.allow[{p}]",), f"{name} is allowed"))
        for effect in ("deny", "escalate", "allow"):
            chosen = [v for v in votes if v.effect == effect]
            if chosen:
                rules = tuple(r for v in chosen for r in v.rules)
                return ToolDecision(effect, rules, "; ".join(v.reason for v in chosen))
        return ToolDecision("deny", ("default.deny",), f"no rule allows {name}")
