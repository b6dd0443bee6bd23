"""Policy section for the output firewall."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class OutputSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    detectors: dict[str, bool] = Field(
        default_factory=lambda: {"known_values": True, "private_keys": True, "tokens": True, "pii": False},
        description="Which detectors run on child outputs.",
    )
    images_after_secret: Literal["withhold", "flag", "allow"] = "withhold"
