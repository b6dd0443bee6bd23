"""Brokered mode end to end on the trusted side: the tools subsystem's real `http.request` tool, with
the session's real credential broker behind it, against real HTTPS servers on 127.0.0.1. The sentinel
becomes the real value only toward the secret's own host; anywhere else the call is refused and the
server sees nothing."""

from __future__ import annotations

import pytest

tools_support = pytest.importorskip("tools_support")
pytest.importorskip("ironcage_jupyter.tools.builtin")

from ironcage_jupyter.credentials import CredentialSettings, EnvSource, SecretGrant  # noqa: E402
from ironcage_jupyter.credentials.session import CredentialSession  # noqa: E402
from ironcage_jupyter.tools.adapters import BrokeredCredentials  # noqa: E402
from ironcage_jupyter.tools.broker import ToolBroker  # noqa: E402
from ironcage_jupyter.tools.builtin import HttpTool, make_upstream_ssl_context, register_builtins  # noqa: E402
from ironcage_jupyter.tools.hooks import MemoryAudit, SettingsToolPolicy  # noqa: E402
from ironcage_jupyter.tools.models import ToolCall  # noqa: E402
from ironcage_jupyter.tools.netguard import HostAllowlist, NetworkGate  # noqa: E402
from ironcage_jupyter.tools.settings import ToolSettings  # noqa: E402

REAL = "sk-proj-Vb7Nm2Qw9Er4Ty6Ui1Op3As5Df8Gh0Jk"


@pytest.fixture(scope="module")
def servers():
    ca = tools_support.make_test_ca(["api.test", "other.test"])
    tls = tools_support.start_echo_server("tls", ca.cert_file)
    yield ca, tls
    tls.close()


async def test_http_tool_gets_the_real_value_only_toward_the_grants_host(servers):
    ca, tls = servers
    audit_events: list[tuple[str, dict]] = []
    session = CredentialSession(
        CredentialSettings(
            grants={"OPENAI_API_KEY": SecretGrant(hosts=["api.test"], tools=["http.request"])}
        ),
        audit_callback=lambda event, detail: audit_events.append((event, detail)),
        sources={"env": EnvSource({"OPENAI_API_KEY": REAL})},
    )
    sentinel = session.child_env_overrides()["OPENAI_API_KEY"]  # what the child's environment holds

    async def resolver(host, port):
        return ["127.0.0.1"]

    allowlist = HostAllowlist.from_strings(
        [
            f"api.test:{tls.port}",
            f"other.test:{tls.port}",
            f"api.test.other.test:{tls.port}",
            f"127.0.0.1:{tls.port}",
        ]
    )
    tool_audit = MemoryAudit()
    broker = ToolBroker(
        policy=SettingsToolPolicy(ToolSettings(allow=["http.request"]), allowlist),
        audit=tool_audit,
        credentials=BrokeredCredentials(session),
    )
    http = HttpTool(
        NetworkGate(allowlist, resolver=resolver), ssl_context=make_upstream_ssl_context(ca.ca_file)
    )
    register_builtins(broker, enabled=["http.request"], fs=None, http=http)
    try:
        ok = await broker.call(
            ToolCall(
                name="http.request",
                arguments={
                    "url": f"https://api.test:{tls.port}/v1",
                    "headers": {"Authorization": f"Bearer {sentinel}"},
                },
            )
        )
        assert ok.ok, ok
        assert tls.seen[-1]["headers"]["Authorization"] == f"Bearer {REAL}"
        assert ok.result["credentials_used"] == ["OPENAI_API_KEY"]

        before = len(tls.seen)
        for host in ("other.test", "api.test.other.test"):
            refused = await broker.call(
                ToolCall(
                    name="http.request",
                    arguments={
                        "url": f"https://{host}:{tls.port}/v1",
                        "headers": {"Authorization": f"Bearer {sentinel}"},
                    },
                )
            )
            assert refused.refusal is not None and refused.refusal.rule == "credentials.refused", (
                host,
                refused,
            )
        assert len(tls.seen) == before, "a refused call must not reach the server"
    finally:
        await http.aclose()

    # Audited by name and scope, never by value; the firewall knows the value from now on.
    assert ("credential.grant" in [e for e, _ in audit_events]) and (
        "credential.refuse" in [e for e, _ in audit_events]
    )
    assert REAL not in repr(audit_events) and REAL not in repr(tool_audit.events)
    out = session.screen("stream", {"name": "stdout", "text": f"echo: {REAL}\n"})
    assert out.content["text"] == "echo: [REDACTED:OPENAI_API_KEY]\n"
    # A response echoing the header can be turned back into the sentinel before it reaches the child.
    restored, names = session.restore_sentinels({"body": f'{{"Authorization": "Bearer {REAL}"}}'})
    assert REAL not in repr(restored) and sentinel in restored["body"] and names == ["OPENAI_API_KEY"]
