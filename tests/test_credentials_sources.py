"""Secret sources: launch environment, secrets file (permission refusals), keyring, Vault KV v2."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ironcage_jupyter.credentials import (
    CredentialBroker,
    CredentialRefused,
    CredentialSettings,
    EnvSource,
    KeyringSource,
    SecretGrant,
    SecretsFileSource,
    SourceError,
    VaultSource,
)

VALUE = "sk-test-8Hq2Lx9Vb4Nm7Kc1Rt5Zw3Py6"


def write_secrets(tmp_path, mode=0o600, body=None):
    path = tmp_path / "secrets.toml"
    path.write_text(
        body if body is not None else f'OPENAI_API_KEY = "{VALUE}"\n[db]\npassword = "pw-{VALUE}"\n'
    )
    os.chmod(path, mode)
    return path


def test_env_source_reads_launch_environment_and_explains_missing():
    src = EnvSource({"OPENAI_API_KEY": VALUE, "EMPTY": ""})
    assert src.fetch("OPENAI_API_KEY") == VALUE
    with pytest.raises(SourceError, match="not set"):
        src.fetch("MISSING")
    with pytest.raises(SourceError, match="empty"):
        src.fetch("EMPTY")


def test_secrets_file_0600_is_read(tmp_path):
    src = SecretsFileSource(write_secrets(tmp_path))
    assert src.fetch("OPENAI_API_KEY") == VALUE
    assert src.fetch("db.password") == f"pw-{VALUE}"
    with pytest.raises(SourceError, match="no key 'nope'"):
        src.fetch("nope")


def test_secrets_file_from_environment_variable(tmp_path):
    path = write_secrets(tmp_path)
    assert (
        SecretsFileSource.from_environ({"IRONCAGE_SECRETS_FILE": str(path)}).fetch("OPENAI_API_KEY") == VALUE
    )
    with pytest.raises(SourceError, match="IRONCAGE_SECRETS_FILE is not set"):
        SecretsFileSource.from_environ({}).fetch("OPENAI_API_KEY")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666, 0o700 | 0o004])
def test_secrets_file_readable_by_others_is_refused(tmp_path, mode):
    src = SecretsFileSource(write_secrets(tmp_path, mode))
    with pytest.raises(SourceError) as info:
        src.fetch("OPENAI_API_KEY")
    assert f"{mode:04o}" in str(info.value) and "chmod 600" in str(info.value)
    assert VALUE not in str(info.value)


def test_secrets_file_owned_by_someone_else_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to chown a file to another user")
    path = write_secrets(tmp_path)
    os.chown(path, 65534, 65534)
    with pytest.raises(SourceError, match="owned by uid 65534, not by you"):
        SecretsFileSource(path).fetch("OPENAI_API_KEY")


def test_secrets_file_symlink_and_missing_and_bad_toml(tmp_path):
    real = write_secrets(tmp_path)
    link = tmp_path / "link.toml"
    link.symlink_to(real)
    with pytest.raises(SourceError, match="symlink"):
        SecretsFileSource(link).fetch("OPENAI_API_KEY")
    with pytest.raises(SourceError, match="cannot be read"):
        SecretsFileSource(tmp_path / "absent.toml").fetch("OPENAI_API_KEY")
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(SourceError, match="not valid TOML"):
        SecretsFileSource(write_secrets(bad, body="KEY = 'unterminated\n")).fetch("KEY")


def test_failing_source_does_not_fall_back_to_another(tmp_path):
    """The grant says file; the same name in the environment must NOT be used instead."""
    audit = []
    settings = CredentialSettings(
        grants={
            "OPENAI_API_KEY": SecretGrant(
                source="file:OPENAI_API_KEY", tools=["http"], hosts=["api.openai.com"]
            )
        }
    )
    broker = CredentialBroker(
        settings,
        sources={
            "env": EnvSource({"OPENAI_API_KEY": VALUE}),
            "file": SecretsFileSource(write_secrets(tmp_path, 0o644)),
        },
        audit_callback=lambda e, d: audit.append((e, d)),
    )
    with pytest.raises(CredentialRefused, match="unavailable from file: .*mode 0644"):
        broker.value_for_tool("OPENAI_API_KEY", "http", "api.openai.com")
    assert [e for e, _ in audit] == ["credential.request", "credential.source_error", "credential.refuse"]
    assert VALUE not in repr(audit)


class MemoryKeyring:
    """A keyring backend object with the keyring API (get_password)."""

    def __init__(self, store):
        self.store = store

    def get_password(self, service, username):
        return self.store.get((service, username))


def test_keyring_source_through_backend():
    src = KeyringSource(MemoryKeyring({("openai", "me"): VALUE}))
    assert src.fetch("openai/me") == VALUE
    with pytest.raises(SourceError, match="no password for service 'openai', user 'you'"):
        src.fetch("openai/you")
    with pytest.raises(SourceError, match="SERVICE/USERNAME"):
        src.fetch("openai")


def test_keyring_source_with_the_keyring_package_default_backend():
    keyring = pytest.importorskip("keyring")
    from keyring.backend import KeyringBackend

    class InMemory(KeyringBackend):
        priority = 1

        def __init__(self):
            super().__init__()
            self.data = {("svc", "user"): VALUE}

        def get_password(self, service, username):
            return self.data.get((service, username))

        def set_password(self, service, username, password):
            self.data[(service, username)] = password

        def delete_password(self, service, username):
            self.data.pop((service, username), None)

    previous = keyring.get_keyring()
    keyring.set_keyring(InMemory())
    try:
        assert KeyringSource().fetch("svc/user") == VALUE
    finally:
        keyring.set_keyring(previous)


class FakeVault(BaseHTTPRequestHandler):
    """Serves the KV v2 read endpoint (GET /v1/<mount>/data/<path>) as Vault documents it."""

    token = "hvs.test-token"
    secrets = {("secret", "apps/openai"): {"api_key": VALUE}}

    def do_GET(self):  # noqa: N802
        if self.headers.get("X-Vault-Token") != self.token:
            return self._reply(403, {"errors": ["permission denied"]})
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) < 4 or parts[0] != "v1" or parts[2] != "data":
            return self._reply(404, {"errors": []})
        data = self.secrets.get((parts[1], "/".join(parts[3:])))
        if data is None:
            return self._reply(404, {"errors": []})
        return self._reply(
            200,
            {
                "request_id": "x",
                "data": {"data": data, "metadata": {"version": 1, "deletion_time": "", "destroyed": False}},
            },
        )

    def _reply(self, status, body):
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def vault_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeVault)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_vault_kv_v2_read_through_hvac(vault_url):
    pytest.importorskip("hvac")
    src = VaultSource(url=vault_url, token=FakeVault.token)
    assert src.fetch("apps/openai#api_key") == VALUE
    with pytest.raises(SourceError, match="no string field 'other'"):
        src.fetch("apps/openai#other")
    with pytest.raises(SourceError, match="InvalidPath"):
        src.fetch("apps/missing#api_key")
    with pytest.raises(SourceError, match="PATH#FIELD"):
        src.fetch("apps/openai")


def test_vault_wrong_token_and_unreachable_server_and_missing_config(vault_url):
    pytest.importorskip("hvac")
    with pytest.raises(SourceError, match="Forbidden"):
        VaultSource(url=vault_url, token="wrong").fetch("apps/openai#api_key")
    with pytest.raises(SourceError, match="failed: ConnectionError"):
        VaultSource(url="http://127.0.0.1:9", token="t", timeout_s=2).fetch("apps/openai#api_key")
    with pytest.raises(SourceError, match="VAULT_ADDR"):
        VaultSource(environ={}).fetch("a#b")
    with pytest.raises(SourceError, match="VAULT_TOKEN"):
        VaultSource(environ={"VAULT_ADDR": vault_url}).fetch("a#b")


def test_grant_source_validation():
    with pytest.raises(ValueError, match="source must be one of"):
        SecretGrant(source="ftp:thing")
    with pytest.raises(ValueError, match="not a host name"):
        SecretGrant(hosts=["https://api.example.com/"])
    with pytest.raises(ValueError, match="env_var"):
        SecretGrant(env_var="BAD-NAME")
