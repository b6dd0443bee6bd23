"""The broker with the real policy engine and credentials broker (active once those packages are on main)."""

from __future__ import annotations

import os

import pytest
from tools_support import start_echo_server

from ironcage_jupyter.tools.adapters import BrokeredCredentials, EnginePolicy, engine_network_decider
from ironcage_jupyter.tools.broker import ToolBroker
from ironcage_jupyter.tools.builtin import HttpTool, make_upstream_ssl_context, register_builtins
from ironcage_jupyter.tools.fs import ConfinedFs, FsRoot
from ironcage_jupyter.tools.hooks import MemoryAudit, SettingsToolPolicy
from ironcage_jupyter.tools.models import ToolCall
from ironcage_jupyter.tools.netguard import (
    DestinationRefused,
    HostAllowlist,
    NetworkGate,
    allowlist_from_network_settings,
)
from ironcage_jupyter.tools.settings import ToolSettings

POLICY = """
name: tools-test
rules:
  - id: read-workspace
    subject: tool
    effect: allow
    match: {tools: ["fs.read", "fs.list"]}
  - id: read-paths-in-workspace
    subject: tool
    effect: allow
    match: {tools: ["fs.*"], roles: [read-path], paths: ["{ws}/**", "{ws}"]}
  - id: http
    subject: tool
    effect: allow
    match: {tools: ["http.request"]}
  - id: http-urls
    subject: tool
    effect: allow
    match: {tools: ["http.request"], roles: [url], domains: ["api.test"]}
network:
  allow_domains: ["api.test"]
  allow_addresses: ["127.0.0.1"]
  ports: [{port}]
"""


@pytest.fixture
def setup(tmp_path):
    pytest.importorskip("ironcage_jupyter.policy.engine")
    import ironcage_jupyter.policy as policy_pkg

    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("policy engine says yes")
    server, other = start_echo_server("allowed"), start_echo_server("other")
    text = POLICY.replace("{ws}", str(ws)).replace("{port}", str(server.port))
    policy = policy_pkg.load_policy_text(text)
    context = policy_pkg.PolicyContext.create(str(ws), home=str(tmp_path / "home"), include_defaults=False)
    engine = policy_pkg.PolicyEngine(policy, context)
    adapter = EnginePolicy(engine)
    async def resolver(host, port):  # api.test stands for the test server on loopback
        return ["127.0.0.1"]

    gate = NetworkGate(allowlist_from_network_settings(policy.network), decide=engine_network_decider(engine),
                       resolver=resolver)
    broker = ToolBroker(policy=adapter, audit=MemoryAudit())
    http = HttpTool(gate, ssl_context=make_upstream_ssl_context())
    register_builtins(broker, enabled=["fs.read", "fs.write", "fs.list", "http.request"],
                      fs=ConfinedFs([FsRoot(str(ws), True)]), http=http)
    adapter.register_tools(broker.schemas())
    yield broker, gate, ws, server, other, http
    server.close()
    other.close()


async def test_engine_decides_tool_calls(setup):
    broker, _gate, ws, _server, _other, http = setup
    try:
        ok = await broker.call(ToolCall(name="fs.read", arguments={"path": "a.txt"}))
        assert ok.ok, ok
        no = await broker.call(ToolCall(name="fs.write", arguments={"path": "b.txt", "content": "x"}))
        assert not no.ok and no.refusal.stage == "policy"
        assert not (ws / "b.txt").exists()
    finally:
        await http.aclose()


async def test_engine_decides_network(setup):
    broker, gate, _ws, server, other, http = setup
    try:
        ok = await broker.call(ToolCall(name="http.request", arguments={"url": f"http://api.test:{server.port}/"}))
        assert ok.ok and ok.result["status"] == 200 and ok.result["address"] == "127.0.0.1", ok
        no = await broker.call(ToolCall(name="http.request", arguments={"url": f"http://127.0.0.1:{server.port}/"}))
        assert not no.ok
        assert (await gate.check("api.test", server.port)).address == "127.0.0.1"
        for host, port in (("api.test", other.port), ("127.0.0.1", other.port), ("localhost", server.port),
                           ("2130706433", other.port), ("evil.test", server.port)):
            with pytest.raises(DestinationRefused):
                await gate.check(host, port)
    finally:
        await http.aclose()


def test_brokered_credentials_adapter(tmp_path):
    creds = pytest.importorskip("ironcage_jupyter.credentials.broker")
    settings_mod = pytest.importorskip("ironcage_jupyter.credentials.settings")
    os.environ["IRONCAGE_TEST_TOKEN"] = "real-token-xyz"
    try:
        settings = settings_mod.CredentialSettings(grants={"IRONCAGE_TEST_TOKEN": settings_mod.SecretGrant(
            hosts=["api.test"], tools=["demo.echo"])})
        broker = creds.CredentialBroker(settings)
        sentinel = broker.sentinel_for("IRONCAGE_TEST_TOKEN")
        adapter = BrokeredCredentials(broker)
        assert adapter.hosts_needing_interception() == ["api.test"]
        swapped, used = adapter.swap(f"Bearer {sentinel}", tool="egress", host="api.test")
        assert swapped == "Bearer real-token-xyz" and used == ["IRONCAGE_TEST_TOKEN"]
        with pytest.raises(PermissionError):
            adapter.swap(f"Bearer {sentinel}", tool="egress", host="evil.test")
        with pytest.raises(PermissionError):
            adapter.swap(f"Bearer {sentinel}", tool="http.request", host="api.test", secure=False)
        swapped, _ = adapter.swap(f"key={sentinel}", tool="demo.echo", host=None)
        assert swapped == "key=real-token-xyz"
        assert adapter.swap("no sentinel here", tool="egress", host="x") == ("no sentinel here", [])
    finally:
        del os.environ["IRONCAGE_TEST_TOKEN"]


def test_allowlist_from_network_settings():
    class Net:
        allow_domains = ["*.example.com", "pypi.org"]
        allow_addresses = ["10.0.0.0/8", "::1"]
        ports = [443]

    allow = allowlist_from_network_settings(Net())
    assert allow.match("a.example.com", 443) and not allow.match("a.example.com", 80)
    assert allow.match("10.1.2.3", 443) and allow.match("::1", 443) and not allow.match("127.0.0.1", 443)
    assert allow.names_address(__import__("ipaddress").ip_address("10.9.9.9"), 443)
    assert HostAllowlist.from_strings([]).match("pypi.org", 443) is None


async def test_output_firewall_of_the_credentials_session_screens_tool_results(tmp_path):
    pytest.importorskip("ironcage_jupyter.credentials.session")
    from ironcage_jupyter.credentials.session import CredentialSession
    from ironcage_jupyter.credentials.settings import CredentialSettings, SecretGrant
    from ironcage_jupyter.tools.adapters import output_screen_from

    secret = "s3cr3t-VALUE-that-must-not-leak-0123456789"
    session = CredentialSession(CredentialSettings(grants={"API_KEY": SecretGrant(tools=["fs.read"])}),
                                environ={"API_KEY": secret})
    session.broker.value_for_tool("API_KEY", "fs.read")  # the value is now known to the firewall
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "leak.txt").write_text(f"token={secret}\n")
    broker = ToolBroker(policy=SettingsToolPolicy(ToolSettings(allow=["fs.read"])), audit=MemoryAudit(),
                        screen_output=output_screen_from(session))
    register_builtins(broker, enabled=["fs.read"], fs=ConfinedFs([FsRoot(str(ws), True)]), http=None)
    outcome = await broker.call(ToolCall(name="fs.read", arguments={"path": "leak.txt"}))
    assert outcome.ok and secret not in repr(outcome.result)
    assert outcome.redactions and outcome.redactions[0]["count"] >= 1


def test_brokered_credentials_use_only_the_brokers_public_api():
    """Host-less tool calls (MCP) swap through `swap_sentinels(text, None, tool)`, not broker internals."""
    from ironcage_jupyter.credentials import CredentialBroker, CredentialSettings, EnvSource, SecretGrant

    real = CredentialBroker(
        CredentialSettings(grants={"TOKEN": SecretGrant(hosts=["api.test"], tools=["demo.echo"])}),
        sources={"env": EnvSource({"TOKEN": "real-token-xyz-0123"})},
    )

    class PublicOnly:  # exactly the documented trusted-side API, nothing private
        settings = real.settings
        swap_sentinels = staticmethod(real.swap_sentinels)
        restore_sentinels = staticmethod(real.restore_sentinels)
        restore_hold_length = staticmethod(real.restore_hold_length)

    sentinel = real.sentinel_for("TOKEN")
    adapter = BrokeredCredentials(PublicOnly())
    swapped, used = adapter.swap(f"key={sentinel}", tool="demo.echo", host=None)
    assert swapped == "key=real-token-xyz-0123" and used == ["TOKEN"]
    with pytest.raises(PermissionError):
        adapter.swap(f"key={sentinel}", tool="other.tool", host=None)  # the tool has no grant
    assert adapter.restore({"echo real-token-xyz-0123": ["real-token-xyz-0123"]}) == {
        f"echo {sentinel}": [sentinel]}
    assert adapter.restore_hold_length("Bearer real-tok") == len("real-tok")
