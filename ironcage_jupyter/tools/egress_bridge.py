"""Runs INSIDE the sandbox: a loopback TCP port forwarding every connection to the egress proxy's socket.

The sandbox has no network interface but `lo`; HTTP clients only speak TCP to a proxy, so this bridge
listens on 127.0.0.1 and relays bytes to the Unix socket the wrapper bound into the sandbox. It makes
no decisions (the wrapper decides every connection). Start it as a process
(`python -m ironcage_jupyter.tools.egress_bridge --socket PATH --port 0`, which prints the port), as a
daemon thread in the child's bootstrap (`start_bridge_thread`), or in front of another program
(`python -I egress_bridge.py --socket PATH --port 3128 --exec -- CMD ARGS...`: the port is bound, a
forked bridge serves it, and CMD replaces this process with its stdio untouched; MCP servers run so).
Standard library only (it runs by file path inside sandboxes where the package is not importable).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable

CHUNK = 256 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def _serve(socket_path: str, host: str, port: int, on_ready: Callable[[int], None],
                 sock: socket.socket | None = None) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(socket_path)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (up_writer, writer):
                with contextlib.suppress(Exception):
                    w.close()

    server = await (asyncio.start_server(handle, sock=sock) if sock is not None
                    else asyncio.start_server(handle, host, port))
    on_ready(int(server.sockets[0].getsockname()[1]))
    async with server:
        await server.serve_forever()


def start_bridge_thread(socket_path: str, port: int = 0, host: str = "127.0.0.1") -> int:
    """Start the bridge in a daemon thread of the current process; returns the loopback port."""
    ready: list[int] = []
    started = threading.Event()

    def on_ready(bound: int) -> None:
        ready.append(bound)
        started.set()

    thread = threading.Thread(target=lambda: asyncio.run(_serve(socket_path, host, port, on_ready)),
                              name="ironcage-egress-bridge", daemon=True)
    thread.start()
    if not started.wait(10) or not ready:
        raise RuntimeError("egress bridge did not start")
    return ready[0]


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: the bridge ends when the program it serves ends (even outside a pid namespace)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def exec_with_bridge(socket_path: str, port: int, command: list[str]) -> None:
    """Bind 127.0.0.1:`port`, serve it from a forked bridge, and exec `command` in this process.

    The port is listening before the command starts, so its first request finds the bridge. The bridge
    keeps no copy of stdin/stdout (they are the command's: an MCP server's stdio transport)."""
    if not command:
        raise SystemExit("--exec needs a command")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the bridge
        try:
            _die_with_parent()
            if os.getppid() != parent:
                os._exit(0)
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            asyncio.run(_serve(socket_path, "127.0.0.1", port, lambda _bound: None, sock=listener))
        finally:  # a forked child never returns into the caller's code
            os._exit(0)
    listener.close()
    os.execvp(command[0], command)  # noqa: S606 - the configured server command, as argv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--socket", required=True, help="Unix socket of the wrapper's egress proxy")
    parser.add_argument("--port", type=int, default=0, help="loopback port to listen on (0: any)")
    parser.epilog = "--exec [--] CMD ARGS...: run CMD with the bridge serving the port (the rest of the line)"
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] | None = None
    if "--exec" in argv:
        at = argv.index("--exec")
        argv, command = argv[:at], argv[at + 1 :]
        command = command[1:] if command[:1] == ["--"] else command
    args = parser.parse_args(argv)
    if command is not None:
        exec_with_bridge(args.socket, args.port, command)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.socket, "127.0.0.1", args.port, lambda bound: print(bound, flush=True)))
    return 0


def start_bridge_from_env() -> int | None:
    """Child bootstrap hook: start the bridge if $IRONCAGE_EGRESS_SOCKET and $IRONCAGE_EGRESS_PORT are set."""
    import os

    socket_path = os.environ.get("IRONCAGE_EGRESS_SOCKET")
    port = os.environ.get("IRONCAGE_EGRESS_PORT")
    if not socket_path or not port:
        return None
    return start_bridge_thread(socket_path, int(port))


if __name__ == "__main__":
    sys.exit(main())
