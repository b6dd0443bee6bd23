"""Each MCP server's own network allowlist: a real FastMCP server in its own sandbox fetches from real
HTTP servers on 127.0.0.1 through an egress proxy of its own. The allowed host answers, another is
refused (and the refusal is audited with the server's name in the real DuckDB audit store, decided by
the policy engine), and a server without allowed hosts has no network at all."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import pytest
import pytest_asyncio
from tools_support import MCP_DIR, start_echo_server

from ironcage_jupyter.tools import kernel_glue
from ironcage_jupyter.tools.models import ToolCall

pytestmark = pytest.mark.asyncio(loop_scope="module")

POLICY = """
name: mcp-network-test
rules:
  - id: allow-test-servers
    subject: tool
    effect: allow
    match: {tools: ["net.*", "offline.*"]}
  - id: no-metadata
    subject: network
    effect: deny
    match: {addresses: ["169.254.0.0/16"]}
tools:
  mcp_servers:
    net:
      command: {python}
      args: [{server}]
      read_paths: [{mcp_dir}]
      tools: [fetch, whoami]
      # `url` is opaque on purpose: the server's own proxy is the boundary under test.
      roles: {fetch: {url: opaque}}
      allowed_hosts: ["127.0.0.1:{allowed}", "169.254.169.254"]
    offline:
      command: {python}
      args: [{server}]
      read_paths: [{mcp_dir}]
      tools: [fetch]
      roles: {fetch: {url: opaque}}
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def setup(tmp_path_factory):
    import ironcage_jupyter.policy as policy_pkg
    from ironcage_jupyter.audit import AuditStore

    base = tmp_path_factory.mktemp("mcpnet")
    allowed, other = start_echo_server("allowed"), start_echo_server("other")
    text = (POLICY.replace("{python}", sys.executable).replace("{server}", os.path.join(MCP_DIR, "fastmcp_server.py"))
            .replace("{mcp_dir}", MCP_DIR).replace("{allowed}", str(allowed.port)))
    policy = policy_pkg.load_policy_text(text)
    engine = policy_pkg.PolicyEngine(policy, policy_pkg.PolicyContext.create(
        str(base), home=str(base / "home"), include_defaults=False))
    store = AuditStore(base / "audit", "mcpnet")
    # The kernel's own wiring, on a stand-in kernel: policy engine, real audit store, no credentials.
    kernel = SimpleNamespace(policy_session=SimpleNamespace(engine=engine), credentials=None, audit=store,
                             workspace=str(base))
    session = kernel_glue.build_session(kernel)
    await session.start(str(base / "sockets"), egress=False)
    session.broker.policy.register_tools(session.broker.schemas())
    assert session.mcp_failures == {}
    yield session, store, base, allowed, other
    await session.close()
    store.close()
    allowed.close()
    other.close()


async def fetch(session, server: str, url: str) -> str:
    outcome = await session.broker.call(ToolCall(name=f"{server}.fetch", arguments={"url": url}))
    assert outcome.ok, outcome
    return "".join(block.get("text", "") for block in outcome.result["content"])


async def test_allowed_host_is_reached_through_the_servers_own_proxy(setup):
    session, _store, _base, allowed, _other = setup
    text = await fetch(session, "net", f"http://127.0.0.1:{allowed.port}/hello")
    assert text.startswith("200 ") and '"server": "allowed"' in text and '"path": "/hello"' in text
    assert allowed.seen and allowed.seen[-1]["path"] == "/hello"


async def test_other_hosts_are_refused_and_audited_with_the_servers_name(setup):
    session, store, base, allowed, other = setup
    before = len(other.seen)
    for url, rule in (
        (f"http://127.0.0.1:{other.port}/steal", "invariant.restricted-address"),  # a real server, not named
        (f"http://localhost:{allowed.port}/", "invariant.restricted-address"),
        (f"http://2130706433:{other.port}/", "invariant.restricted-address"),  # 127.0.0.1 in decimal
        ("http://example.com/", "default.deny"),  # no rule allows it to this server
        ("http://169.254.169.254/latest/meta-data/", "no-metadata"),  # in allowed_hosts, but the policy denies
    ):
        text = await fetch(session, "net", url)
        assert text == f"refused 403 {rule}", (url, text)
    assert len(other.seen) == before  # nothing reached the refused server
    from ironcage_jupyter.audit import AuditQuery

    with AuditQuery(base / "audit", live_store=store) as query:
        rows = query.sql("SELECT decision, detail->>'target', detail->>'server', reason FROM decisions "
                         "WHERE detail->>'subject' = 'network' ORDER BY seq").rows
    denied = [r for r in rows if r[0] == "deny"]
    assert (f"127.0.0.1:{other.port}" in [r[1] for r in denied]) and all(r[2] == "net" for r in rows)
    assert all("MCP server net" in r[3] for r in rows)
    assert any(r[0] == "allow" and r[1] == f"127.0.0.1:{allowed.port}" for r in rows)


async def test_server_cannot_bypass_its_proxy(setup):
    session, _store, _base, _allowed, other = setup
    outcome = await session.broker.call(ToolCall(name="net.whoami", arguments={}))
    assert "no network" in "".join(b.get("text", "") for b in outcome.result["content"])


async def test_server_without_allowed_hosts_has_no_network(setup):
    session, _store, _base, allowed, _other = setup
    before = len(allowed.seen)
    text = await fetch(session, "offline", f"http://127.0.0.1:{allowed.port}/offline")
    assert text.startswith("error: "), text
    assert len(allowed.seen) == before
    assert session.mcp.servers["offline"].egress is None


async def test_servers_proxy_without_a_policy_engine_uses_its_allowlist_and_the_ssrf_guard(tmp_path):
    """Without an engine (CLI, tests): the server's allowed_hosts and the SSRF guard decide; audited by name."""
    import httpx

    from ironcage_jupyter.tools.hooks import MemoryAudit
    from ironcage_jupyter.tools.session import ToolSession
    from ironcage_jupyter.tools.settings import McpServerSettings, ToolSettings

    allowed, other = start_echo_server("allowed"), start_echo_server("other")
    server = McpServerSettings(command=sys.executable, allowed_hosts=[f"127.0.0.1:{allowed.port}"])
    audit = MemoryAudit()
    session = ToolSession(ToolSettings(mcp_servers={"net": server}), audit=audit, workspace=str(tmp_path))
    proxy = session._mcp_egress("net", server)
    port = await proxy.start_tcp()
    try:
        async with httpx.AsyncClient(proxy=f"http://127.0.0.1:{port}", trust_env=False) as client:
            ok = await client.get(f"http://127.0.0.1:{allowed.port}/ok")
            no = await client.get(f"http://127.0.0.1:{other.port}/no")
            local = await client.get(f"http://localhost:{allowed.port}/no")
        assert ok.status_code == 200 and ok.json()["server"] == "allowed"
        assert no.status_code == 403 and no.headers["X-Ironcage-Rule"] == "network.not_allowed"
        assert local.status_code == 403 and not other.seen
        assert [(e["decision"], e["detail"]["server"]) for e in audit.events] == [
            ("allow", "net"), ("deny", "net"), ("deny", "net")]
    finally:
        await proxy.close()
        await session.close()
        allowed.close()
        other.close()


async def test_a_policy_reloaded_in_the_notebook_governs_running_servers_egress(setup):
    """`%ironcage policy load` reloads the session's engine in place: a network deny rule it adds
    applies to the proxies of servers already running, not only to cells."""
    import ironcage_jupyter.policy as policy_pkg

    session, _store, _base, allowed, _other = setup
    engine = session.broker.policy.engine
    original = engine.policy
    rules = [*original.rules, policy_pkg.Rule.model_validate({
        "id": "no-allowed-any-more", "subject": "network", "effect": "deny",
        "match": {"addresses": ["127.0.0.1/32"], "ports": [allowed.port]}})]
    engine.reload(original.model_copy(update={"rules": rules}))
    try:
        before = len(allowed.seen)
        text = await fetch(session, "net", f"http://127.0.0.1:{allowed.port}/after-reload")
        assert text == "refused 403 no-allowed-any-more", text
        assert len(allowed.seen) == before
    finally:
        engine.reload(original)
    text = await fetch(session, "net", f"http://127.0.0.1:{allowed.port}/restored")
    assert text.startswith("200 "), text
