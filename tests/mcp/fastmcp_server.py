"""A small MCP server for the tests (stdio), written with the SDK's MCPServer (formerly FastMCP)."""

import os
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("ironcage-test")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def echo(text: str) -> str:
    """Echo text back."""
    return text


@server.tool()
def read_secret_file(path: str) -> str:
    """Read any file the server can see (to show the server's own sandbox confines it)."""
    try:
        with open(path) as handle:
            return handle.read()
    except OSError as exc:
        return f"error: {exc.strerror}"


@server.tool()
def whoami() -> str:
    """Report the environment the server sees (pid namespace, network)."""
    import socket

    try:
        socket.create_connection(("1.1.1.1", 53), timeout=1).close()
        net = "network reachable"
    except OSError as exc:
        net = f"no network ({exc.__class__.__name__})"
    return f"pid={os.getpid()} {net} python={sys.version_info[:2]}"


@server.tool()
def fetch(url: str) -> str:
    """GET a URL with urllib (which uses HTTP_PROXY / HTTPS_PROXY when the environment sets them)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return f"{response.status} {response.read().decode('utf-8', 'replace')}"
    except urllib.error.HTTPError as exc:
        return f"refused {exc.code} {exc.headers.get('X-Ironcage-Rule')}"
    except (OSError, ValueError) as exc:
        return f"error: {type(exc).__name__}: {exc}"


if __name__ == "__main__":
    server.run("stdio")
