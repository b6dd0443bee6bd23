"""SSRF guard and http.request against real servers on 127.0.0.1."""

from __future__ import annotations

import ipaddress

import pytest
from tools_support import SentinelSwapper, make_test_ca, start_echo_server

from ironcage_jupyter.tools.broker import ToolBroker
from ironcage_jupyter.tools.builtin import HttpTool, make_upstream_ssl_context, register_builtins
from ironcage_jupyter.tools.hooks import MemoryAudit, SettingsToolPolicy
from ironcage_jupyter.tools.models import ToolCall
from ironcage_jupyter.tools.netguard import (
    DestinationRefused,
    HostAllowlist,
    NetworkGate,
    check_addresses,
    is_public,
    parse_ip_literal,
)
from ironcage_jupyter.tools.settings import ToolSettings

LOOPBACK = ipaddress.ip_address("127.0.0.1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),  # decimal
        ("0177.0.0.1", "127.0.0.1"),  # octal
        ("0x7f.0.0.1", "127.0.0.1"),  # hex
        ("0x7f000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),  # short form
        ("017700000001", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("[::ffff:7f00:1]", "::ffff:7f00:1"),
        ("0.0.0.0", "0.0.0.0"),
        ("169.254.169.254", "169.254.169.254"),
        ("fe80::1%eth0", "fe80::1"),
        ("example.com", None),
        ("cafe.be", None),
    ],
)
def test_ip_literal_forms(text, expected):
    parsed = parse_ip_literal(text)
    assert (str(parsed) if parsed else None) == expected
    if parsed is not None:
        assert not is_public(parsed)


def test_public_and_embedded_addresses():
    assert is_public(ipaddress.ip_address("93.184.216.34"))
    for hidden in ("::ffff:10.0.0.1", "2002:7f00:1::", "64:ff9b::a9fe:a9fe", "100.64.0.1", "224.0.0.1", "::"):
        assert not is_public(ipaddress.ip_address(hidden)), hidden


def test_wildcards_never_match_ip_literals():
    allow = HostAllowlist.from_strings(["*", "*.example.com", "api.test:8443"])
    assert allow.match("127.0.0.1", 80) is None
    assert allow.match("2130706433", 80) is None
    assert allow.match("::1", 80) is None
    assert allow.match("a.example.com", 443) is not None
    assert allow.match("example.com.evil", 443) is not None  # "*" matches any name ...
    only = HostAllowlist.from_strings(["*.example.com"])
    assert only.match("example.com.evil", 443) is None  # ... but "*.example.com" only its subdomains
    assert only.match("evilexample.com", 443) is None
    assert HostAllowlist.from_strings(["api.test:8443"]).match("api.test", 443) is None


async def fixed(mapping):
    async def resolver(host, port):
        return mapping[host]

    return resolver


@pytest.mark.parametrize(
    ("host", "answers"),
    [
        ("localhost", None),  # the real system resolver
        ("rebind.test", ["127.0.0.1"]),
        ("metadata.test", ["169.254.169.254"]),
        ("mixed.test", ["93.184.216.34", "10.0.0.5"]),  # one bad answer refuses the name
        ("v6.test", ["::1"]),
        ("mapped.test", ["::ffff:192.168.1.1"]),
    ],
)
async def test_names_resolving_to_private_addresses_are_refused(host, answers):
    allow = HostAllowlist.from_strings(["*.test", "localhost"])
    gate = NetworkGate(allow, resolver=await fixed({host: answers}) if answers else None) if answers else NetworkGate(allow)
    with pytest.raises(DestinationRefused) as info:
        await gate.check(host, 80)
    assert info.value.rule == "network.private_address"


async def test_named_addresses_are_allowed_and_pinned():
    calls = []

    async def resolver(host, port):
        calls.append(host)
        return ["127.0.0.1"]

    allow = HostAllowlist.from_strings(["svc.test:8080", "127.0.0.1:8080"])
    checked = await check_addresses("svc.test", 8080, allow, resolver)
    assert checked.address == "127.0.0.1" and checked.named_private and calls == ["svc.test"]
    with pytest.raises(DestinationRefused):
        await check_addresses("svc.test", 8081, allow, resolver)  # the address is named for 8080 only


@pytest.fixture(scope="module")
def servers():
    ca = make_test_ca(["api.test", "other.test"])
    allowed = start_echo_server("allowed")
    denied = start_echo_server("denied")
    tls = start_echo_server("tls", ca.cert_file)
    yield ca, allowed, denied, tls
    for server in (allowed, denied, tls):
        server.close()


def http_broker(ca, allowlist, resolver=None, credentials=None):
    allow = HostAllowlist.from_strings(allowlist)
    gate = NetworkGate(allow, resolver=resolver) if resolver else NetworkGate(allow)
    audit = MemoryAudit()
    broker = ToolBroker(policy=SettingsToolPolicy(ToolSettings(allow=["http.request"]), allow), audit=audit,
                        credentials=credentials)
    tool = HttpTool(gate, ssl_context=make_upstream_ssl_context(ca.ca_file))
    register_builtins(broker, enabled=["http.request"], fs=None, http=tool)
    return broker, tool, audit


async def test_http_request_to_allowed_and_denied_servers(servers):
    ca, allowed, denied, _tls = servers
    broker, tool, audit = http_broker(ca, [f"127.0.0.1:{allowed.port}"])
    try:
        ok = await broker.call(ToolCall(name="http.request", arguments={
            "url": f"http://127.0.0.1:{allowed.port}/hello?q=1", "method": "POST", "body": "payload",
            "headers": {"X-Test": "1"}}))
        assert ok.ok and ok.result["status"] == 200, ok
        assert '"server": "allowed"' in ok.result["body"] and '"body": "payload"' in ok.result["body"]
        before = len(denied.seen)
        no = await broker.call(ToolCall(name="http.request", arguments={"url": f"http://127.0.0.1:{denied.port}/"}))
        assert no.refusal.rule == "network.not_allowed" and len(denied.seen) == before
        # Other spellings of loopback reach nothing the policy did not name (the named address+port is
        # the same address whatever its spelling, so those are compared canonically).
        for url in (f"http://2130706433:{denied.port}/", f"http://0x7f.1:{denied.port}/",
                    f"http://0177.0.0.1:{denied.port}/", f"http://[::1]:{denied.port}/",
                    f"http://[::ffff:127.0.0.1]:{denied.port}/", f"http://localhost.:{allowed.port}/",
                    f"http://localhost:{allowed.port}/", f"http://user:pw@127.0.0.1:{allowed.port}/",
                    "file:///etc/passwd", "gopher://127.0.0.1/"):
            outcome = await broker.call(ToolCall(name="http.request", arguments={"url": url}))
            assert not outcome.ok, url
        assert len(denied.seen) == before
        same = await broker.call(ToolCall(name="http.request", arguments={"url": f"http://2130706433:{allowed.port}/"}))
        assert same.ok and same.result["address"] == "127.0.0.1"
        smuggle = await broker.call(ToolCall(name="http.request", arguments={
            "url": f"http://127.0.0.1:{allowed.port}/", "headers": {"Host": "internal"}}))
        assert smuggle.refusal.rule == "tools.http_header"
    finally:
        await tool.aclose()


async def test_wildcard_allowlist_reaches_no_private_address(servers):
    ca, allowed, _denied, _tls = servers
    broker, tool, _ = http_broker(ca, ["*"])
    try:
        for host in ("127.0.0.1", "2130706433", "[::1]", "localhost", "localhost.", "169.254.169.254"):
            outcome = await broker.call(ToolCall(name="http.request", arguments={"url": f"http://{host}:{allowed.port}/"}))
            assert outcome.refusal is not None, host
            assert outcome.refusal.rule in ("network.not_allowed", "network.private_address"), outcome.refusal
    finally:
        await tool.aclose()


async def test_dns_rebinding_cannot_swap_the_checked_address(servers):
    """The resolver answers a public address first, loopback afterwards: only one answer is ever used."""
    ca, allowed, _denied, _tls = servers
    answers = iter([["127.0.0.1"], ["10.9.9.9"]])

    async def resolver(host, port):
        return next(answers)

    broker, tool, _ = http_broker(ca, [f"api.test:{allowed.port}", f"127.0.0.1:{allowed.port}"], resolver)
    try:
        outcome = await broker.call(ToolCall(name="http.request", arguments={"url": f"http://api.test:{allowed.port}/pin"}))
        assert outcome.ok and outcome.result["address"] == "127.0.0.1"
        assert allowed.seen[-1]["headers"]["Host"] == f"api.test:{allowed.port}"
    finally:
        await tool.aclose()


async def test_brokered_credential_only_over_https_to_its_host(servers):
    ca, allowed, _denied, tls = servers

    async def resolver(host, port):
        return ["127.0.0.1"]

    swapper = SentinelSwapper()
    sentinel = swapper.add("API_TOKEN", "real-token-123", hosts=["api.test"])
    allowlist = [f"api.test:{tls.port}", f"other.test:{tls.port}", f"127.0.0.1:{tls.port}",
                 f"api.test:{allowed.port}", f"127.0.0.1:{allowed.port}"]
    broker, tool, audit = http_broker(ca, allowlist, resolver, swapper)
    try:
        ok = await broker.call(ToolCall(name="http.request", arguments={
            "url": f"https://api.test:{tls.port}/v1", "headers": {"Authorization": f"Bearer {sentinel}"}}))
        assert ok.ok, ok
        assert tls.seen[-1]["headers"]["Authorization"] == "Bearer real-token-123"
        assert ok.result["credentials_used"] == ["API_TOKEN"]
        assert "real-token-123" not in repr(audit.events)
        elsewhere = await broker.call(ToolCall(name="http.request", arguments={
            "url": f"https://other.test:{tls.port}/v1", "headers": {"Authorization": f"Bearer {sentinel}"}}))
        assert elsewhere.refusal.rule == "credentials.refused"
        clear = await broker.call(ToolCall(name="http.request", arguments={
            "url": f"http://api.test:{allowed.port}/v1", "body": sentinel}))
        assert clear.refusal.rule == "credentials.refused" and "clear text" in clear.refusal.reason
        assert all("real-token-123" not in str(s) for s in allowed.seen)
    finally:
        await tool.aclose()


async def test_upstream_certificate_is_verified(servers):
    _ca, _allowed, _denied, tls = servers
    other_ca = make_test_ca([])  # trust a different CA: the server's certificate must be rejected
    broker, tool, _ = http_broker(other_ca, [f"127.0.0.1:{tls.port}"])
    try:
        outcome = await broker.call(ToolCall(name="http.request", arguments={"url": f"https://127.0.0.1:{tls.port}/"}))
        assert outcome.ok and outcome.is_error and "CERTIFICATE_VERIFY_FAILED" in outcome.result["error"]
    finally:
        await tool.aclose()
