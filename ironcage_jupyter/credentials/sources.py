"""Where secret values come from. Each source either returns the value or raises ``SourceError`` with a
reason the user can act on. There is no fallback from one source to another.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

SECRETS_FILE_ENV = "IRONCAGE_SECRETS_FILE"


class SourceError(Exception):
    """A secret could not be read from its source. The message says why (never the value)."""


class SecretSource(Protocol):
    kind: str

    def fetch(self, ref: str) -> str: ...


class EnvSource:
    """The wrapper's launch environment, snapshotted when the session starts."""

    kind = "env"

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = dict(os.environ if environ is None else environ)

    def fetch(self, ref: str) -> str:
        value = self._environ.get(ref)
        if value is None:
            raise SourceError(f"environment variable {ref} is not set in the wrapper's launch environment")
        if not value:
            raise SourceError(f"environment variable {ref} is empty")
        return value


class SecretsFileSource:
    """A TOML file named by ``IRONCAGE_SECRETS_FILE``; refused unless 0600/0400 and owned by us."""

    kind = "file"

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path else None
        self._data: dict[str, Any] | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> SecretsFileSource:
        env = os.environ if environ is None else environ
        return cls(env.get(SECRETS_FILE_ENV) or None)

    def check_permissions(self) -> None:
        if self.path is None:
            raise SourceError(f"no secrets file: {SECRETS_FILE_ENV} is not set")
        try:
            st = os.lstat(self.path)
        except OSError as exc:
            raise SourceError(f"secrets file {self.path} cannot be read: {exc.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            raise SourceError(f"secrets file {self.path} is a symlink; refusing it (point to the real file)")
        if not stat.S_ISREG(st.st_mode):
            raise SourceError(f"secrets file {self.path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise SourceError(
                f"secrets file {self.path} is owned by uid {st.st_uid}, not by you (uid {os.geteuid()}); "
                "refusing it"
            )
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise SourceError(
                f"secrets file {self.path} has mode {mode:04o}; it must not be readable or writable by "
                f"group or others (run: chmod 600 {self.path})"
            )

    def _load(self) -> dict[str, Any]:
        if self._data is None:
            self.check_permissions()
            assert self.path is not None
            try:
                with open(self.path, "rb") as fh:
                    self._data = tomllib.load(fh)
            except tomllib.TOMLDecodeError as exc:
                raise SourceError(f"secrets file {self.path} is not valid TOML: {exc}") from None
            except OSError as exc:
                raise SourceError(f"secrets file {self.path} cannot be read: {exc.strerror}") from None
        return self._data

    def fetch(self, ref: str) -> str:
        node: Any = self._load()
        for part in ref.split("."):
            if not isinstance(node, dict) or part not in node:
                raise SourceError(f"secrets file {self.path} has no key {ref!r}")
            node = node[part]
        if not isinstance(node, str) or not node:
            raise SourceError(f"secrets file {self.path}: key {ref!r} is not a non-empty string")
        return node


class KeyringSource:
    """The OS keyring through the ``keyring`` package (extra: ``ironcage-jupyter[keyring]``).

    ``ref`` is ``SERVICE/USERNAME``.
    """

    kind = "keyring"

    def __init__(self, backend: Any | None = None) -> None:
        self._backend = backend

    def fetch(self, ref: str) -> str:
        service, sep, username = ref.rpartition("/")
        if not sep or not service or not username:
            raise SourceError(f"keyring reference {ref!r} must be SERVICE/USERNAME")
        backend = self._backend
        if backend is None:
            try:
                import keyring
            except ImportError:
                raise SourceError(
                    "the keyring package is not installed (pip install 'ironcage-jupyter[keyring]')"
                ) from None
            backend = keyring.get_keyring()
        try:
            value = backend.get_password(service, username)
        except Exception as exc:
            raise SourceError(f"keyring backend failed: {type(exc).__name__}: {exc}") from None
        if not value:
            raise SourceError(f"keyring has no password for service {service!r}, user {username!r}")
        return str(value)


class VaultSource:
    """HashiCorp Vault KV v2 through ``hvac`` (extra: ``ironcage-jupyter[vault]``).

    ``ref`` is ``PATH#FIELD``; the address and token come from ``VAULT_ADDR`` / ``VAULT_TOKEN`` of the
    launch environment unless given.
    """

    kind = "vault"

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        mount_point: str = "secret",
        client: Any | None = None,
        environ: Mapping[str, str] | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        env = os.environ if environ is None else environ
        self.url = url or env.get("VAULT_ADDR")
        self._token = token or env.get("VAULT_TOKEN")
        self.mount_point = mount_point
        self.timeout_s = timeout_s
        self._client = client

    def _get_client(self) -> Any:
        if self._client is not None:
            return self._client
        if not self.url:
            raise SourceError("Vault address unknown: set VAULT_ADDR in the launch environment")
        if not self._token:
            raise SourceError("Vault token unknown: set VAULT_TOKEN in the launch environment")
        try:
            import hvac
        except ImportError:
            raise SourceError(
                "the hvac package is not installed (pip install 'ironcage-jupyter[vault]')"
            ) from None
        self._client = hvac.Client(url=self.url, token=self._token, timeout=self.timeout_s)
        return self._client

    def fetch(self, ref: str) -> str:
        path, sep, field = ref.partition("#")
        if not sep or not path or not field:
            raise SourceError(f"vault reference {ref!r} must be PATH#FIELD")
        client = self._get_client()
        try:
            response = client.secrets.kv.v2.read_secret_version(
                path=path, mount_point=self.mount_point, raise_on_deleted_version=True
            )
        except Exception as exc:
            # hvac raises InvalidPath (404), Forbidden (403), requests' ConnectionError, ...
            raise SourceError(
                f"Vault read of {self.mount_point}/{path} failed: {type(exc).__name__}: {_first_line(exc)}"
            ) from None
        try:
            data = response["data"]["data"]
        except (KeyError, TypeError):
            raise SourceError(f"Vault answer for {self.mount_point}/{path} is not a KV v2 secret") from None
        value = data.get(field) if isinstance(data, dict) else None
        if not isinstance(value, str) or not value:
            raise SourceError(f"Vault secret {self.mount_point}/{path} has no string field {field!r}")
        return value


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


def default_sources(
    environ: Mapping[str, str] | None = None, vault_mount: str = "secret"
) -> dict[str, SecretSource]:
    """The four sources, configured from the wrapper's launch environment."""
    return {
        "env": EnvSource(environ),
        "file": SecretsFileSource.from_environ(environ),
        "keyring": KeyringSource(),
        "vault": VaultSource(environ=environ, mount_point=vault_mount),
    }
