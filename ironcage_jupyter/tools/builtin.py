"""Built-in tools: fs.read / fs.write / fs.list (see fs.py) and http.request.

http.request decides the destination with the NetworkGate, then connects to the very address that was
checked (the URL's host is replaced by the pinned IP; `Host` and TLS SNI / certificate verification
keep the name), so DNS rebinding between the check and the connection changes nothing. Redirects are
returned, never followed (each hop would need its own decision). Brokered credentials: sentinels in
the URL, headers and body are swapped by the credentials hook for this host only, and only over HTTPS;
real values in the response (headers and body) are turned back into sentinels before it is returned.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .broker import ExecutionContext, ToolBroker
from .errors import ToolExecutionError, ToolRefusal
from .fs import FS_SCHEMAS, ConfinedFs
from .models import ArgumentSpec, ToolSchema
from .netguard import DestinationRefused, NetworkGate
from .restore import restore_complete

if TYPE_CHECKING:
    import httpx

HTTP_SCHEMA = ToolSchema(
    name="http.request",
    description="An HTTP(S) request to an allowed host; credentials are attached per grant by the wrapper.",
    arguments={
        "url": ArgumentSpec(name="url", role="url", required=True),
        "method": ArgumentSpec(name="method", enum=("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")),
        "headers": ArgumentSpec(name="headers", types=("object",)),
        "body": ArgumentSpec(name="body"),
    },
)

_FORBIDDEN_HEADERS = {"host", "connection", "proxy-authorization", "proxy-connection", "transfer-encoding",
                      "content-length", "upgrade", "te", "keep-alive"}


def make_upstream_ssl_context(extra_ca_file: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if extra_ca_file:
        context.load_verify_locations(cafile=extra_ca_file)
    return context


class HttpTool:
    def __init__(self, gate: NetworkGate, max_response_bytes: int = 5_000_000,
                 ssl_context: ssl.SSLContext | None = None, timeout_s: float = 30.0) -> None:
        self.gate = gate
        self.max_response_bytes = max_response_bytes
        self._ssl_context = ssl_context
        self._timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        # Created on first use: importing httpx costs the kernel's start-up otherwise.
        if self._client is None:
            import httpx

            # trust_env=False: never pick up HTTP(S)_PROXY or netrc from the wrapper's environment.
            self._client = httpx.AsyncClient(verify=self._ssl_context or make_upstream_ssl_context(),
                                             trust_env=False, follow_redirects=False, timeout=self._timeout_s)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def __call__(self, arguments: dict[str, Any], context: ExecutionContext) -> dict[str, Any]:
        url = arguments["url"]
        method = arguments.get("method", "GET")
        headers = dict(arguments.get("headers") or {})
        body = arguments.get("body")
        parts = urlsplit(url)
        host = parts.hostname or ""
        secure = parts.scheme == "https"
        port = parts.port or (443 if secure else 80)
        for key, value in headers.items():
            if not isinstance(value, str):
                raise ToolRefusal("schema.headers", f"header {key!r} must be text")
            if key.lower() in _FORBIDDEN_HEADERS or "\n" in key + value or "\r" in key + value:
                raise ToolRefusal("tools.http_header", f"header {key!r} may not be set by a tool call")
        try:
            pinned = await self.gate.check(host, port)
        except DestinationRefused as exc:
            raise ToolRefusal(exc.rule, exc.reason) from None

        credentials_used: list[str] = []
        if context.credentials is not None:
            def swap(text: str) -> str:
                swapped, used = context.credentials.swap(  # type: ignore[union-attr]
                    text, tool=context.call.name, host=pinned.host, secure=secure
                )
                credentials_used.extend(used)
                return swapped

            try:
                target = swap(url)
                headers = {k: swap(v) for k, v in headers.items()}
                body = swap(body) if isinstance(body, str) else body
            except ToolRefusal:
                raise
            except Exception as exc:  # noqa: BLE001 - any credential problem refuses the call
                raise ToolRefusal("credentials.refused", str(exc)) from None
            parts = urlsplit(target)

        address = pinned.address
        netloc_host = f"[{address}]" if ":" in address else address
        path = parts.path or "/"
        pinned_url = f"{parts.scheme}://{netloc_host}:{port}{path}" + (f"?{parts.query}" if parts.query else "")
        shown_host = f"[{pinned.host}]" if ":" in pinned.host else pinned.host
        headers["Host"] = shown_host if port == (443 if secure else 80) else f"{shown_host}:{port}"
        extensions = {"sni_hostname": pinned.host} if secure else {}
        request = self.client.build_request(method, pinned_url, headers=headers,
                                            content=body.encode() if isinstance(body, str) else None,
                                            extensions=extensions)
        import httpx

        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise ToolExecutionError(f"{method} {pinned.host}:{port} failed: {type(exc).__name__}: {exc}") from None
        try:
            chunks: list[bytes] = []
            size = 0
            truncated = False
            async for chunk in response.aiter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size > self.max_response_bytes:
                    truncated = True
                    break
        finally:
            await response.aclose()
        data = b"".join(chunks)[: self.max_response_bytes]
        response_headers = dict(response.headers.items())
        if context.credentials is not None:
            # Real values -> sentinels before anything is decoded (a binary body is returned base64,
            # where the broker's restore could no longer see them); a value cut by truncation is dropped.
            data = restore_complete(context.credentials, data)
            response_headers = context.credentials.restore(response_headers)
        try:
            text: str | None = data.decode(response.encoding or "utf-8")
        except (UnicodeDecodeError, LookupError):
            text = None
        return {
            "status": response.status_code,
            "headers": response_headers,
            "body": text if text is not None else base64.b64encode(data).decode("ascii"),
            "body_encoding": "text" if text is not None else "base64",
            "truncated": truncated,
            "address": address,
            "credentials_used": sorted(set(credentials_used)),
        }


def register_builtins(broker: ToolBroker, *, enabled: list[str], fs: ConfinedFs | None,
                      http: HttpTool | None) -> None:
    """Register the enabled built-ins; a tool whose backend is missing is simply not offered."""
    if fs is not None:
        def canonicalize(schema: ToolSchema, role: str, value: str) -> str:
            return fs.resolve(value, write=role != "read-path").absolute

        async def fs_read(arguments: dict[str, Any], _context: ExecutionContext) -> Any:
            return await asyncio.to_thread(fs.read, **arguments)

        async def fs_write(arguments: dict[str, Any], _context: ExecutionContext) -> Any:
            return await asyncio.to_thread(fs.write, **arguments)

        async def fs_list(arguments: dict[str, Any], _context: ExecutionContext) -> Any:
            return await asyncio.to_thread(fs.list, **arguments)

        for name, executor in (("fs.read", fs_read), ("fs.write", fs_write), ("fs.list", fs_list)):
            if name in enabled:
                broker.register(FS_SCHEMAS[name], executor, canonicalize)
    if http is not None and "http.request" in enabled:
        broker.register(HTTP_SCHEMA, http)
