"""MCP proxy: the wrapper talks to configured MCP servers (stdio) with the official `mcp` SDK.

Each server runs sandboxed (see mcp_sandbox.py); its tools are registered in the broker as
`server.tool`, so they pass the same pipeline as built-ins; a tool the server does not list (or the
configuration does not expose) is unknown and denied. One asyncio task owns each server's client
session for its whole life (the SDK's cancel scopes must be entered and left by the same task);
calls reach it through a queue.

A server with `allowed_hosts` gets an egress proxy of its own (made by the session's `egress_for`:
its allowlist, decided by the policy engine, audited with the server's name), listening inside the
server's private socket dir before the server starts and closed when it stops (see mcp_sandbox.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .broker import ExecutionContext, ToolBroker
from .errors import ToolRefusal
from .fs import canonical_host_path
from .mcp_sandbox import build_mcp_server_command
from .models import ToolSchema, schema_from_mcp
from .settings import McpServerSettings

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    tool: str
    arguments: dict[str, Any]
    future: asyncio.Future[Any]


EgressFactory = Callable[[str, McpServerSettings], Any]  # (server name, settings) -> an EgressProxy


class McpServer:
    def __init__(self, name: str, settings: McpServerSettings, egress_for: EgressFactory | None = None) -> None:
        if not name or "." in name:
            raise ValueError(f"MCP server name must be non-empty and contain no '.': {name!r}")
        self.name = name
        self.settings = settings
        self.tools: list[Any] = []
        self.error: str | None = None
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._cleanup: Callable[[], None] = lambda: None
        self._egress_for = egress_for
        self.egress: Any = None  # the server's own EgressProxy while it runs (allowed_hosts only)
        # The server's stderr goes to a private file: its tail explains a failed start.
        self._stderr = tempfile.TemporaryFile(mode="w+", prefix=f"ironcage-mcp-{name}-")

    def stderr_tail(self, limit: int = 2000) -> str:
        with contextlib.suppress(OSError, ValueError):
            self._stderr.flush()
            self._stderr.seek(0)
            return self._stderr.read()[-limit:]
        return ""

    async def start(self) -> None:
        self._task = asyncio.create_task(self._serve(), name=f"mcp-server-{self.name}")
        try:
            await asyncio.wait_for(self._ready.wait(), self.settings.timeout_s)
        except TimeoutError:
            self.error = f"did not start within {self.settings.timeout_s:g} s"
        if self.error is not None:
            tail = self.stderr_tail(500).strip()
            await self.stop()
            raise ToolRefusal("mcp.server_unavailable",
                              f"MCP server {self.name}: {self.error}" + (f" (stderr: {tail})" if tail else ""))

    async def _serve(self) -> None:
        try:
            # Imported here: the SDK takes about a second to import, and sessions without MCP servers
            # (and the CLI) should not pay for it.
            from mcp import Client
            from mcp.client.stdio import StdioServerParameters, stdio_client

            launch = build_mcp_server_command(self.settings)
            self._cleanup = launch.cleanup
            if launch.egress_socket is not None:
                if self._egress_for is None:
                    raise ToolRefusal("mcp.no_egress", f"MCP server {self.name} has allowed_hosts but this "
                                      "session cannot give it an egress proxy")
                self.egress = self._egress_for(self.name, self.settings)
                await self.egress.start_unix(launch.egress_socket)  # listening before the server starts
            params = StdioServerParameters(command=launch.argv[0], args=launch.argv[1:], env=launch.env or None,
                                           cwd=self.settings.cwd)
            transport = stdio_client(params, errlog=self._stderr)
            async with Client(transport, read_timeout_seconds=self.settings.timeout_s, cache=None) as client:
                tools: list[Any] = []
                cursor: str | None = None
                for _ in range(100):
                    page = await client.list_tools(cursor=cursor)
                    tools.extend(page.tools)
                    cursor = page.next_cursor
                    if cursor is None:
                        break
                self.tools = tools
                self._ready.set()
                while (item := await self._queue.get()) is not None:
                    try:
                        result = await client.call_tool(item.tool, item.arguments)
                    except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
                        if not item.future.done():
                            item.future.set_exception(exc)
                        continue
                    if not item.future.done():
                        item.future.set_result(result)
        except BaseException as exc:  # noqa: BLE001 - record why, fail every waiter
            if not isinstance(exc, asyncio.CancelledError):
                leaf: BaseException = exc
                while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
                    leaf = leaf.exceptions[0]
                self.error = getattr(leaf, "reason", None) or f"{type(leaf).__name__}: {leaf}"
                log.warning("MCP server %s stopped: %s", self.name, self.error)
            self._fail_pending()
            self._ready.set()
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self.error = self.error or "stopped"
            self._fail_pending()

    def _fail_pending(self) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None and not item.future.done():
                item.future.set_exception(ToolRefusal("mcp.server_unavailable", f"MCP server {self.name} stopped"))

    async def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        if self._task is None or self._task.done():
            raise ToolRefusal("mcp.server_unavailable", f"MCP server {self.name} is not running ({self.error})")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(tool, arguments, future))
        result = await future
        return {
            "content": [block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in result.content],
            "structured_content": result.structured_content,
            "is_error": bool(result.is_error),
        }

    async def stop(self) -> None:
        if self._stderr.closed:
            return
        if self._task is None:  # never started
            self._stderr.close()
            return
        if not self._task.done():
            await self._queue.put(None)
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 10)
            except (TimeoutError, Exception):  # noqa: BLE001
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task
        if self.egress is not None:
            with contextlib.suppress(Exception):
                await self.egress.close()
        with contextlib.suppress(Exception):
            self._cleanup()
        self._stderr.close()


def _swap_credentials(value: Any, context: ExecutionContext) -> Any:
    """Sentinels in text arguments become real values only if a grant names this tool (else refused)."""
    if isinstance(value, str):
        try:
            swapped, _used = context.credentials.swap(  # type: ignore[union-attr]
                value, tool=context.call.name, host=None, secure=True
            )
        except Exception as exc:  # noqa: BLE001 - any credential problem refuses the call
            raise ToolRefusal("credentials.refused", str(exc)) from None
        return swapped
    if isinstance(value, dict):
        return {k: _swap_credentials(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [_swap_credentials(v, context) for v in value]
    return value


class McpProxy:
    """All configured servers of one session."""

    def __init__(self, servers: dict[str, McpServerSettings], egress_for: EgressFactory | None = None) -> None:
        self.servers = {name: McpServer(name, settings, egress_for) for name, settings in servers.items()}

    async def start(self, broker: ToolBroker) -> dict[str, str]:
        """Start every server and register its tools; returns {server: error} for those that failed."""
        failures: dict[str, str] = {}
        if not self.servers:
            return failures
        # The SDK imports jsonschema lazily on the first call_tool (about 1-2 s here); pay that while the
        # servers start instead of inside the first tool call.
        warm = asyncio.create_task(asyncio.to_thread(importlib.import_module, "jsonschema"))
        results = await asyncio.gather(*(s.start() for s in self.servers.values()), return_exceptions=True)
        with contextlib.suppress(ImportError):
            await warm
        for server, result in zip(self.servers.values(), results, strict=True):
            if isinstance(result, BaseException):
                failures[server.name] = str(getattr(result, "reason", result))
                continue
            self._register(broker, server)
        return failures

    def _register(self, broker: ToolBroker, server: McpServer) -> None:
        exposed = server.settings.tools
        base = server.settings.cwd or "/"

        def canonicalize(_schema: ToolSchema, _role: str, value: str) -> str:
            return canonical_host_path(value, base)

        for tool in server.tools:
            if exposed is not None and tool.name not in exposed:
                continue
            schema = schema_from_mcp(server.name, tool.name, tool.description, dict(tool.input_schema or {}),
                                     server.settings.roles.get(tool.name, {}))

            async def execute(arguments: dict[str, Any], context: ExecutionContext,
                              _server: McpServer = server, _tool: str = tool.name) -> Any:
                if context.credentials is not None:
                    arguments = _swap_credentials(arguments, context)
                return await _server.call(_tool, arguments)

            broker.register(schema, execute, canonicalize)

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.servers.values()), return_exceptions=True)
