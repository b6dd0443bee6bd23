"""Policy section for credentials: which secret may be used by what, where, how often, how long."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SecretGrant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hosts: list[str] = Field(default_factory=list, description="Hosts the secret may be sent to.")
    tools: list[str] = Field(default_factory=list, description="Tools that may use the secret.")
    cells: bool = Field(default=False, description="Cells may request it explicitly.")
    mode: Literal["brokered", "inject"] = "brokered"
    rate_per_minute: int | None = None
    ttl_s: float = 3600.0


class CredentialSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grants: dict[str, SecretGrant] = Field(default_factory=dict)
    restart_after_injection: bool = False
