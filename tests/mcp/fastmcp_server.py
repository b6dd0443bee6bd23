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


if __name__ == "__main__":
    server.run("stdio")
