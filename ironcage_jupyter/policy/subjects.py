"""What the engine decides about: tool specifications, tool calls, network and credential requests, and
the context (workspace, protected paths, known tools) the hardcoded invariants need."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, get_args

from .models import ArgRole
from .paths import canonicalize

ARG_ROLES: tuple[str, ...] = get_args(ArgRole)
PATH_ROLES = ("read-path", "write-path", "delete-path")

# Secrets and persistence spots in a home directory that cells and tools must never touch.
HOME_SECRETS = (".ssh", ".aws", ".azure", ".gnupg", ".netrc", ".config/gcloud", ".kube", ".docker",
                ".git-credentials", ".pgpass", ".vault-token", ".pypirc", ".npmrc", ".config/ironcage",
                ".local/share/ironcage", ".ironcage", ".jupyter", ".ipython/profile_default/startup",
                ".local/share/jupyter/runtime")


@dataclass(frozen=True)
class ToolSpec:
    """A tool the kernel knows. `params` maps each argument name to its role; `required` names the
    arguments that must be present. Unknown tools and unknown argument names are denied."""

    name: str
    params: Mapping[str, ArgRole]
    required: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for arg, role in self.params.items():
            if role not in ARG_ROLES:
                raise ValueError(f"tool {self.name}: argument {arg!r} has unknown role {role!r}")


@dataclass(frozen=True)
class PolicyContext:
    workspace: str
    protected_paths: tuple[str, ...]
    home: str
    tools: Mapping[str, ToolSpec] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        workspace: str | os.PathLike[str],
        *,
        config_dir: str | None = None,
        policy_paths: Iterable[str] = (),
        secrets_paths: Iterable[str] = (),
        audit_dir: str | None = None,
        runtime_dir: str | None = None,
        extra_protected: Iterable[str] = (),
        tools: Iterable[ToolSpec] = (),
        home: str | None = None,
        include_defaults: bool = True,
    ) -> PolicyContext:
        """Build the context, canonicalising every protected path once (filesystem reads happen here,
        never while deciding)."""
        home = os.path.realpath(home or os.path.expanduser("~"))
        ws = os.path.realpath(os.fspath(workspace))
        protected: list[str] = []
        given = [p for p in (config_dir, audit_dir, runtime_dir) if p] + list(policy_paths) + list(secrets_paths)
        given += list(extra_protected)
        if include_defaults:
            given += [os.path.join(home, sub) for sub in HOME_SECRETS]
            try:
                from jupyter_core.paths import jupyter_runtime_dir

                given.append(jupyter_runtime_dir())
            except Exception:  # noqa: BLE001, S110 - jupyter_core missing: the home default above still applies
                pass
            from .loader import builtin_dirs

            given += [str(d) for d in builtin_dirs()]
        for path in given:
            canonical = canonicalize(str(path), ws, home)
            if canonical not in protected and canonical != "/":
                protected.append(canonical)
        return cls(ws, tuple(sorted(protected)), home, {t.name: t for t in tools})


@dataclass(frozen=True)
class NetworkRequest:
    host: str
    port: int | None = None
    scheme: str | None = None
    resolved_ip: str | None = None


@dataclass(frozen=True)
class CredentialRequest:
    name: str
    requester: str = "cell"  # "cell" or "tool:<name>"
    host: str | None = None


@dataclass(frozen=True)
class ToolCall:
    name: str
    args: Mapping[str, Any]
