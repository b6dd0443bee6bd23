"""Runs INSIDE the sandbox: a loopback TCP port forwarding every connection to the egress proxy's socket.

The sandbox has no network interface but `lo`; HTTP clients only speak TCP to a proxy, so this bridge
listens on 127.0.0.1 and relays bytes to the Unix socket the wrapper bound into the sandbox. It makes
no decisions (the wrapper decides every connection). Start it as a process
(`python -m ironcage_jupyter.tools.egress_bridge --socket PATH --port 0`, which prints the port) or
as a daemon thread in the child's bootstrap (`start_bridge_thread`). Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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


async def _serve(socket_path: str, host: str, port: int, on_ready: Callable[[int], None]) -> None:
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

    server = await asyncio.start_server(handle, host, port)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--socket", required=True, help="Unix socket of the wrapper's egress proxy")
    parser.add_argument("--port", type=int, default=0, help="loopback port to listen on (0: any)")
    args = parser.parse_args(argv)
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
