"""Data types produced by the input firewall: findings, magic uses and the screening result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["low", "medium", "high", "critical"]

SEVERITY_RANK: dict[str, int] = {"low": 1, "medium": 2, "high": 3, "critical": 4}

CATEGORIES: tuple[str, ...] = (
    "shell",
    "dynamic_code",
    "dangerous_module",
    "reflection",
    "deserialization",
    "sensitive_path",
    "secret_access",
    "exfiltration",
    "network",
    "prompt_injection",
    "parse_error",
    "oversize",
    "bandit",
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the firewall noticed. `id` is stable (rules match on it); `message` is for humans."""

    id: str
    category: str
    severity: Severity
    line: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "category": self.category,
            "severity": self.severity,
            "line": self.line,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class MagicUse:
    """A magic or shell escape found after IPython's input transformation.

    kind: "line" (`%name`), "cell" (`%%name`) or "shell" (`!cmd`, `!!cmd`, `x = !cmd`).
    shell: the magic runs a shell or another interpreter (`!`, `%%bash`, `%sx`, `%ls` ...).
    commands: first word of every shell command in it (`!ls; curl x` -> ["ls", "curl"]).
    literal: False when name/arguments were not string literals (decided as unknown).
    """

    name: str
    kind: Literal["line", "cell", "shell"]
    line: int
    args: str = ""
    shell: bool = False
    commands: tuple[str, ...] = ()
    literal: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "line": self.line,
            "args": self.args[:200],
            "shell": self.shell,
            "commands": list(self.commands),
        }

    @property
    def display(self) -> str:
        if self.kind == "shell":
            return f"!{self.args[:80]}"
        prefix = "%%" if self.kind == "cell" else "%"
        return f"{prefix}{self.name} {self.args[:60]}".rstrip()


@dataclass(frozen=True, slots=True)
class PathUse:
    """A string literal in the cell that looks like a filesystem path (checked against protected paths)."""

    path: str
    line: int


@dataclass(slots=True)
class ScreenResult:
    """What `screen_cell` returns. `transformed` is the code after IPython's input transformation."""

    raw: str
    transformed: str
    findings: list[Finding] = field(default_factory=list)
    magics: list[MagicUse] = field(default_factory=list)
    paths: list[PathUse] = field(default_factory=list)
    parsed: bool = True

    @property
    def max_severity(self) -> str | None:
        if not self.findings:
            return None
        return max(self.findings, key=lambda f: SEVERITY_RANK[f.severity]).severity

    def to_dict(self) -> dict[str, Any]:
        return {
            "findings": [f.to_dict() for f in self.findings],
            "magics": [m.to_dict() for m in self.magics],
            "parsed": self.parsed,
        }
