"""Scoped, just-in-time credentials: sources, grants, sentinels, per-cell injection and taint."""

from .broker import (
    SENTINEL_PREFIX,
    CredentialBroker,
    CredentialRefused,
    TaintState,
    host_allowed,
    normalize_host,
)
from .settings import CredentialSettings, SecretGrant
from .sources import (
    SECRETS_FILE_ENV,
    EnvSource,
    KeyringSource,
    SecretsFileSource,
    SecretSource,
    SourceError,
    VaultSource,
    default_sources,
)

__all__ = [
    "SECRETS_FILE_ENV",
    "SENTINEL_PREFIX",
    "CredentialBroker",
    "CredentialRefused",
    "CredentialSettings",
    "EnvSource",
    "KeyringSource",
    "SecretGrant",
    "SecretSource",
    "SecretsFileSource",
    "SourceError",
    "TaintState",
    "VaultSource",
    "default_sources",
    "host_allowed",
    "normalize_host",
]
