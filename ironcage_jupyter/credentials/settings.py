"""Policy section for credentials: which secret may be used by what, where, how often, how long."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SOURCE_KINDS = ("env", "file", "keyring", "vault")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class SecretGrant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str | None = Field(
        default=None,
        description="Where the value comes from: 'env:NAME' (the wrapper's launch environment), "
        "'file:KEY' (IRONCAGE_SECRETS_FILE, dotted TOML key), 'keyring:SERVICE/USERNAME', "
        "'vault:PATH#FIELD' (KV v2). Default: 'env:<secret name>'. No fallback between sources.",
    )
    hosts: list[str] = Field(
        default_factory=list,
        description="Hosts the secret may be sent to: exact names, '*.example.com' (subdomains only, "
        "never an IP address), optional ':port'.",
    )
    tools: list[str] = Field(default_factory=list, description="Tools that may use the secret.")
    cells: bool = Field(default=False, description="Cells may request it explicitly.")
    mode: Literal["brokered", "inject"] = Field(
        default="brokered",
        description="brokered: the child only sees a sentinel the trusted side swaps toward 'hosts'; "
        "inject: '%%ironcage with-secret' may put the real value into one cell's environment.",
    )
    env_var: str | None = Field(
        default=None,
        description="Environment variable the child sees (the sentinel, or the injected value). "
        "Default: the secret name.",
    )
    rate_per_minute: int | None = Field(default=None, gt=0, description="Uses allowed per 60 s.")
    ttl_s: float = Field(default=3600.0, gt=0, description="How long a grant (lease) lasts.")

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str | None) -> str | None:
        if value is None:
            return value
        kind, sep, ref = value.partition(":")
        if not sep or kind not in SOURCE_KINDS or not ref:
            raise ValueError(f"source must be one of {', '.join(k + ':...' for k in SOURCE_KINDS)}")
        return value

    @field_validator("env_var")
    @classmethod
    def _valid_env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError("env_var must be a valid environment variable name")
        return value

    @field_validator("hosts")
    @classmethod
    def _lower_hosts(cls, hosts: list[str]) -> list[str]:
        out = []
        for host in hosts:
            host = host.strip().lower().rstrip(".")
            if not host or "/" in host or "@" in host:
                raise ValueError(f"not a host name: {host!r}")
            out.append(host)
        return out


class CredentialSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grants: dict[str, SecretGrant] = Field(default_factory=dict)
    restart_after_injection: bool = Field(
        default=False,
        description="After a '%%ironcage with-secret' cell, refuse further cells until the child is "
        "restarted (a secret cannot be erased from a running process).",
    )
    vault_mount: str = Field(default="secret", description="KV v2 mount point for 'vault:' sources.")
