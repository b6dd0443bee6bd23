"""Everything tools-related for one kernel session, assembled from the policy's sections.

The kernel creates one `ToolSession`, `await session.start(runtime_dir)` before the child starts,
passes `session.sandbox_binds()` and `session.child_environment()` to the sandbox launcher, routes the
comm target and magics to `handle_comm_request` / `run_magic`, and `await session.close()` at shutdown.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import audit_events
from .broker import ToolBroker
from .budgets import BudgetTracker
from .builtin import HttpTool, make_upstream_ssl_context, register_builtins
from .channel import ToolChannelServer, describe_tools, handle_comm_request, render_tools_table
from .fs import ConfinedFs
from .hooks import (
    ArgumentScreen,
    AuditSink,
    CredentialSwapper,
    Escalator,
    OutputScreen,
    SettingsToolPolicy,
    ToolPolicy,
)
from .mcp_proxy import McpProxy
from .models import ToolCall, ToolOutcome
from .netguard import HostAllowlist, NetworkGate, Resolver, system_resolver
from .settings import BudgetSettings, McpServerSettings, ToolSettings

TOOLS_SOCKET_NAME = "tools.sock"
EGRESS_SOCKET_NAME = "egress.sock"


@dataclass
class SandboxBind:
    source: str
    target: str
    writable: bool = False


class ToolSession:
    def __init__(
        self,
        settings: ToolSettings | None = None,
        budgets: BudgetSettings | None = None,
        *,
        audit: AuditSink,
        workspace: str | None = None,
        protected_paths: Sequence[str] = (),
        egress_allowlist: Sequence[str] = (),
        policy: ToolPolicy | None = None,
        decide_network: Callable[[str, int, str | None], object] | None = None,
        decide_server_network: Callable[[str, Sequence[str]], Callable[[str, int, str | None], object]] | None = None,
        screen_arguments: ArgumentScreen | None = None,
        escalate: Escalator | None = None,
        escalation_timeout_s: float = 300.0,
        credentials: CredentialSwapper | None = None,
        screen_output: OutputScreen | None = None,
        upstream_ca_file: str | None = None,
        resolver: Resolver = system_resolver,
        clock: Callable[[], float] | None = None,
        session_id: str = "session",
    ) -> None:
        self.settings = settings or ToolSettings()
        self.allowlist = HostAllowlist.from_strings(egress_allowlist)
        self.gate = NetworkGate(self.allowlist, decide_network, resolver)
        self.budget_tracker = BudgetTracker(budgets, clock) if clock else BudgetTracker(budgets)
        self.broker = ToolBroker(
            policy=policy or SettingsToolPolicy(self.settings, self.allowlist),
            audit=audit,
            budgets=self.budget_tracker,
            screen_arguments=screen_arguments,
            escalate=escalate,
            escalation_timeout_s=escalation_timeout_s,
            credentials=credentials,
            screen_output=screen_output,
            call_timeout_s=self.settings.call_timeout_s,
            max_result_bytes=self.settings.max_result_bytes,
        )
        self.upstream_ssl: ssl.SSLContext = make_upstream_ssl_context(upstream_ca_file)
        self.fs = ConfinedFs.from_settings(workspace, self.settings.fs_roots, self.settings.fs_read_only_roots,
                                           protected_paths, self.settings.max_result_bytes)
        self.http = HttpTool(self.gate, self.settings.http_max_response_bytes, self.upstream_ssl,
                             self.settings.call_timeout_s)
        register_builtins(self.broker, enabled=self.settings.builtins, fs=self.fs, http=self.http)
        self.resolver = resolver
        self.decide_server_network = decide_server_network
        self.mcp = McpProxy(self.settings.mcp_servers, egress_for=self._mcp_egress)
        self.audit = audit
        self.credentials = credentials
        self.screen_output = screen_output
        self.session_id = session_id
        self.channel = ToolChannelServer(self.broker)
        self.egress: Any = None  # EgressProxy once started
        self.ca: Any = None  # SessionCA once started
        self.socket_dir: str | None = None
        self.mcp_failures: dict[str, str] = {}

    async def start(self, socket_dir: str, *, egress: bool = True, private_dir: str | None = None) -> None:
        """Start the MCP servers, the tool channel and the egress proxy.

        `socket_dir` is bound into the sandbox (it holds only tools.sock and egress.sock and the CA
        bundle); `private_dir` (wrapper-only, default: a fresh temp dir) holds the CA key material.
        """
        os.makedirs(socket_dir, mode=0o700, exist_ok=True)
        os.chmod(socket_dir, 0o700)
        self.socket_dir = socket_dir
        self.mcp_failures = await self.mcp.start(self.broker)
        for server, error in self.mcp_failures.items():
            self.audit.record(audit_events.VIOLATION, rule="mcp.server_unavailable", reason=error,
                              detail=audit_events.server_failure_detail(server=server, message=error), durable=True)
        await self.channel.start(os.path.join(socket_dir, TOOLS_SOCKET_NAME))
        if egress:
            from .egress import EgressProxy  # imported on demand: cryptography is slow to import
            from .tls import SessionCA

            self.ca = SessionCA(private_dir, self.session_id)
            # The sandbox sees only the public bundle, copied next to the sockets.
            bundle = os.path.join(socket_dir, "ca-bundle.pem")
            with open(self.ca.bundle_file, "rb") as src, open(bundle, "wb") as dst:
                dst.write(src.read())
            self.ca.bundle_file = bundle
            ca_copy = os.path.join(socket_dir, "ironcage-session-ca.pem")
            with open(ca_copy, "wb") as dst:
                dst.write(self.ca.cert_pem)
            self.ca.ca_file = ca_copy
            self.egress = EgressProxy(self.gate, self.audit, ca=self.ca, credentials=self.credentials,
                                      intercept_hosts=self.settings.egress_intercept_hosts,
                                      upstream_ssl=self.upstream_ssl)
            await self.egress.start_unix(os.path.join(socket_dir, EGRESS_SOCKET_NAME))

    def _mcp_egress(self, server: str, settings: McpServerSettings) -> Any:
        """The egress proxy of one MCP server: its own allowlist (`allowed_hosts`), decided by the policy
        engine when one is wired (`decide_server_network`: the engine with the server's hosts as its
        allow rules) and always by the SSRF guard; every connection audited with the server's name.
        No TLS interception: credentials reach MCP servers only as tool arguments."""
        from .egress import EgressProxy

        decide = self.decide_server_network(server, settings.allowed_hosts) if self.decide_server_network else None
        gate = NetworkGate(HostAllowlist.from_strings(settings.allowed_hosts), decide, self.resolver)
        return EgressProxy(gate, self.audit, server=server, upstream_ssl=self.upstream_ssl)

    def sandbox_binds(self) -> list[SandboxBind]:
        """What the sandbox must bind: the socket directory, at the same path, read-write (sockets need it)."""
        assert self.socket_dir is not None, "start() first"
        return [SandboxBind(self.socket_dir, self.socket_dir, writable=True)]

    def child_environment(self, bridge_port: int = 3128) -> dict[str, str]:
        """Environment for the child kernel: the tool channel, and (if egress runs) the proxy + CA bundle.

        The in-sandbox bridge must listen on 127.0.0.1:`bridge_port` and forward to
        $IRONCAGE_EGRESS_SOCKET (see egress_bridge.py)."""
        assert self.socket_dir is not None, "start() first"
        env = {"IRONCAGE_TOOLS_SOCKET": os.path.join(self.socket_dir, TOOLS_SOCKET_NAME)}
        if self.egress is not None:
            env["IRONCAGE_EGRESS_SOCKET"] = os.path.join(self.socket_dir, EGRESS_SOCKET_NAME)
            env["IRONCAGE_EGRESS_PORT"] = str(bridge_port)
            env.update(self.egress.child_environment(bridge_port))
        return env

    def listen_in(self, directory: str, bridge_port: int = 3128) -> dict[str, str]:
        """Listen for the tool channel (and egress) inside `directory` too — a child's runtime dir,
        which the sandbox binds read-write — copy the CA bundle there, and return the child's
        environment pointing at them. Synchronous (the child's command wrapper is); loop thread only."""
        env = {"IRONCAGE_TOOLS_SOCKET": self.channel.listen_sync(os.path.join(directory, TOOLS_SOCKET_NAME))}
        if self.egress is not None and self.ca is not None:
            env["IRONCAGE_EGRESS_SOCKET"] = self.egress.listen_sync(os.path.join(directory, EGRESS_SOCKET_NAME))
            env["IRONCAGE_EGRESS_PORT"] = str(bridge_port)
            env.update(self.egress.child_environment(bridge_port))
            for name, data in (("ca-bundle.pem", None), ("ironcage-session-ca.pem", self.ca.cert_pem)):
                target = os.path.join(directory, name)
                if data is None:
                    with open(self.ca.bundle_file, "rb") as src:
                        data = src.read()
                with open(target, "wb") as dst:
                    dst.write(data)
            bundle = os.path.join(directory, "ca-bundle.pem")
            env.update({"SSL_CERT_FILE": bundle, "REQUESTS_CA_BUNDLE": bundle, "PIP_CERT": bundle,
                        "CURL_CA_BUNDLE": bundle,
                        "NODE_EXTRA_CA_CERTS": os.path.join(directory, "ironcage-session-ca.pem")})
        return env

    async def call(self, name: str, arguments: dict[str, Any] | None = None, origin: str = "magic",
                   cell_id: str | None = None) -> ToolOutcome:
        return await self.broker.call(ToolCall(name=name, arguments=arguments or {}, origin=origin,  # type: ignore[arg-type]
                                               cell_id=cell_id))

    async def handle_comm_request(self, data: Any) -> dict[str, Any]:
        return await handle_comm_request(self.broker, data)

    def tools_table(self) -> tuple[str, str]:
        return render_tools_table(describe_tools(self.broker))

    async def run_magic(self, line: str) -> dict[str, Any]:
        """`%ironcage tool NAME [--args JSON]` and `%ironcage tools` (line = text after `%ironcage`).

        Returns a display bundle {"text/plain": ..., "text/html"?: ...} and "ok"."""
        words = shlex.split(line)
        if words[:1] == ["tools"]:
            text, markup = self.tools_table()
            return {"ok": True, "data": {"text/plain": text, "text/html": markup}}
        parser = argparse.ArgumentParser(prog="%ironcage tool", add_help=False, exit_on_error=False)
        parser.add_argument("name")
        parser.add_argument("--args", default="{}")
        try:
            if words[:1] != ["tool"]:
                raise ValueError("expected `tools` or `tool NAME [--args JSON]`")
            parsed = parser.parse_args(words[1:])
            arguments = json.loads(parsed.args)
            if not isinstance(arguments, dict):
                raise ValueError("--args must be a JSON object")
        except (argparse.ArgumentError, ValueError, SystemExit) as exc:
            return {"ok": False, "data": {"text/plain": f"usage: %ironcage tool NAME [--args JSON] ({exc})"}}
        outcome = await self.call(parsed.name, arguments)
        if outcome.ok:
            text = json.dumps(outcome.result, indent=2, default=str, ensure_ascii=False)
        else:
            assert outcome.refusal is not None
            text = f"refused: {outcome.refusal.reason} (rule {outcome.refusal.rule}, stage {outcome.refusal.stage})"
        if outcome.warnings:
            text += "\n" + "\n".join(f"warning: {w}" for w in outcome.warnings)
        return {"ok": outcome.ok, "data": {"text/plain": text}, "outcome": outcome.to_reply()}

    async def close(self) -> None:
        await self.channel.close()
        if self.egress is not None:
            await self.egress.close()
        await self.mcp.stop()
        await self.http.aclose()
