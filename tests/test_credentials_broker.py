"""The credential broker: grants, TTL, rate limits, sentinels swapped only toward the secret's hosts,
per-cell injection and taint, audit by name never value."""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ironcage_jupyter.credentials import (
    SENTINEL_PREFIX,
    CredentialBroker,
    CredentialRefused,
    CredentialSettings,
    EnvSource,
    SecretGrant,
    host_allowed,
)
from ironcage_jupyter.outputs import OutputFirewall

OPENAI = "sk-proj-Q7wE2rT9yU4iO1pA6sD3fG8hJ5kL0zX"
HF = "hf_Zx8Cv2Bn7Mq4Wr9Et1Yu6Io3Pa5Sd0Fg"
DB = "Pa55-w0rd-horse-battery-staple"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Audit:
    def __init__(self):
        self.events = []

    def __call__(self, event_type, detail):
        self.events.append((event_type, dict(detail)))

    def types(self):
        return [e for e, _ in self.events]


def make_broker(grants=None, restart_after_injection=False, firewall=None):
    grants = grants or {
        "OPENAI_API_KEY": SecretGrant(hosts=["api.openai.com"], tools=["http"], rate_per_minute=3, ttl_s=600),
        "HF_TOKEN": SecretGrant(hosts=["*.huggingface.co", "127.0.0.1"], tools=["hf_download"]),
        "DB_PASSWORD": SecretGrant(source="env:PGPASSWORD", mode="inject", cells=True, env_var="PGPASSWORD"),
    }
    audit, clock = Audit(), Clock()
    broker = CredentialBroker(
        CredentialSettings(grants=grants, restart_after_injection=restart_after_injection),
        sources={
            "env": EnvSource({"OPENAI_API_KEY": OPENAI, "HF_TOKEN": HF, "PGPASSWORD": DB, "HOME": "/root"})
        },
        audit_callback=audit,
        clock=clock,
        output_firewall=firewall,
    )
    return broker, audit, clock


def assert_no_values(audit):
    text = repr(audit.events)
    for value in (OPENAI, HF, DB):
        assert value not in text


# -- hosts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host,allowed",
    [
        ("api.example.com", True),
        ("API.Example.COM.", True),
        ("api.example.com:443", True),
        ("api.example.com.evil.net", False),
        ("evil.net/api.example.com", False),
        ("xapi.example.com", False),
        ("example.com", False),
        ("sub.api.example.com", False),
        ("files.example.org", True),
        ("a.b.files.example.org", True),
        ("example.org", False),
        ("evilexample.org", False),
        ("files.example.org.evil.net", False),
        ("127.0.0.1:8080", True),
        ("127.0.0.1:8081", False),
        ("[::1]:8080", False),
        ("", False),
    ],
)
def test_host_matching(host, allowed):
    grants = ["api.example.com", "*.example.org", "127.0.0.1:8080"]
    assert host_allowed(host, grants) is allowed


def test_wildcard_never_matches_an_ip_address():
    assert not host_allowed("10.0.0.1", ["*.0.0.1"])
    assert host_allowed("10.0.0.1", ["10.0.0.1"])


# -- brokered mode ---------------------------------------------------------------------------------------


def test_sentinel_swapped_only_toward_the_secrets_own_hosts():
    broker, audit, _ = make_broker()
    sentinel = broker.sentinel_for("OPENAI_API_KEY")
    assert sentinel.startswith(SENTINEL_PREFIX) and len(sentinel) > len(SENTINEL_PREFIX) + 16
    assert broker.sentinel_for("OPENAI_API_KEY") == sentinel

    headers = {"Authorization": f"Bearer {sentinel}", "Accept": "application/json"}
    swapped, used = broker.swap_sentinels(headers, "api.openai.com")
    assert swapped["Authorization"] == f"Bearer {OPENAI}" and used == ["OPENAI_API_KEY"]
    assert headers["Authorization"] == f"Bearer {sentinel}", "input must not be mutated"

    for host in ("api.openai.com.evil.net", "evil.net", "openai.com", "api.openai.co"):
        swapped, used = broker.swap_sentinels(headers, host)
        assert swapped == headers and used == [], host
    refusals = [d for e, d in audit.events if e == "credential.refuse"]
    assert len(refusals) == 4 and all("not among the secret's hosts" in d["reason"] for d in refusals)
    assert_no_values(audit)


def test_swap_in_bytes_str_and_header_lists():
    broker, _, _ = make_broker()
    s = broker.sentinel_for("HF_TOKEN")
    body = f'{{"token": "{s}"}}'.encode()
    assert broker.swap_sentinels(body, "cdn.huggingface.co") == (
        f'{{"token": "{HF}"}}'.encode(),
        ["HF_TOKEN"],
    )
    pairs = [("Authorization", f"Bearer {s}"), ("X-Other", "1")]
    swapped, used = broker.swap_sentinels(pairs, "cdn.huggingface.co")
    assert swapped == [("Authorization", f"Bearer {HF}"), ("X-Other", "1")] and used == ["HF_TOKEN"]
    assert broker.swap_sentinels("no sentinel here", "cdn.huggingface.co") == ("no sentinel here", [])


def test_two_sentinels_each_only_toward_its_own_hosts():
    broker, _, _ = make_broker()
    a, b = broker.sentinel_for("OPENAI_API_KEY"), broker.sentinel_for("HF_TOKEN")
    swapped, used = broker.swap_sentinels(f"{a} {b}", "api.openai.com")
    assert swapped == f"{OPENAI} {b}" and used == ["OPENAI_API_KEY"]


def test_tool_scope():
    broker, _, _ = make_broker()
    s = broker.sentinel_for("OPENAI_API_KEY")
    assert broker.swap_sentinels(s, "api.openai.com", tool="http") == (OPENAI, ["OPENAI_API_KEY"])
    assert broker.swap_sentinels(s, "api.openai.com", tool="shell") == (s, [])
    assert broker.value_for_tool("OPENAI_API_KEY", "http", "api.openai.com") == OPENAI
    with pytest.raises(CredentialRefused, match="tool 'shell' is not granted"):
        broker.value_for_tool("OPENAI_API_KEY", "shell")
    with pytest.raises(CredentialRefused, match="host 'evil.net'"):
        broker.value_for_tool("OPENAI_API_KEY", "http", "evil.net")
    with pytest.raises(CredentialRefused, match="no grant"):
        broker.value_for_tool("UNKNOWN", "http")


def test_hostless_tool_swap_checks_the_tool_grant_only():
    broker, audit, _ = make_broker()
    s = broker.sentinel_for("OPENAI_API_KEY")
    assert broker.swap_sentinels(f"key={s}", None, tool="http") == (f"key={OPENAI}", ["OPENAI_API_KEY"])
    assert broker.swap_sentinels(f"key={s}", None, tool="shell") == (f"key={s}", [])
    assert broker.swap_sentinels(f"key={s}", None) == (f"key={s}", [])
    assert "only swapped toward a host or for a granted tool" in audit.events[-1][1]["reason"]


def test_restore_sentinels_in_what_comes_back():
    broker, _, _ = make_broker()
    s = broker.sentinel_for("OPENAI_API_KEY")
    broker.swap_sentinels(f"Bearer {s}", "api.openai.com")
    echoed = {"headers": {"Authorization": f"Bearer {OPENAI}"}, "body": [f"{OPENAI}".encode()]}
    restored, names = broker.restore_sentinels(echoed)
    assert restored == {"headers": {"Authorization": f"Bearer {s}"}, "body": [s.encode()]}
    assert names == ["OPENAI_API_KEY"]
    assert broker.restore_sentinels("nothing") == ("nothing", [])


def test_a_value_too_short_to_match_is_audited():
    fw = OutputFirewall()
    broker = CredentialBroker(
        CredentialSettings(grants={"PIN": SecretGrant(mode="inject", cells=True)}),
        sources={"env": EnvSource({"PIN": "1234"})},
        audit_callback=(audit := Audit()),
        output_firewall=fw,
    )
    broker.begin_injection(["PIN"], "c")
    assert "credential.unmatchable" in audit.types()


def test_rate_limit_per_minute():
    broker, audit, clock = make_broker()
    s = broker.sentinel_for("OPENAI_API_KEY")
    for _ in range(3):
        assert broker.swap_sentinels(s, "api.openai.com")[1] == ["OPENAI_API_KEY"]
        clock.now += 5
    assert broker.swap_sentinels(s, "api.openai.com") == (s, [])
    assert "rate limit of 3 uses per minute" in audit.events[-1][1]["reason"]
    clock.now += 50  # the first use is now 60 s old
    assert broker.swap_sentinels(s, "api.openai.com")[1] == ["OPENAI_API_KEY"]


def test_ttl_expires_the_sentinel_lease_and_renewal_restores_it():
    broker, audit, clock = make_broker()
    s = broker.sentinel_for("OPENAI_API_KEY")
    clock.now += 599
    assert broker.swap_sentinels(s, "api.openai.com")[1] == ["OPENAI_API_KEY"]
    clock.now += 2
    assert broker.swap_sentinels(s, "api.openai.com") == (s, [])
    assert "lease expired" in audit.events[-1][1]["reason"]
    assert broker.sentinel_for("OPENAI_API_KEY") == s
    clock.now += 61  # clear the rate window
    assert broker.swap_sentinels(s, "api.openai.com")[1] == ["OPENAI_API_KEY"]


def test_unknown_sentinel_is_never_swapped():
    broker, _, _ = make_broker()
    broker.sentinel_for("OPENAI_API_KEY")
    forged = SENTINEL_PREFIX + "0" * 32
    assert broker.swap_sentinels(forged, "api.openai.com") == (forged, [])


def test_child_environment_has_sentinels_and_no_secrets():
    broker, _, _ = make_broker()
    wrapper_env = {
        "OPENAI_API_KEY": OPENAI,
        "HF_TOKEN": HF,
        "PGPASSWORD": DB,
        "VAULT_TOKEN": "hvs.x",
        "HOME": "/root",
    }
    env = broker.child_environment(wrapper_env)
    assert env["OPENAI_API_KEY"].startswith(SENTINEL_PREFIX)
    assert env["HF_TOKEN"].startswith(SENTINEL_PREFIX)
    assert "PGPASSWORD" not in env and "VAULT_TOKEN" not in env
    assert env["HOME"] == "/root"
    dumped = "\0".join(f"{k}={v}" for k, v in env.items())
    assert OPENAI not in dumped and HF not in dumped and DB not in dumped


def test_brokered_grant_cannot_be_injected_and_inject_grant_has_no_sentinel():
    broker, _, _ = make_broker(
        grants={
            "OPENAI_API_KEY": SecretGrant(hosts=["api.openai.com"], cells=True),
            "DB_PASSWORD": SecretGrant(source="env:PGPASSWORD", mode="inject", cells=True),
        }
    )
    with pytest.raises(CredentialRefused, match="brokered"):
        broker.begin_injection(["OPENAI_API_KEY"], "c1")
    with pytest.raises(CredentialRefused, match="no sentinel"):
        broker.sentinel_for("DB_PASSWORD")
    assert not broker.taint.tainted


# -- per-cell injection --------------------------------------------------------------------------------


def test_injection_taints_the_session_and_returns_env_to_unset():
    fw = OutputFirewall()
    broker, audit, _ = make_broker(firewall=fw)
    fw.start_cell("c1")
    env = broker.begin_injection(["DB_PASSWORD"], "c1")
    assert env == {"PGPASSWORD": DB}
    assert broker.taint.tainted and fw.cell_used_secret
    # The firewall now redacts the injected value in every form.
    out = fw.screen("stream", {"name": "stdout", "text": f"pw={DB}\n"})
    assert out.content["text"] == "pw=[REDACTED:DB_PASSWORD]\n"
    assert broker.end_injection("c1") == ["PGPASSWORD"]
    status = broker.status()
    assert status["tainted"] and status["tainted_by"] == ["DB_PASSWORD"] and not status["restart_required"]
    assert [e for e in audit.types() if e != "credential.request"] == [
        "credential.grant",
        "credential.taint",
        "credential.injection_end",
    ]
    assert_no_values(audit)
    assert DB not in repr(status)


def test_restart_after_injection_blocks_the_next_injection_until_restart():
    broker, audit, _ = make_broker(restart_after_injection=True)
    broker.begin_injection(["DB_PASSWORD"], "c1")
    broker.end_injection("c1")
    assert broker.taint.restart_required and broker.status()["restart_required"]
    with pytest.raises(CredentialRefused, match="must be restarted"):
        broker.begin_injection(["DB_PASSWORD"], "c2")
    broker.child_restarted()
    assert not broker.taint.tainted and not broker.taint.restart_required
    assert broker.begin_injection(["DB_PASSWORD"], "c3") == {"PGPASSWORD": DB}


def test_injection_is_all_or_nothing_and_needs_cells_grant():
    broker, audit, _ = make_broker()
    with pytest.raises(CredentialRefused, match="cells may not request"):
        broker.begin_injection(["DB_PASSWORD", "HF_TOKEN"], "c1")
    assert not broker.taint.tainted
    with pytest.raises(CredentialRefused, match="no grant"):
        broker.begin_injection(["NOPE"], "c1")
    assert "credential.grant" not in audit.types()


def test_audit_failure_hands_out_nothing():
    class AuditDown(Exception):
        pass

    def failing(event_type, detail):
        if event_type == "credential.grant":
            raise AuditDown("disk full")

    broker = CredentialBroker(
        CredentialSettings(
            grants={"DB_PASSWORD": SecretGrant(source="env:PGPASSWORD", mode="inject", cells=True)}
        ),
        sources={"env": EnvSource({"PGPASSWORD": DB})},
        audit_callback=failing,
    )
    with pytest.raises(AuditDown):
        broker.begin_injection(["DB_PASSWORD"], "c1")
    assert not broker.taint.tainted


def test_source_failure_is_explained_not_hidden():
    broker, audit, _ = make_broker(
        grants={
            "MISSING": SecretGrant(mode="inject", cells=True),
            "X": SecretGrant(source="vault:a#b", mode="inject", cells=True),
        }
    )
    with pytest.raises(CredentialRefused, match="environment variable MISSING is not set"):
        broker.begin_injection(["MISSING"], "c1")
    with pytest.raises(CredentialRefused, match="source 'vault' is not configured"):
        broker.begin_injection(["X"], "c1")
    assert audit.types().count("credential.source_error") == 2


# -- a real HTTP request with the sentinel --------------------------------------------------------------


class Recorder(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self):  # noqa: N802
        Recorder.seen.append(self.headers.get("Authorization", ""))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_sentinel_request_reaches_a_real_server_with_the_real_value_only_on_its_host():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Recorder.seen = []
    try:
        broker, _, _ = make_broker()
        sentinel = broker.child_environment({})["HF_TOKEN"]  # what the child's environment holds
        for host in ("127.0.0.1", "localhost"):  # only 127.0.0.1 is granted
            headers, _ = broker.swap_sentinels({"Authorization": f"Bearer {sentinel}"}, f"{host}:{port}")
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("GET", "/", headers=headers)
            assert conn.getresponse().read() == b"ok"
            conn.close()
    finally:
        server.shutdown()
        server.server_close()
    assert Recorder.seen == [f"Bearer {HF}", f"Bearer {sentinel}"]


def test_the_tools_adapter_works_over_the_kernels_credential_session():
    """kernel.credentials is a CredentialSession; the tools broker's adapter must get real swaps."""
    from ironcage_jupyter.credentials.session import CredentialSession

    adapters = pytest.importorskip("ironcage_jupyter.tools.adapters")
    session = CredentialSession(
        CredentialSettings(
            grants={"OPENAI_API_KEY": SecretGrant(hosts=["api.openai.com"], tools=["http", "mcp_search"])}
        ),
        sources={"env": EnvSource({"OPENAI_API_KEY": OPENAI})},
    )
    sentinel = session.child_env_overrides()["OPENAI_API_KEY"]
    creds = adapters.BrokeredCredentials(session)
    assert list(creds.hosts_needing_interception()) == ["api.openai.com"]
    assert creds.swap(f"Bearer {sentinel}", tool="http", host="api.openai.com") == (
        f"Bearer {OPENAI}",
        ["OPENAI_API_KEY"],
    )
    assert creds.swap(f"k={sentinel}", tool="mcp_search", host=None) == (f"k={OPENAI}", ["OPENAI_API_KEY"])
    with pytest.raises(PermissionError):
        creds.swap(f"Bearer {sentinel}", tool="http", host="evil.example")
    # the value handed out is now known to the output firewall
    out = session.screen("stream", {"name": "stdout", "text": f"{OPENAI}\n"})
    assert out.content["text"] == "[REDACTED:OPENAI_API_KEY]\n"
