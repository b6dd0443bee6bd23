"""Policy sections for the sandbox: which isolation layers are required, and resource limits."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Layer = Literal["process", "filesystem", "network", "syscall"]
ALL_LAYERS: tuple[Layer, ...] = ("process", "filesystem", "network", "syscall")


class IsolationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    required_layers: list[Layer] = Field(
        default_factory=lambda: list(ALL_LAYERS),
        description="Layers that must prove themselves active before the first cell runs.",
    )
    unsafe: bool = Field(
        default=False,
        description="Run cells even when required layers are missing. Loudly reported and audited.",
    )
    read_only_paths: list[str] = Field(
        default_factory=list,
        description="Extra host paths bound read-only into the sandbox (data outside the workspace).",
    )
    allow_degraded: bool = Field(
        default=True,
        description=(
            "Where user namespaces are refused (Docker, AppArmor, Binder), start the child with Landlock,"
            " seccomp and rlimits only; the selftest reports process/network as degraded or missing."
        ),
    )
    loopback_ports: list[int] = Field(
        default_factory=list,
        description=(
            "TCP ports the child may bind and connect to on its private loopback (e.g. the tool egress"
            " bridge). Only honoured inside a network namespace; every other TCP/UDP socket stays refused."
        ),
    )
    pass_env: list[str] = Field(
        default_factory=list,
        description="Environment variable names passed to the child besides the built-in allowlist.",
    )


class ResourceLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cell_timeout_s: float = Field(default=600.0, gt=0, description="Wall-clock limit per cell.")
    memory_mb: int = Field(default=4096, gt=0, description="Memory limit of the child kernel.")
    max_processes: int = Field(default=64, gt=0, description="Processes/threads the child may create.")
    cpu_seconds: int | None = Field(default=None, description="CPU seconds per child process (RLIMIT_CPU).")
    output_max_bytes: int = Field(default=10_000_000, gt=0, description="Output kept per cell.")
    max_open_files: int = Field(
        default=4096, gt=16, description="Open file descriptors per process (RLIMIT_NOFILE)."
    )
    max_file_size_mb: int = Field(
        default=10_240, gt=0, description="Largest file the child may write (RLIMIT_FSIZE)."
    )
