"""A brokered secret never enters the sandbox, even when the server echoes it back.

The real credentials session (broker + sentinels) behind the real http.request tool and the real egress
proxy, against real HTTP(S) echo servers on 127.0.0.1 that send the Authorization header back in the
body and in a response header: what reaches the child carries the sentinel, never the real value —
with Content-Length, chunked in small pieces (a value split across reads), plain HTTP, HTTP/1.0.
"""

from __future__ import annotations

import asyncio
import ssl

import httpx
import pytest
from tools_support import make_test_ca, start_echo_server

from ironcage_jupyter.credentials import CredentialSettings, EnvSource, SecretGrant
from ironcage_jupyter.credentials.session import CredentialSession
from ironcage_jupyter.tools.adapters import BrokeredCredentials
from ironcage_jupyter.tools.broker import ToolBroker
from ironcage_jupyter.tools.builtin import HttpTool, make_upstream_ssl_context, register_builtins
from ironcage_jupyter.tools.egress import EgressProxy
from ironcage_jupyter.tools.hooks import MemoryAudit, SettingsToolPolicy
from ironcage_jupyter.tools.models import ToolCall
from ironcage_jupyter.tools.netguard import HostAllowlist, NetworkGate
from ironcage_jupyter.tools.restore import StreamRestorer, restore_complete
from ironcage_jupyter.tools.settings import ToolSettings

REAL = "sk-proj-Vb7Nm2Qw9Er4Ty6Ui1Op3As5Df8Gh0Jk"


async def resolve_to_loopback(host, port):
    return ["127.0.0.1"]


def new_session() -> tuple[CredentialSession, str]:
    session = CredentialSession(
        CredentialSettings(grants={"API_KEY": SecretGrant(hosts=["api.test"], tools=["http.request"])}),
        sources={"env": EnvSource({"API_KEY": REAL})},
    )
    return session, session.child_env_overrides()["API_KEY"]


@pytest.fixture(scope="module")
def servers():
    ca = make_test_ca(["api.test"])
    tls, plain = start_echo_server("tls", ca.cert_file), start_echo_server("plain")
    yield ca, tls, plain
    tls.close()
    plain.close()


def assert_only_sentinel(text: str, sentinel: str) -> None:
    assert REAL not in text, "the real secret reached the child"
    assert sentinel in text


async def test_http_tool_response_carries_the_sentinel_never_the_real_value(servers):
    ca, tls, _plain = servers
    session, sentinel = new_session()
    allowlist = HostAllowlist.from_strings([f"api.test:{tls.port}", f"127.0.0.1:{tls.port}"])
    broker = ToolBroker(
        policy=SettingsToolPolicy(ToolSettings(allow=["http.request"]), allowlist),
        audit=MemoryAudit(),
        credentials=BrokeredCredentials(session),
    )
    http = HttpTool(
        NetworkGate(allowlist, resolver=resolve_to_loopback),
        ssl_context=make_upstream_ssl_context(ca.ca_file),
    )
    register_builtins(broker, enabled=["http.request"], fs=None, http=http)
    try:
        for path in ("/v1", "/chunked/7"):
            outcome = await broker.call(
                ToolCall(
                    name="http.request",
                    arguments={
                        "url": f"https://api.test:{tls.port}{path}",
                        "headers": {"Authorization": f"Bearer {sentinel}"},
                    },
                )
            )
            assert outcome.ok, outcome
            assert tls.seen[-1]["headers"]["Authorization"] == f"Bearer {REAL}"  # the server got the real one
            assert_only_sentinel(repr(outcome.result), sentinel)
            assert outcome.result["headers"]["x-echo-authorization"] == f"Bearer {sentinel}"
            assert f'"Authorization": "Bearer {sentinel}"' in outcome.result["body"]
    finally:
        await http.aclose()


@pytest.fixture
async def egress(servers):
    ca, tls, plain = servers
    session, sentinel = new_session()
    session_ca = make_session_ca()
    gate = NetworkGate(
        HostAllowlist.from_strings(
            [f"api.test:{tls.port}", f"127.0.0.1:{tls.port}", f"127.0.0.1:{plain.port}"]
        ),
        resolver=resolve_to_loopback,
    )
    proxy = EgressProxy(
        gate,
        MemoryAudit(),
        ca=session_ca,
        credentials=BrokeredCredentials(session),
        upstream_ssl=make_upstream_ssl_context(ca.ca_file),
    )
    port = await proxy.start_tcp()
    client = httpx.AsyncClient(
        proxy=f"http://127.0.0.1:{port}",
        trust_env=False,
        verify=ssl.create_default_context(cafile=session_ca.bundle_file),
    )
    yield client, port, sentinel, tls, plain
    await client.aclose()
    await proxy.close()
    plain.server.leak = None  # type: ignore[attr-defined]


def make_session_ca():
    from ironcage_jupyter.tools.tls import SessionCA

    return SessionCA()


async def test_intercepted_https_response_is_restored_with_a_correct_length(egress):
    client, _port, sentinel, tls, _plain = egress
    response = await client.get(
        f"https://api.test:{tls.port}/v1", headers={"Authorization": f"Bearer {sentinel}"}
    )
    assert response.status_code == 200
    assert tls.seen[-1]["headers"]["Authorization"] == f"Bearer {REAL}"
    assert_only_sentinel(response.text, sentinel)
    assert response.headers["X-Echo-Authorization"] == f"Bearer {sentinel}"
    assert REAL not in repr(response.headers.raw)
    assert int(response.headers["Content-Length"]) == len(response.content)  # recomputed, not upstream's
    assert response.json()["headers"]["Authorization"] == f"Bearer {sentinel}"


@pytest.mark.parametrize("size", [1, 7, 64])
async def test_streamed_https_response_split_across_chunks_is_restored(egress, size):
    client, _port, sentinel, tls, _plain = egress
    async with client.stream(
        "GET", f"https://api.test:{tls.port}/chunked/{size}", headers={"Authorization": f"Bearer {sentinel}"}
    ) as response:
        body = b"".join([piece async for piece in response.aiter_raw()])
    assert response.headers.get("Transfer-Encoding") == "chunked"
    assert_only_sentinel(body.decode() + repr(response.headers.raw), sentinel)
    assert httpx.Response(200, content=body).json()["headers"]["Authorization"] == f"Bearer {sentinel}"


async def test_plain_http_responses_are_restored_too(egress):
    client, port, sentinel, tls, plain = egress
    # The secret is resolved by a first brokered request; then a server that learnt it sends it back.
    await client.get(f"https://api.test:{tls.port}/v1", headers={"Authorization": f"Bearer {sentinel}"})
    plain.server.leak = REAL  # type: ignore[attr-defined]  # the http.server object the handler sees
    response = await client.get(f"http://127.0.0.1:{plain.port}/x")
    assert response.status_code == 200 and response.json()["leak"] == sentinel
    assert_only_sentinel(response.text, sentinel)

    # An HTTP/1.0 client gets a close-delimited body (no chunked framing it could not parse).
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET http://127.0.0.1:{plain.port}/chunked/5 HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read(-1)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head and body.startswith(b"{")
    assert_only_sentinel(raw.decode(), sentinel)


async def test_compressed_responses_are_refused_when_they_cannot_be_checked(egress):
    client, _port, sentinel, tls, _plain = egress
    response = await client.get(
        f"https://api.test:{tls.port}/gzip", headers={"Authorization": f"Bearer {sentinel}"}
    )
    assert response.status_code == 502 and response.headers["X-Ironcage-Rule"] == "egress.response_encoding"
    assert REAL not in response.text
    assert tls.seen[-1]["headers"]["Accept-Encoding"] == "identity"


def test_stream_restorer_finds_a_value_at_every_split_and_holds_nothing_else():
    session, sentinel = new_session()
    session.swap_sentinels(sentinel, "api.test")  # the value is resolved (known to the broker)
    credentials = BrokeredCredentials(session)
    body = f'data: {{"auth": "Bearer {REAL}"}}\n\ndata: done\n\n'.encode()
    expected = body.replace(REAL.encode(), sentinel.encode())
    for cut in range(len(body) + 1):
        restorer = StreamRestorer(credentials)
        out = restorer.feed(body[:cut]) + restorer.feed(body[cut:]) + restorer.finish()
        assert out == expected, cut
    restorer = StreamRestorer(credentials)
    assert b"".join(restorer.feed(body[i : i + 1]) for i in range(len(body))) + restorer.finish() == expected
    # An event that cannot be the start of a secret is passed on at once (streams are not delayed).
    assert StreamRestorer(credentials).feed(b"data: hello\n\n") == b"data: hello\n\n"
    # A value cut off by the end of the body cannot be restored: it is dropped, short look-alikes are not.
    assert restore_complete(credentials, b"token: " + REAL[:-1].encode()) == b"token: "
    assert restore_complete(credentials, b"ends with sk") == b"ends with sk"
