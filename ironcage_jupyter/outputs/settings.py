"""Policy section for the output firewall."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class OutputDetectors(BaseModel):
    """Which detectors run on child outputs. Unknown names are rejected so a typo cannot disable one."""

    model_config = ConfigDict(extra="forbid")

    known_values: bool = Field(
        default=True, description="Redact every form of each secret handed out in this session."
    )
    private_keys: bool = Field(default=True, description="Redact PEM/OpenSSH private key blocks.")
    tokens: bool = Field(
        default=True,
        description="Redact well-known token formats (cloud, VCS, chat, payment, LLM APIs, JWTs).",
    )
    entropy: bool = Field(
        default=True,
        description="Redact high-entropy values assigned to secret-looking names (key=..., token: ...).",
    )
    pii: bool = Field(default=False, description="Redact emails, Luhn-valid card numbers and US SSNs.")


class OutputSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    detectors: OutputDetectors = Field(default_factory=OutputDetectors)
    images_after_secret: Literal["withhold", "flag", "allow"] = Field(
        default="withhold",
        description="What to do with images/binary outputs of a cell that used a secret: text matching "
        "cannot see a secret drawn into a plot.",
    )
    min_secret_length: int = Field(
        default=8,
        ge=4,
        description="Encoded forms shorter than this are not matched (they would redact ordinary text).",
    )
    redact_sentinels: bool = Field(
        default=False,
        description="Also redact brokered sentinels. They are worthless outside the trusted side, so "
        "showing them is safe and lets users see which variables are brokered.",
    )
    stream_token_window: int = Field(
        default=4096,
        gt=0,
        description="Longest trailing token a stream may hold back for the typed detectors.",
    )
    stream_release_below: int = Field(
        default=4,
        ge=1,
        le=8,
        description="A stream tail that matches fewer than this many leading characters of a secret's "
        "encoded form is released at once (live output); the remainder of the form is still redacted when "
        "it arrives, so at most this-minus-one characters of a long form can pass. 1 holds every candidate "
        "(nothing passes; a trailing character may wait for the next chunk or the end of the cell).",
    )
    entropy_limit_base64: float = Field(default=4.5, ge=0, le=8)
    entropy_limit_hex: float = Field(default=3.0, ge=0, le=8)
    entropy_min_length: int = Field(default=20, ge=8)
