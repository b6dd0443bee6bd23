"""Sandboxes for MCP server processes.

`build_mcp_server_command` uses the sandbox developer's launcher
(`ironcage_jupyter.sandbox.launcher.build_sandboxed_command`: bubblewrap + Landlock + seccomp +
rlimits, the child kernel's layers) when it is installed: the server's single write path is its
workspace, its read paths are read-only binds, it gets its own private socket dir, no network.
Otherwise the INTERIM helper `build_mcp_server_argv` below (bubblewrap only, to be removed once the
launcher is on main) runs it with every namespace unshared, a read-only system, a private /tmp and
nothing else of the host but its `read_paths` (read-only) and `write_paths` (read-write).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import ToolRefusal
from .settings import McpServerSettings


def build_mcp_server_command(settings: McpServerSettings) -> tuple[list[str], dict[str, str], Callable[[], None]]:
    """(argv, env, cleanup) running the server in its own sandbox; raises ToolRefusal if none can be built."""
    command = settings.command if os.path.isabs(settings.command) else shutil.which(settings.command)
    if command is None or not os.access(command, os.X_OK):
        raise ToolRefusal("mcp.bad_command", f"MCP server command not found: {settings.command}")
    try:
        from ..sandbox.launcher import SandboxError, SandboxSpec, build_sandboxed_command, release_sandbox
        from ..sandbox.settings import IsolationSettings, ResourceLimits
    except ImportError:
        return build_mcp_server_argv(settings), dict(settings.env), lambda: None
    if len(settings.write_paths) > 1:
        raise ToolRefusal("mcp.bad_config", "an MCP server may have at most one write path (its workspace)")
    private = Path(tempfile.mkdtemp(prefix="ironcage-mcp-"))
    workspace = Path(settings.write_paths[0]) if settings.write_paths else private / "workspace"
    workspace.mkdir(exist_ok=True)
    socket_dir = private / "run"
    socket_dir.mkdir(mode=0o700)
    real_command = os.path.realpath(command)
    prefix = os.path.dirname(os.path.dirname(real_command))
    read_only = [os.path.realpath(p) for p in settings.read_paths]
    if not real_command.startswith("/usr/") and prefix not in ("/", ""):
        read_only.append(prefix)
    spec = SandboxSpec(
        workspace=workspace, socket_dir=socket_dir,
        isolation=IsolationSettings.model_validate({"read_only_paths": read_only, "pass_env": sorted(settings.env)}),
        limits=ResourceLimits(),
    )
    env = {"PATH": os.environ.get("PATH", os.defpath), **settings.env}
    try:
        argv, child_env = build_sandboxed_command([command, *settings.args], env, spec)
    except SandboxError as exc:
        shutil.rmtree(private, ignore_errors=True)
        raise ToolRefusal("mcp.no_sandbox", f"cannot sandbox MCP server: {exc}") from None

    def cleanup() -> None:
        release_sandbox(spec)
        shutil.rmtree(private, ignore_errors=True)

    return argv, child_env, cleanup

BWRAP = "/usr/bin/bwrap"
_SYSTEM_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "ssl", "ca-certificates", "alternatives", "passwd",
               "group", "nsswitch.conf", "hosts", "localtime", "mime.types")


def build_mcp_server_argv(settings: McpServerSettings) -> list[str]:
    """argv running the server inside its own bubblewrap sandbox (fails closed if bwrap is missing)."""
    if not os.path.exists(BWRAP):
        raise ToolRefusal("mcp.no_sandbox", "bubblewrap is not installed: MCP servers are not started unsandboxed")
    command = settings.command if os.path.isabs(settings.command) else shutil.which(settings.command)
    if command is None:
        raise ToolRefusal("mcp.bad_command", f"MCP server command not found: {settings.command}")
    argv = [BWRAP, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--ro-bind", "/usr", "/usr"]
    for top in ("bin", "lib", "lib64", "sbin"):
        path = "/" + top
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    for name in _SYSTEM_ETC:
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--setenv", "HOME", "/tmp",
             "--setenv", "TMPDIR", "/tmp"]
    # An interpreter installed outside /usr (pyenv, conda, a venv's base) is part of the server's code.
    real_command = os.path.realpath(command)
    prefix = os.path.dirname(os.path.dirname(real_command))
    if not real_command.startswith("/usr/") and prefix not in ("/", ""):
        argv += ["--ro-bind", prefix, prefix]
    for path in settings.read_paths:
        argv += ["--ro-bind", os.path.realpath(path), os.path.realpath(path)]
    for path in settings.write_paths:
        argv += ["--bind", os.path.realpath(path), os.path.realpath(path)]
    if settings.cwd:
        argv += ["--chdir", settings.cwd]
    argv += ["--", command, *settings.args]
    return argv
