"""Wrapper-side channels into the broker: the Unix socket server for code in the sandbox, the comm
request handler for agents outside the kernel, and the `%ironcage tools` table.

Socket protocol (JSON lines, one request per line, replies in order):
  {"op": "call", "name": "fs.read", "arguments": {...}, "call_id": "..."}  -> ToolOutcome as JSON
  {"op": "list"}                                                         -> {"ok": true, "tools": [...]}
Malformed input gets an error reply; the connection (and the wrapper) survive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import os
from collections.abc import Callable
from typing import Any

from .broker import ToolBroker

MAX_LINE_BYTES = 4 * 1024 * 1024
CommContext = Callable[[], dict[str, Any]]


def describe_tools(broker: ToolBroker) -> list[dict[str, Any]]:
    """Every tool with its arguments, roles and what the policy would do with a call to it."""
    rows = []
    for schema in broker.schemas():
        decision = broker.preview(schema.name)
        rows.append({
            "name": schema.name,
            "description": schema.description,
            "source": schema.source,
            "arguments": [
                {"name": a.name, "types": list(a.types), "role": a.role, "required": a.required}
                for a in schema.arguments.values()
            ],
            "policy": {"effect": decision.effect, "rules": list(decision.rules), "reason": decision.reason},
        })
    return rows


def _error(reason: str, request_id: Any = None, rule: str = "schema.malformed_request") -> dict[str, Any]:
    reply: dict[str, Any] = {"ok": False, "refusal": {"rule": rule, "reason": reason, "stage": "channel"}}
    if request_id is not None:
        reply["id"] = request_id
    return reply


async def handle_request(broker: ToolBroker, data: Any, origin: str, cell_id: str | None = None) -> dict[str, Any]:
    """One request from any channel -> reply dict (never raises)."""
    if not isinstance(data, dict):
        return (await broker.call_raw(data, origin=origin)).to_reply()  # refused and audited
    request_id = data.get("id")
    op = data.get("op", "call")
    try:
        if op == "list":
            reply: dict[str, Any] = {"ok": True, "tools": describe_tools(broker)}
        elif op == "call":
            payload = {k: v for k, v in data.items() if k not in ("op", "id")}
            if cell_id and "cell_id" not in payload:
                payload["cell_id"] = cell_id
            outcome = await broker.call_raw(payload, origin=origin)
            reply = outcome.to_reply()
        else:
            return _error(f"unknown op {op!r} (expected 'call' or 'list')", request_id)
    except Exception as exc:  # noqa: BLE001 - the broker fails closed already; this is the last net
        return _error(f"internal error: {type(exc).__name__}", request_id, rule="tools.internal_error")
    if request_id is not None:
        reply["id"] = request_id
    return reply


async def handle_comm_request(broker: ToolBroker, data: Any) -> dict[str, Any]:
    """Comm target `ironcage.tools`: `data` is the comm message's data; the return value is sent back as
    the reply message's data. Request: {"op": "call", "name", "arguments", "call_id"} or {"op": "list"}."""
    return await handle_request(broker, data, origin="comm")


class ToolChannelServer:
    """asyncio Unix socket server in the wrapper; its directory is bind-mounted into the sandbox."""

    def __init__(self, broker: ToolBroker, context: CommContext | None = None) -> None:
        self.broker = broker
        self.context = context  # returns e.g. {"cell_id": ...} of the cell running now
        self._server: asyncio.base_events.Server | None = None
        self._extra: list[asyncio.Task[asyncio.base_events.Server]] = []
        self.path: str | None = None

    async def start(self, path: str) -> str:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._server = await asyncio.start_unix_server(self._handle, path=path, limit=MAX_LINE_BYTES)
        # Owner only: the sandbox reaches it as the same host uid (user namespaces map ids, the kernel
        # checks the host uid); no other local user may drive tools through it.
        os.chmod(path, 0o600)
        self.path = path
        return path

    def listen_sync(self, path: str) -> str:
        """Also listen at `path` (e.g. inside a new child's runtime dir); callable from sync code on the
        loop's thread: the socket is bound and listening before this returns."""
        self._extra.append(_listen_unix_sync(path, self._handle, MAX_LINE_BYTES))
        return path

    async def close(self) -> None:
        servers = [s for s in [self._server] if s is not None] + [await t for t in self._extra]
        self._extra.clear()
        self._server = None
        for server in servers:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as exc:
                    if not exc.partial.strip():
                        break
                    line = exc.partial
                except asyncio.LimitOverrunError:
                    writer.write((json.dumps(_error(f"request line over {MAX_LINE_BYTES} bytes")) + "\n").encode())
                    await writer.drain()
                    break
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                except (ValueError, UnicodeDecodeError) as exc:
                    reply = _error(f"malformed JSON: {exc}")
                else:
                    cell_id = None
                    if self.context is not None:
                        with contextlib.suppress(Exception):
                            cell_id = self.context().get("cell_id")
                    reply = await handle_request(self.broker, data, origin="cell", cell_id=cell_id)
                writer.write((json.dumps(reply, default=str) + "\n").encode())
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


def _listen_unix_sync(path: str, handler: Any, limit: int) -> asyncio.Task[asyncio.base_events.Server]:
    import socket

    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o600)
    sock.listen(64)
    sock.setblocking(False)
    # Connections queue in the backlog until the server task attaches to the bound socket.
    return asyncio.get_running_loop().create_task(asyncio.start_unix_server(handler, sock=sock, limit=limit))


def render_tools_table(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """(text/plain, text/html) for `%ironcage tools`; `rows` come from describe_tools(broker)."""
    header = ("tool", "source", "arguments (role)", "policy", "rule")
    body = []
    for row in rows:
        arguments = ", ".join(
            f"{a['name']}{'' if a['required'] else '?'} ({a['role']})" for a in row["arguments"]
        ) or "-"
        body.append((row["name"], row["source"], arguments, row["policy"]["effect"],
                     ",".join(row["policy"]["rules"]) or "-"))
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if not body:
        lines.append("(no tools configured)")
    text = "\n".join(lines)
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in body)
    markup = f'<table class="ironcage-tools"><thead><tr>{cells}</tr></thead><tbody>{trs}</tbody></table>'
    return text, markup
