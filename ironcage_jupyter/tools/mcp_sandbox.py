"""INTERIM sandbox for MCP server processes — to be replaced by the sandbox developer's launcher.

TODO(issue 3): replace `build_mcp_server_argv` with
`ironcage_jupyter.sandbox.launcher.build_sandboxed_command` once it lands on main (same layers as the
child kernel: Landlock, seccomp, rlimits). Until then this is bubblewrap only: every namespace
unshared (no network), a read-only system (/usr and a few /etc files), a private /tmp, and nothing
else from the host but the server's own `read_paths` (read-only) and `write_paths` (read-write).
"""

from __future__ import annotations

import os
import shutil

from .errors import ToolRefusal
from .settings import McpServerSettings

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
