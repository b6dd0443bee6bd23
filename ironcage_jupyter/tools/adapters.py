"""Adapters from the other subsystems' real APIs to the broker's small protocols.

- `EnginePolicy(engine)`: `ironcage_jupyter.policy.PolicyEngine` as the broker's ToolPolicy; it also
  tells the engine about every tool the broker offers (built-ins and MCP tools, with argument roles),
  since the engine denies tools and arguments it does not know.
- `engine_network_decider(engine)`: `PolicyEngine.decide_network` for the NetworkGate (egress proxy
  and http.request), asked once for the name and once per resolved address.
- `engine_server_network_decider(engine)`: the same for an MCP server's own egress proxy, with the
  server's `allowed_hosts` as the only allow rules.
- `BrokeredCredentials(broker)`: `ironcage_jupyter.credentials.CredentialBroker` as the
  CredentialSwapper of http.request, MCP tools and the egress proxy.
Imports of the other packages are deferred so this module loads without them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .hooks import ToolRequest
from .models import ToolSchema

SENTINEL_PREFIX = "ironcage-sentinel-"


class EnginePolicy:
    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def register_tools(self, schemas: Iterable[ToolSchema]) -> None:
        """Make every broker tool known to the engine (call after MCP servers have started)."""
        from ..policy import ToolSpec  # type: ignore[attr-defined]  # (policy package: issue 4)

        specs = {
            s.name: ToolSpec(s.name, {a.name: a.role for a in s.arguments.values()},
                             frozenset(a.name for a in s.arguments.values() if a.required))
            for s in schemas
        }
        context = self.engine.context
        tools = context.tools
        if isinstance(tools, dict):
            tools.update(specs)
        else:
            self.engine.context = dataclasses.replace(context, tools={**dict(tools), **specs})

    def decide_tool(self, request: ToolRequest) -> Any:
        # Findings: the broker's screen hook, when wired, already screened the arguments; without one,
        # None lets the engine screen them itself.
        findings = request.findings if request.screened else None
        return self.engine.decide_tool(request.name, request.call.arguments, findings=findings)


def engine_network_decider(engine: Any, scheme: str | None = None) -> Callable[..., Any]:
    def decide(host: str, port: int, resolved_ip: str | None = None) -> Any:
        return engine.decide_network(host, port, scheme, resolved_ip=resolved_ip)

    return decide


def engine_server_network_decider(engine: Any) -> Callable[[str, Sequence[str]], Callable[..., Any]]:
    """For an MCP server's own egress proxy: `factory(server, allowed_hosts)` returns a decider asking a
    policy engine derived from the session's: the server's hosts are its only allow rules (the policy's
    network allowlist is for cells, not for servers), while the policy's network deny and escalate rules
    and every invariant (IP literals in any spelling, loopback/private/link-local addresses refused
    unless named, localhost names) still apply; an escalation has no one to ask, so it refuses."""
    import re

    from .netguard import AllowEntry

    def for_server(server: str, hosts: Sequence[str]) -> Callable[..., Any]:
        # Derived from the session engine's current policy, and derived again when that engine is
        # reloaded (`%ironcage policy load`): a running server's proxy follows the policy in force.
        derived: list[Any] = [engine.policy, _derive(server, hosts, engine.policy)]  # [policy, its decider]

        def decide(host: str, port: int, resolved_ip: str | None = None) -> Any:
            policy = engine.policy
            if derived[0] is not policy:
                derived[:] = [policy, _derive(server, hosts, policy)]
            return derived[1](host, port, resolved_ip)

        return decide

    def _derive(server: str, hosts: Sequence[str], policy: Any) -> Callable[..., Any]:
        from ..policy.engine import PolicyEngine
        from ..policy.models import NetworkSettings, Rule

        kept = [r for r in policy.rules if r.subject == "network" and r.effect != "allow"]
        tag = re.sub(r"[^A-Za-z0-9_:-]", "_", server)[:40]
        rules = []
        for index, item in enumerate(hosts):
            entry = AllowEntry.parse(item)
            match: dict[str, Any] = (
                {"addresses": [str(entry.network)]} if entry.network is not None else {"domains": [entry.pattern]}
            )
            if entry.port is not None:
                match["ports"] = [entry.port]
            rules.append(Rule.model_validate({
                "id": f"mcp.{tag}.allowed_hosts.{index}", "subject": "network", "effect": "allow",
                "reason": f"{item} is allowed to MCP server {server}", "match": match,
            }))
        derived = policy.model_copy(update={
            "rules": [*kept, *rules],
            "network": NetworkSettings(allow_domains=[], allow_addresses=[], ports=list(policy.network.ports)),
        })
        return engine_network_decider(PolicyEngine(derived, engine.context))

    return for_server


class BrokeredCredentials:
    """CredentialSwapper over the credentials broker.

    The broker swaps a sentinel only where its grant allows (host, tool, TTL, rate) and leaves others
    in place; here a sentinel left in place refuses the call or request instead (fail closed: it was
    meant for somewhere else), and any sentinel in clear text (plain HTTP) is refused. Only the
    broker's public trusted-side API is used (`swap_sentinels`, `restore_sentinels`,
    `restore_hold_length`, `settings`): a `CredentialBroker` or the kernel's `CredentialSession`.
    """

    def __init__(self, broker: Any) -> None:
        self.broker = broker

    def hosts_needing_interception(self) -> Sequence[str]:
        hosts: list[str] = []
        for grant in self.broker.settings.grants.values():
            if grant.mode == "brokered":
                hosts.extend(grant.hosts)
        return hosts

    def swap(self, text: str, *, tool: str, host: str | None, secure: bool = True) -> tuple[str, list[str]]:
        if SENTINEL_PREFIX not in text:
            return text, []
        if not secure:
            raise PermissionError("a brokered credential may not be sent in clear text (use https)")
        # host=None: a tool with no destination (MCP): the broker checks the tool grant only. Toward a
        # host, egress checks the host grant; a named tool must be granted too.
        swapped, used = self.broker.swap_sentinels(text, host, None if tool == "egress" else tool)
        if SENTINEL_PREFIX in swapped:
            raise PermissionError(f"a credential sentinel may not be sent to {host or tool} (no grant allows it)")
        return swapped, list(used)

    def restore(self, data: Any) -> Any:
        """Real values -> sentinels in whatever goes back toward the child (keys of mappings too)."""
        if isinstance(data, str | bytes):
            return self.broker.restore_sentinels(data)[0]
        if isinstance(data, Mapping):
            return {self.restore(k) if isinstance(k, str) else k: self.restore(v) for k, v in data.items()}
        if isinstance(data, list | tuple):
            return [self.restore(item) for item in data]
        return data

    def restore_hold_length(self, data: str | bytes) -> int:
        return int(self.broker.restore_hold_length(data))


def output_screen_from(credential_session: Any) -> Callable[[str, Any], tuple[Any, list[dict[str, Any]]]]:
    """The output firewall of the credentials session (issue 6) as the broker's output screen: every
    string of the result is screened like a shell reply (known secret values in all their encodings,
    detectors); redactions come back as records (detector, name, count — never values)."""

    def screen(tool_name: str, result: Any) -> tuple[Any, list[dict[str, Any]]]:
        screened = credential_session.screen_reply("tool_reply", {"result": result})
        if "result" not in screened:
            raise RuntimeError(str(screened.get("evalue") or "the output firewall withheld the result"))
        records = getattr(credential_session.firewall, "last_reply_redactions", []) or []
        return screened["result"], [r.model_dump() if hasattr(r, "model_dump") else dict(r) for r in records]

    return screen
