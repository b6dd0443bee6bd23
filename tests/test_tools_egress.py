"""The egress proxy for cells: decisions per connection, TLS interception with sentinel swap only toward the
secret's host, upstream verification, and the whole path from a network-less bubblewrap sandbox."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
from tools_support import REPO, SentinelSwapper, make_test_ca, start_echo_server, start_package_index

from ironcage_jupyter.tools.builtin import make_upstream_ssl_context
from ironcage_jupyter.tools.egress import EgressProxy
from ironcage_jupyter.tools.hooks import MemoryAudit
from ironcage_jupyter.tools.netguard import HostAllowlist, NetworkGate
from ironcage_jupyter.tools.session import ToolSession
from ironcage_jupyter.tools.settings import ToolSettings
from ironcage_jupyter.tools.tls import SessionCA

SECRET = "real-secret-value-42"


async def resolve_to_loopback(host, port):
    return ["127.0.0.1"]


@pytest.fixture(scope="module")
def world():
    ca = make_test_ca(["api.test", "other.test"])
    servers = {"allowed": start_echo_server("allowed"), "denied": start_echo_server("denied"),
               "tls": start_echo_server("tls", ca.cert_file)}
    yield ca, servers
    for server in servers.values():
        server.close()


def allowlist_for(servers):
    tls, allowed = servers["tls"].port, servers["allowed"].port
    return [f"api.test:{tls}", f"other.test:{tls}", f"127.0.0.1:{tls}", f"127.0.0.1:{allowed}"]


@pytest.fixture
async def proxy(world):
    ca, servers = world
    swapper = SentinelSwapper()
    sentinel = swapper.add("API", SECRET, hosts=["api.test"])
    audit = MemoryAudit()
    session_ca = SessionCA()
    gate = NetworkGate(HostAllowlist.from_strings(allowlist_for(servers)), resolver=resolve_to_loopback)
    egress = EgressProxy(gate, audit, ca=session_ca, credentials=swapper,
                         upstream_ssl=make_upstream_ssl_context(ca.ca_file))
    port = await egress.start_tcp()
    client_ssl = ssl.create_default_context(cafile=session_ca.bundle_file)
    client_ssl.load_verify_locations(ca.ca_file)  # for the opaque tunnel to other.test
    client = httpx.AsyncClient(proxy=f"http://127.0.0.1:{port}", verify=client_ssl, trust_env=False)
    yield client, audit, sentinel, servers, port
    await client.aclose()
    await egress.close()


async def test_allowed_and_denied_servers_on_loopback(proxy):
    client, audit, _sentinel, servers, _port = proxy
    ok = await client.get(f"http://127.0.0.1:{servers['allowed'].port}/a")
    assert ok.status_code == 200 and ok.json()["server"] == "allowed"
    before = len(servers["denied"].seen)
    no = await client.get(f"http://127.0.0.1:{servers['denied'].port}/b")
    assert no.status_code == 403 and no.headers["X-Ironcage-Rule"] == "network.not_allowed"
    assert len(servers["denied"].seen) == before
    decisions = [(e["decision"], e["detail"]["target"]) for e in audit.events]
    assert ("deny", f"127.0.0.1:{servers['denied'].port}") in decisions
    assert ("allow", f"127.0.0.1:{servers['allowed'].port}") in decisions
    assert all(e["event_type"] == "policy_decision" and e["detail"]["subject"] == "network" for e in audit.events)


@pytest.mark.parametrize("host", ["2130706433", "0x7f.1", "0177.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "localhost",
                                  "localhost.", "169.254.169.254", "10.0.0.1"])
async def test_ssrf_forms_through_connect_are_refused(proxy, host):
    _client, audit, _sentinel, servers, port = proxy
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"CONNECT {host}:{servers['denied'].port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    reply = await reader.read()
    writer.close()
    assert reply.startswith(b"HTTP/1.1 403"), reply[:100]
    assert audit.events[-1]["decision"] == "deny"


async def test_sentinel_swapped_only_toward_the_secrets_host(proxy):
    client, audit, sentinel, servers, _port = proxy
    tls = servers["tls"]
    r = await client.post(f"https://api.test:{tls.port}/v1?key={sentinel}",
                          headers={"Authorization": f"Bearer {sentinel}"}, content=f"token={sentinel}")
    assert r.status_code == 200, r.text
    seen = tls.seen[-1]
    assert seen["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert seen["body"] == f"token={SECRET}" and seen["path"] == f"/v1?key={SECRET}"
    # other.test is tunnelled opaquely: the proxy cannot (and does not) touch what goes there
    r = await client.get(f"https://other.test:{tls.port}/v1", headers={"Authorization": f"Bearer {sentinel}"})
    assert r.status_code == 200 and tls.seen[-1]["headers"]["Authorization"] == f"Bearer {sentinel}"
    # plain HTTP with a sentinel is refused (a real secret never travels in clear text)
    r = await client.get(f"http://127.0.0.1:{servers['allowed'].port}/", headers={"X-Key": sentinel})
    assert r.status_code == 403 and r.headers["X-Ironcage-Rule"] == "credentials.refused"
    assert all(SECRET not in json.dumps(s) for s in servers["allowed"].seen)
    assert SECRET not in repr(audit.events)
    reasons = " ".join(e["reason"] for e in audit.events)
    assert "(intercept)" in reasons and "(tunnel)" in reasons and "(http)" in reasons


async def test_upstream_certificate_is_verified_when_intercepting(world):
    ca, servers = world
    swapper = SentinelSwapper()
    swapper.add("API", SECRET, hosts=["api.test"])
    session_ca = SessionCA()
    gate = NetworkGate(HostAllowlist.from_strings(allowlist_for(servers)), resolver=resolve_to_loopback)
    egress = EgressProxy(gate, MemoryAudit(), ca=session_ca, credentials=swapper,
                         upstream_ssl=ssl.create_default_context())  # does not trust the test CA
    port = await egress.start_tcp()
    try:
        async with httpx.AsyncClient(proxy=f"http://127.0.0.1:{port}", trust_env=False,
                                     verify=ssl.create_default_context(cafile=session_ca.ca_file)) as client:
            r = await client.get(f"https://api.test:{servers['tls'].port}/")
        assert r.status_code == 502 and r.headers["X-Ironcage-Rule"] == "egress.upstream_certificate"
    finally:
        await egress.close()


async def test_garbage_does_not_hurt_the_proxy(proxy):
    client, _audit, _sentinel, servers, port = proxy
    for garbage in (b"\x16\x03\x01garbage\r\n\r\n", b"GET /relative HTTP/1.1\r\n\r\n", b"NONSENSE\r\n\r\n",
                    b"GET http://x HTTP/1.1\r\n" + b"A: " + b"b" * 70000 + b"\r\n\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(garbage)
        await writer.drain()
        reply = await reader.read()
        writer.close()
        assert reply.startswith(b"HTTP/1.1 4"), reply[:80]
    ok = await client.get(f"http://127.0.0.1:{servers['allowed'].port}/still-alive")
    assert ok.status_code == 200


CHILD_SCRIPT = r"""
import json, os, socket, ssl, sys, urllib.request, urllib.error
from ironcage_jupyter.tools.egress_bridge import start_bridge_thread
start_bridge_thread(os.environ["IRONCAGE_EGRESS_SOCKET"], int(os.environ["IRONCAGE_EGRESS_PORT"]))
args = json.loads(sys.argv[1])
out = {}
def fetch(url, headers=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=20) as r:
            return [r.status, json.loads(r.read())]
    except urllib.error.HTTPError as e:
        return [e.code, e.headers.get("X-Ironcage-Rule")]
    except Exception as e:
        return ["error", type(e).__name__]
out["secret"] = fetch(f"https://api.test:{args['tls']}/in-sandbox", {"Authorization": "Bearer " + args["sentinel"]})
out["allowed"] = fetch(f"http://127.0.0.1:{args['allowed']}/x")
out["denied"] = fetch(f"http://127.0.0.1:{args['denied']}/x")
try:
    socket.create_connection(("127.0.0.1", args["allowed"]), timeout=2).close()
    out["direct"] = "connected"
except OSError as e:
    out["direct"] = type(e).__name__
out["env_secret"] = [k for k, v in os.environ.items() if args["secret"] in v]
print(json.dumps(out))
"""


async def test_cell_egress_from_a_networkless_sandbox(world):
    """A process in bubblewrap with no network reaches allowed hosts only via bridge -> socket -> proxy."""
    ca, servers = world
    swapper = SentinelSwapper()
    sentinel = swapper.add("API", SECRET, hosts=["api.test"])
    audit = MemoryAudit()
    session = ToolSession(ToolSettings(), audit=audit, egress_allowlist=allowlist_for(servers),
                          credentials=swapper, upstream_ca_file=ca.ca_file, resolver=resolve_to_loopback)
    socket_dir = tempfile.mkdtemp(prefix="ironcage-ipc-")
    await session.start(socket_dir)
    try:
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO, **session.child_environment(3128)}
        binds = []
        for bind in session.sandbox_binds():
            binds += ["--bind" if bind.writable else "--ro-bind", bind.source, bind.target]
        argv = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/", "/",
                "--tmpfs", "/tmp", "--ro-bind", REPO, REPO, *binds, "--proc", "/proc", "--dev", "/dev", "--clearenv"]
        for key, value in env.items():
            argv += ["--setenv", key, value]
        payload = json.dumps({"tls": servers["tls"].port, "allowed": servers["allowed"].port,
                              "denied": servers["denied"].port, "sentinel": sentinel, "secret": SECRET})
        process = await asyncio.create_subprocess_exec(
            *argv, sys.executable, "-c", CHILD_SCRIPT, payload,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, stderr.decode()
        result = json.loads(stdout)
        assert result["secret"][0] == 200
        # The server got the real value; its echo reached the child with the sentinel again.
        assert servers["tls"].seen[-1]["headers"]["Authorization"] == f"Bearer {SECRET}"
        assert result["secret"][1]["headers"]["Authorization"] == f"Bearer {sentinel}"
        assert SECRET not in stdout.decode()
        assert result["allowed"][0] == 200 and result["allowed"][1]["server"] == "allowed"
        assert result["denied"] == [403, "network.not_allowed"]
        assert result["direct"] != "connected"  # no route except through the proxy
        assert result["env_secret"] == []  # the real value never entered the sandbox
        for name in ("egress.sock", "tools.sock"):
            assert os.stat(os.path.join(socket_dir, name)).st_mode & 0o777 == 0o600
        assert os.stat(socket_dir).st_mode & 0o777 == 0o700
        assert not any(name.endswith(".key") or "keys-" in name for name in os.listdir(socket_dir))
    finally:
        await session.close()


async def test_pip_install_from_an_allowed_index_through_the_proxy(world, tmp_path):
    """pip, configured only by the child's environment (HTTPS_PROXY, PIP_CERT), installs from an index the
    policy allows, and cannot reach one it does not."""
    ca, _servers = world
    index, index_port, root = start_package_index(ca.cert_file)
    other, other_port, _ = start_package_index(ca.cert_file)
    session_ca = SessionCA()
    gate = NetworkGate(HostAllowlist.from_strings([f"127.0.0.1:{index_port}"]), resolver=resolve_to_loopback)
    audit = MemoryAudit()
    egress = EgressProxy(gate, audit, ca=session_ca, upstream_ssl=make_upstream_ssl_context(ca.ca_file))
    port = await egress.start_tcp()
    # The child's bundle: system roots + session CA (+ here the test index's own CA, as a real index
    # would be signed by a public root).
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(Path(session_ca.bundle_file).read_bytes() + Path(ca.ca_file).read_bytes())
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **egress.child_environment(port),
           "SSL_CERT_FILE": str(bundle), "PIP_CERT": str(bundle), "REQUESTS_CA_BUNDLE": str(bundle),
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1", "PIP_NO_INPUT": "1"}

    async def pip(index_url: str, target: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pip", "install", "--no-deps", "--retries", "0", "--timeout", "10",
            "--target", target, "--index-url", index_url, "ironcage-demo-pkg", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(process.communicate(), 120)
        return process.returncode, out.decode()

    try:
        code, out = await pip(f"https://127.0.0.1:{index_port}/simple/", str(tmp_path / "ok"))
        assert code == 0, out
        assert (tmp_path / "ok" / "ironcage_demo_pkg" / "__init__.py").exists()
        code, out = await pip(f"https://127.0.0.1:{other_port}/simple/", str(tmp_path / "no"))
        assert code != 0 and not (tmp_path / "no" / "ironcage_demo_pkg").exists()
        denied = [e for e in audit.events if e["decision"] == "deny"]
        assert denied and denied[-1]["detail"]["target"] == f"127.0.0.1:{other_port}"
        assert denied[-1]["rule"] == "network.not_allowed"
    finally:
        await egress.close()
        for server in (index, other):
            server.shutdown()
            server.server_close()


async def test_a_failed_audit_write_refuses_the_connection(world):
    _ca, servers = world

    class BrokenAudit(MemoryAudit):
        def record(self, event_type, **kwargs):  # type: ignore[override]
            raise OSError("audit disk full")

    gate = NetworkGate(HostAllowlist.from_strings(allowlist_for(servers)), resolver=resolve_to_loopback)
    egress = EgressProxy(gate, BrokenAudit())
    port = await egress.start_tcp()
    before = len(servers["allowed"].seen)
    try:
        async with httpx.AsyncClient(proxy=f"http://127.0.0.1:{port}", trust_env=False) as client:
            r = await client.get(f"http://127.0.0.1:{servers['allowed'].port}/unaudited")
        assert r.status_code == 503 and r.headers["X-Ironcage-Rule"] == "audit.write_failed"
        assert len(servers["allowed"].seen) == before
    finally:
        await egress.close()


async def test_tunnel_passes_on_bytes_sent_with_the_connect_and_half_closes(proxy):
    """The transport-level relay: bytes pipelined right after CONNECT (already read with the head) are
    forwarded first, the upstream's answer comes back whole, and a large body keeps its every byte."""
    _client, _audit, _sentinel, servers, port = proxy
    target = f"127.0.0.1:{servers['allowed'].port}"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    size = 3_000_000  # more than the transports buffer: back-pressure must hold, nothing may be lost
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"
                 f"GET /big/{size} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    writer.write_eof()  # the client's half-close travels through the tunnel too
    data = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 Connection established")
    inner_head, _, body = rest.partition(b"\r\n\r\n")
    assert inner_head.startswith(b"HTTP/1.1 200") and body == b"x" * size


async def test_plain_http_raw_relay_keeps_the_whole_body(world):
    _ca, servers = world
    gate = NetworkGate(HostAllowlist.from_strings(allowlist_for(servers)), resolver=resolve_to_loopback)
    egress = EgressProxy(gate, MemoryAudit())  # no credentials: the raw relay
    port = await egress.start_tcp()
    try:
        async with httpx.AsyncClient(proxy=f"http://127.0.0.1:{port}", trust_env=False) as client:
            big = await client.get(f"http://127.0.0.1:{servers['allowed'].port}/big/2500000")
            small = await client.get(f"http://127.0.0.1:{servers['allowed'].port}/small")
        assert big.status_code == 200 and big.content == b"x" * 2_500_000
        assert small.json()["path"] == "/small"
    finally:
        await egress.close()
