"""Sandboxes for MCP server processes.

`build_mcp_server_command` uses the sandbox launcher (`ironcage_jupyter.sandbox.launcher`:
bubblewrap + Landlock + seccomp + rlimits, the child kernel's layers): the server's single write path
is its workspace, its read paths are read-only binds, it gets its own private socket dir and its own
network namespace with nothing but `lo`.

A server with `allowed_hosts` reaches exactly those through an egress proxy of its own in the
wrapper: the proxy listens on `egress.sock` in the server's private socket dir (bound into its
sandbox); inside, `egress_bridge.py --exec` binds 127.0.0.1:3128 (the only TCP port Landlock and
seccomp let the sandbox use), forks the bridge to that socket, and execs the server with
`HTTP(S)_PROXY` pointing at it. A server without hosts gets no port, no socket and no proxy variables:
no network at all.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import ToolRefusal
from .settings import McpServerSettings

BRIDGE_PORT = 3128
EGRESS_SOCKET_NAME = "egress.sock"
BRIDGE_SCRIPT = str(Path(__file__).resolve().parent / "egress_bridge.py")


@dataclass
class McpLaunch:
    argv: list[str]
    env: dict[str, str]
    socket_dir: Path
    cleanup: Callable[[], None]
    egress_socket: str | None = None  # where the server's egress proxy must listen before the start


def proxy_environment(port: int = BRIDGE_PORT) -> dict[str, str]:
    url = f"http://127.0.0.1:{port}"
    return {"HTTP_PROXY": url, "HTTPS_PROXY": url, "http_proxy": url, "https_proxy": url, "ALL_PROXY": url,
            "all_proxy": url, "NO_PROXY": "", "no_proxy": "", "NODE_USE_ENV_PROXY": "1"}


def build_mcp_server_command(settings: McpServerSettings) -> McpLaunch:
    """The server's argv and env inside its own sandbox; raises ToolRefusal if none can be built."""
    command = settings.command if os.path.isabs(settings.command) else shutil.which(settings.command)
    if command is None or not os.access(command, os.X_OK):
        raise ToolRefusal("mcp.bad_command", f"MCP server command not found: {settings.command}")
    from ..sandbox.launcher import SandboxError, SandboxSpec, build_sandboxed_command, release_sandbox
    from ..sandbox.settings import IsolationSettings, ResourceLimits

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
    env = {"PATH": os.environ.get("PATH", os.defpath), **settings.env}
    argv = [command, *settings.args]
    isolation: dict[str, object] = {"read_only_paths": read_only, "pass_env": sorted(settings.env)}
    egress_socket = None
    if settings.allowed_hosts:
        egress_socket = str(socket_dir / EGRESS_SOCKET_NAME)
        proxy_env = proxy_environment()
        env.update(proxy_env)
        isolation["pass_env"] = sorted({*settings.env, *proxy_env})
        isolation["loopback_ports"] = [BRIDGE_PORT]
        # The bridge runs by file path in isolated mode: standard library only, nothing of the package.
        argv = [sys.executable, "-I", BRIDGE_SCRIPT, "--socket", egress_socket, "--port", str(BRIDGE_PORT),
                "--exec", "--", *argv]
    spec = SandboxSpec(workspace=workspace, socket_dir=socket_dir,
                       isolation=IsolationSettings.model_validate(isolation), limits=ResourceLimits())
    try:
        sandboxed, child_env = build_sandboxed_command(argv, env, spec)
    except SandboxError as exc:
        shutil.rmtree(private, ignore_errors=True)
        raise ToolRefusal("mcp.no_sandbox", f"cannot sandbox MCP server: {exc}") from None

    def cleanup() -> None:
        release_sandbox(spec)
        shutil.rmtree(private, ignore_errors=True)

    return McpLaunch(sandboxed, child_env, socket_dir, cleanup, egress_socket)
