"""Policy section for the input firewall (`firewall:` in a policy file)."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .bandit_runner import DEFAULT_SKIP


def _check_regexes(patterns: list[str]) -> list[str]:
    for index, pattern in enumerate(patterns):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"item {index}: invalid regular expression {pattern!r}: {exc}") from None
    return patterns


class FirewallSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bandit: bool = Field(default=True, description="Also run bandit in-process on every cell (`# nosec` is ignored).")
    bandit_skip: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SKIP),
        description="bandit test ids not run (they say nothing about safety in a notebook).",
    )
    disabled_checks: list[str] = Field(
        default_factory=list,
        description="Finding ids (glob patterns, e.g. `BANDIT-B3*`) dropped from screening results. Dropping "
        "a check loosens the policy.",
    )
    max_cell_bytes: int = Field(
        default=1_000_000, gt=0,
        description="Cells larger than this get an `IC-SIZE-001` finding (category `oversize`).",
    )
    max_decode_depth: int = Field(
        default=3, ge=1, le=8,
        description="How many nested literal payloads (exec of base64 of exec ...) are decoded and re-screened.",
    )
    extra_injection_patterns: list[str] = Field(
        default_factory=list,
        description="Extra regular expressions (case-insensitive) reported as prompt-injection markers.",
    )
    extra_sensitive_paths: list[str] = Field(
        default_factory=list,
        description="Extra regular expressions matched against string literals, reported as `IC-PATH-100`.",
    )

    _validate_regexes = field_validator("extra_injection_patterns", "extra_sensitive_paths")(_check_regexes)
