"""Egress for cells: an HTTP/HTTPS forward proxy in the wrapper, reached from the sandbox over a Unix socket.

Every connection is decided (NetworkGate: allowlist, then address checks) and audited before a byte
goes upstream, and the proxy connects to the checked address itself (pinned). HTTPS:
- by default `CONNECT` is tunnelled opaquely (the client verifies the real server end to end);
- toward hosts that need brokered credentials (or are listed to be intercepted) the proxy terminates
  TLS with the per-session CA, swaps sentinels for real values in the request (only toward the
  secret's own hosts: the credentials hook decides), and opens its own verified TLS connection
  upstream. One request per intercepted connection (`Connection: close`), which every client handles.
Plain HTTP is forwarded, but a sentinel in a plain-HTTP request is refused (no real secret in clear).
With a credentials broker, every response that goes back toward the child (plain HTTP and intercepted
HTTPS; status line, headers, body) has each real value turned back into its sentinel, streamed bodies
through a sliding window (restore.py); upstream is asked for identity encoding and a compressed body
is refused, since it cannot be searched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

from .audit_events import POLICY_DECISION, network_decision_detail
from .hooks import AuditSink, CredentialSwapper
from .netguard import AllowEntry, CheckedDestination, DestinationRefused, NetworkGate, normalize_host
from .restore import StreamRestorer, restore_complete
from .tls import SessionCA

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 10 * 1024 * 1024
COPY_CHUNK = 256 * 1024
SPLICE_WRITE_BUFFER = 1024 * 1024
UPSTREAM_READ_LIMIT = 1024 * 1024
# Responses up to this size are restored whole and keep a (recomputed) Content-Length; larger ones stream.
RESTORE_BUFFER_BYTES = 1024 * 1024
AUDIT_EVENT = POLICY_DECISION

_HOP_BY_HOP = {"connection", "proxy-connection", "keep-alive", "proxy-authorization", "proxy-authenticate", "te",
               "trailer", "transfer-encoding", "upgrade"}


class _Refused(Exception):
    def __init__(self, status: int, rule: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.rule, self.reason = status, rule, reason


@dataclass
class _Head:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None


def _parse_head(data: bytes) -> _Head:
    try:
        text = data.decode("iso-8859-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes everything
        raise _Refused(400, "egress.bad_request", "undecodable request head") from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _Refused(400, "egress.bad_request", "malformed request line")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t" or ":" not in line:
            raise _Refused(400, "egress.bad_request", "malformed header line")
        key, _, value = line.partition(":")
        headers.append((key.strip(), value.strip()))
    return _Head(parts[0].upper(), parts[1], parts[2], headers)


def _parse_response_head(data: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = data.decode("iso-8859-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line and ":" in line:
            key, _, value = line.partition(":")
            headers.append((key.strip(), value.strip()))
    return lines[0], headers


async def _read_response_head(reader: asyncio.StreamReader) -> bytes:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        head = b""
    if not head or len(head) > MAX_HEAD_BYTES:
        raise _Refused(502, "egress.response_framing", "upstream response head too large")
    return head


def _split_host_port(authority: str, default_port: int) -> tuple[str, int]:
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif authority.count(":") == 1:
        host, _, port_text = authority.partition(":")
    else:
        host, port_text = authority, ""
    try:
        port = int(port_text) if port_text else default_port
    except ValueError as exc:
        raise _Refused(400, "egress.bad_request", f"bad port in {authority!r}") from exc
    return host, port


async def _read_body(reader: asyncio.StreamReader, head: _Head) -> bytes:
    encoding = (head.get("transfer-encoding") or "").lower()
    if encoding:
        if encoding != "chunked":
            raise _Refused(501, "egress.bad_request", f"unsupported transfer-encoding {encoding!r}")
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # (trailers are not supported; the blank line ends it)
                return bytes(body)
            if len(body) + size > MAX_BODY_BYTES:
                raise _Refused(413, "egress.body_too_large", "request body too large for an inspected request")
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    length_text = head.get("content-length")
    if length_text is None:
        return b""
    length = int(length_text)
    if length < 0 or length > MAX_BODY_BYTES:
        raise _Refused(413, "egress.body_too_large", "request body too large for an inspected request")
    return await reader.readexactly(length)


def _take_buffered(reader: asyncio.StreamReader) -> bytes:
    """What the stream has read but not handed out yet (bytes that followed a parsed head)."""
    buffer = getattr(reader, "_buffer", None)
    if not isinstance(buffer, bytearray):  # another asyncio: refuse rather than lose bytes
        raise RuntimeError("cannot take over this asyncio stream (no read buffer found)")
    if not buffer:
        return b""
    data = bytes(buffer)
    buffer.clear()
    return data


class _SpliceSide(asyncio.Protocol):
    """The protocol of one transport while spliced: what arrives goes straight to the other transport
    (`target`; None drops it), with no stream buffer, copy or task switch per chunk in between. Flow
    control: when this transport's write buffer is full, the transport feeding it stops reading."""

    def __init__(self, splice: _Splice, old: asyncio.BaseProtocol, target: asyncio.Transport | None) -> None:
        self.splice, self.old, self.target = splice, old, target
        self.feeder: asyncio.Transport | None = None  # the transport whose bytes this one writes
        self.eof = False

    def data_received(self, data: bytes) -> None:
        if self.target is not None:
            self.target.write(data)

    def eof_received(self) -> bool:
        if not self.eof:
            self.eof = True
            if self.target is not None and self.target.can_write_eof() and not self.target.is_closing():
                self.target.write_eof()
            self.splice.changed()
        return True  # keep the other direction open (half-close)

    def pause_writing(self) -> None:
        if self.feeder is not None:
            self.feeder.pause_reading()

    def resume_writing(self) -> None:
        if self.feeder is not None:
            self.feeder.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        # The stream objects see the end as usual (their wait_closed() returns).
        with contextlib.suppress(Exception):
            self.old.connection_lost(exc)
        self.splice.lost(self)


class _Splice:
    def __init__(self, a: asyncio.Transport, b: asyncio.Transport, a_to_b: bool, b_to_a: bool) -> None:
        self.transports = (a, b)
        self.side_a = _SpliceSide(self, a.get_protocol(), b if a_to_b else None)
        self.side_b = _SpliceSide(self, b.get_protocol(), a if b_to_a else None)
        if a_to_b:
            self.side_b.feeder = a
        if b_to_a:
            self.side_a.feeder = b
        self.forwarding = [side for side in (self.side_a, self.side_b) if side.target is not None]
        self.gone: set[int] = set()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def changed(self) -> None:
        if all(side.eof for side in self.forwarding):  # every forwarded direction ended: finish
            for transport in self.transports:
                transport.close()  # after what is buffered has been written

    def lost(self, side: _SpliceSide) -> None:
        self.gone.add(id(side))
        for transport in self.transports:
            transport.close()
        if len(self.gone) == 2 and not self.done.done():
            self.done.set_result(None)


async def _splice(a: tuple[asyncio.StreamReader, asyncio.StreamWriter], b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                  *, a_to_b: bool = True, b_to_a: bool = True) -> None:
    """Relay between two connections at the transport level until the forwarded directions end.

    Bytes the streams already hold are passed on first; then each transport's protocol is swapped for
    a `_SpliceSide` (and the old protocol is told when the connection is gone)."""
    (a_reader, a_writer), (b_reader, b_writer) = a, b
    ta, tb = cast(asyncio.Transport, a_writer.transport), cast(asyncio.Transport, b_writer.transport)
    splice = _Splice(ta, tb, a_to_b, b_to_a)
    pending = (_take_buffered(a_reader), _take_buffered(b_reader))
    at_eof = (a_reader.at_eof(), b_reader.at_eof())
    try:
        for transport in (ta, tb):
            # A deeper write buffer: reading is paused (and resumed) per megabyte, not per 64 KiB.
            transport.set_write_buffer_limits(high=SPLICE_WRITE_BUFFER)
        ta.set_protocol(splice.side_a)
        tb.set_protocol(splice.side_b)
        for side, data, eof, transport in ((splice.side_a, pending[0], at_eof[0], ta),
                                           (splice.side_b, pending[1], at_eof[1], tb)):
            if data:
                side.data_received(data)
            if eof:
                side.eof_received()
            if transport.is_closing():
                splice.lost(side)  # gone before the swap: its connection_lost went to the old protocol
            else:
                transport.resume_reading()  # the stream may have paused it (its buffer was full)
        await splice.done
    finally:
        if not splice.done.done():
            for transport in splice.transports:
                transport.abort()


async def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 2)


class EgressProxy:
    def __init__(
        self,
        gate: NetworkGate,
        audit: AuditSink,
        *,
        ca: SessionCA | None = None,
        credentials: CredentialSwapper | None = None,
        intercept_hosts: Sequence[str] = (),
        upstream_ssl: ssl.SSLContext | None = None,
        connect_timeout_s: float = 10.0,
        server: str | None = None,
    ) -> None:
        self.gate = gate
        self.server = server  # an MCP server's own proxy: named in every decision it audits
        self.audit = audit
        self.ca = ca
        self.credentials = credentials
        self.intercept_entries = [AllowEntry.parse(h) for h in intercept_hosts]
        self.upstream_ssl = upstream_ssl or ssl.create_default_context()
        self.connect_timeout_s = connect_timeout_s
        self._servers: list[asyncio.base_events.Server] = []
        self._pending_servers: list[asyncio.Task[asyncio.base_events.Server]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.socket_path: str | None = None

    # lifecycle ------------------------------------------------------------------------------------
    async def start_unix(self, path: str) -> str:
        """Listen on a Unix socket (0600) to be bind-mounted into the sandbox."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        server = await asyncio.start_unix_server(self._handle, path=path, limit=MAX_HEAD_BYTES)
        os.chmod(path, 0o600)
        self._servers.append(server)
        self.socket_path = path
        return path

    def listen_sync(self, path: str) -> str:
        """Also listen at `path` (a new child's runtime dir); bound before this returns (sync, loop thread)."""
        from .channel import _listen_unix_sync

        self._pending_servers.append(_listen_unix_sync(path, self._handle, MAX_HEAD_BYTES))
        return path

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on TCP (benchmarks and tests outside a sandbox)."""
        server = await asyncio.start_server(self._handle, host, port, limit=MAX_HEAD_BYTES)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        for pending in self._pending_servers:
            with contextlib.suppress(Exception):
                self._servers.append(await pending)
        self._pending_servers.clear()
        for server in self._servers:
            server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()

    def child_environment(self, proxy_port: int) -> dict[str, str]:
        """Environment of the sandboxed child (and of `pip`, `requests`, `curl`, node) to use the proxy."""
        url = f"http://127.0.0.1:{proxy_port}"
        env = {"HTTP_PROXY": url, "HTTPS_PROXY": url, "http_proxy": url, "https_proxy": url,
               "NO_PROXY": "", "no_proxy": "", "PIP_PROXY": url}
        if self.ca is not None:
            bundle = self.ca.bundle_file
            env.update({"SSL_CERT_FILE": bundle, "REQUESTS_CA_BUNDLE": bundle, "PIP_CERT": bundle,
                        "CURL_CA_BUNDLE": bundle, "NODE_EXTRA_CA_CERTS": self.ca.ca_file})
        return env

    # decisions ------------------------------------------------------------------------------------
    def _needs_interception(self, host: str) -> bool:
        if self.ca is None:
            return False
        entries = list(self.intercept_entries)
        if self.credentials is not None:
            entries += [AllowEntry.parse(h) for h in self.credentials.hosts_needing_interception()]
        return any(e.matches_host(host, None) for e in entries)

    async def _decide(self, host: str, port: int, mode: str, method: str) -> CheckedDestination:
        who = f"MCP server {self.server}" if self.server else "cell"
        try:
            checked = await self.gate.check(host, port)
        except DestinationRefused as exc:
            with contextlib.suppress(Exception):  # the connection is refused either way
                self.audit.record(AUDIT_EVENT, decision="deny", rule=exc.rule,
                                  reason=f"egress {method} from {who}: {exc.reason}",
                                  detail=network_decision_detail(host=host, port=port, rules=[exc.rule],
                                                                 server=self.server), durable=True)
            raise _Refused(403, exc.rule, exc.reason) from None
        # Audit before connecting; a failed write refuses the connection (fail closed).
        try:
            self.audit.record(AUDIT_EVENT, decision="allow", rule=checked.rule,
                              reason=f"egress {method} ({mode}) from {who} to {checked.address}: {checked.reason}",
                              detail=network_decision_detail(host=host, port=port, rules=[checked.rule],
                                                             server=self.server),
                              durable=True)
        except Exception as exc:  # noqa: BLE001
            raise _Refused(503, "audit.write_failed", f"audit write failed ({type(exc).__name__})") from None
        return checked

    # connection handling --------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._serve_connection(reader, writer)
        except asyncio.CancelledError:
            # Closing the proxy cancels open connections; end quietly (Python 3.11's stream callback
            # would otherwise report the cancelled task as an error).
            writer.transport.abort()
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = _parse_head(await reader.readuntil(b"\r\n\r\n"))
            if head.method == "CONNECT":
                await self._connect(head, reader, writer)
            else:
                await self._plain_http(head, reader, writer)
        except _Refused as exc:
            await self._send_refusal(writer, exc)
        except asyncio.LimitOverrunError:
            await self._send_refusal(writer, _Refused(431, "egress.bad_request", "request head too large"))
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        except Exception as exc:  # noqa: BLE001 - never let one connection hurt the proxy
            log.warning("egress proxy connection failed: %s: %s", type(exc).__name__, exc)
            await self._send_refusal(writer, _Refused(502, "egress.error", f"{type(exc).__name__}"))
        finally:
            await _close(writer)

    async def _send_refusal(self, writer: asyncio.StreamWriter, refusal: _Refused) -> None:
        body = f"Iron Cage egress refused: {refusal.reason} (rule {refusal.rule})\n".encode()
        reason_header = refusal.reason.encode("ascii", "replace").decode()[:200].replace("\r", " ").replace("\n", " ")
        head = (f"HTTP/1.1 {refusal.status} Refused\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\nX-Ironcage-Rule: {refusal.rule}\r\n"
                f"X-Ironcage-Reason: {reason_header}\r\n\r\n")
        with contextlib.suppress(Exception):
            writer.write(head.encode() + body)
            await writer.drain()

    async def _open_upstream(self, checked: CheckedDestination, tls: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(
                    checked.address, checked.port,
                    ssl=self.upstream_ssl if tls else None,
                    server_hostname=checked.host if tls else None,
                    # Responses stream through: a deeper buffer pauses the socket per megabyte, not per
                    # 128 KiB. Heads are still held to MAX_HEAD_BYTES (_read_response_head).
                    limit=UPSTREAM_READ_LIMIT,
                ),
                self.connect_timeout_s,
            )
        except ssl.SSLCertVerificationError as exc:
            raise _Refused(502, "egress.upstream_certificate", f"upstream certificate rejected: {exc.verify_message}") from None
        except (OSError, TimeoutError) as exc:
            raise _Refused(502, "egress.upstream_unreachable", f"cannot reach {checked.host}:{checked.port}: {exc}") from None

    async def _connect(self, head: _Head, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw_host, port = _split_host_port(head.target, 443)
        try:
            host = normalize_host(raw_host)
        except DestinationRefused as exc:
            raise _Refused(400, exc.rule, exc.reason) from None
        intercept = self._needs_interception(host)
        checked = await self._decide(host, port, "intercept" if intercept else "tunnel", "CONNECT")
        if not intercept:
            up_reader, up_writer = await self._open_upstream(checked, tls=False)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            try:
                await _splice((reader, writer), (up_reader, up_writer))
            finally:
                await _close(up_writer)
            return
        assert self.ca is not None
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await writer.start_tls(self.ca.server_context(host))
        inner = _parse_head(await reader.readuntil(b"\r\n\r\n"))
        target = inner.target
        if not target.startswith("/"):
            raise _Refused(400, "egress.bad_request", "expected an origin-form request inside the tunnel")
        await self._forward(inner, target, checked, reader, writer, secure=True)

    async def _plain_http(self, head: _Head, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parts = urlsplit(head.target)
        if parts.scheme != "http" or not parts.netloc:
            raise _Refused(400, "egress.bad_request", "the proxy takes absolute http:// URLs or CONNECT")
        raw_host, port = _split_host_port(parts.netloc.rpartition("@")[2], 80)
        if "@" in parts.netloc:
            raise _Refused(400, "egress.bad_request", "user info in proxy URLs is refused")
        try:
            host = normalize_host(raw_host)
        except DestinationRefused as exc:
            raise _Refused(400, exc.rule, exc.reason) from None
        checked = await self._decide(host, port, "http", head.method)
        origin_target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        await self._forward(head, origin_target, checked, reader, writer, secure=False)

    def _swap(self, text: str, host: str, secure: bool, used: list[str]) -> str:
        if self.credentials is None:
            return text
        try:
            swapped, names = self.credentials.swap(text, tool="egress", host=host, secure=secure)
        except Exception as exc:  # noqa: BLE001 - a sentinel that may not go here refuses the request
            raise _Refused(403, "credentials.refused", str(exc)) from None
        used.extend(names)
        return swapped

    async def _forward(self, head: _Head, target: str, checked: CheckedDestination, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, *, secure: bool) -> None:
        body = await _read_body(reader, head)
        used: list[str] = []
        target = self._swap(target, checked.host, secure, used)
        headers = [(k, self._swap(v, checked.host, secure, used)) for k, v in head.headers
                   if k.lower() not in _HOP_BY_HOP and k.lower() not in ("content-length", "host")]
        if body:
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            if text is not None:
                body = self._swap(text, checked.host, secure, used).encode("utf-8")
        shown = f"[{checked.host}]" if ":" in checked.host else checked.host
        default_port = 443 if secure else 80
        host_header = shown if checked.port == default_port else f"{shown}:{checked.port}"
        lines = [f"{head.method} {target} HTTP/1.1", f"Host: {host_header}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if body or head.method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        if self.credentials is not None:
            # Bodies must be readable to restore sentinels in them: no compression from upstream.
            lines = [line for line in lines if not line.lower().startswith("accept-encoding:")]
            lines.append("Accept-Encoding: identity")
        lines.append("Connection: close")
        up_reader, up_writer = await self._open_upstream(checked, tls=secure)
        try:
            up_writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1") + body)
            await up_writer.drain()
            if self.credentials is None:
                await self._relay_response_raw(up_reader, up_writer, reader, writer)
            else:
                await self._relay_response_restored(up_reader, writer, head, self.credentials)
        finally:
            await _close(up_writer)

    async def _relay_response_raw(self, up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter,
                                  reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # No credentials broker: no real value can be in the response; copy it as it comes.
        status_line, response_headers = _parse_response_head(await _read_response_head(up_reader))
        kept = [(k, v) for k, v in response_headers if k.lower() not in ("connection", "keep-alive", "proxy-connection")]
        out = [status_line] + [f"{k}: {v}" for k, v in kept] + ["Connection: close"]
        writer.write(("\r\n".join(out) + "\r\n\r\n").encode("iso-8859-1"))
        await writer.drain()
        # Upstream to the child only (anything more the child sends on this connection is dropped).
        await _splice((up_reader, up_writer), (reader, writer), b_to_a=False)

    async def _relay_response_restored(self, up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                       request: _Head, credentials: CredentialSwapper) -> None:
        """The response with every real value of a brokered secret turned back into its sentinel: status
        line, headers and body. The body is de-framed (chunked / Content-Length / until close) so a value
        split by the framing or across reads is still found, and re-framed for the child: a recomputed
        Content-Length when it fits in memory, else chunked (close-delimited for an HTTP/1.0 client)."""
        while True:
            status_line, response_headers = _parse_response_head(await _read_response_head(up_reader))
            status = _status_code(status_line)
            if not 100 <= status < 200 or status == 101:
                break  # interim responses (100 Continue) are dropped: the request body is already sent
        length_text, chunked, encoding = None, False, ""
        kept: list[tuple[str, str]] = []
        for key, value in response_headers:
            lowered = key.lower()
            if lowered == "content-length":
                length_text = value
            elif lowered == "transfer-encoding":
                chunked = value.lower() == "chunked"
                if not chunked:
                    raise _Refused(502, "egress.response_framing", f"unsupported response transfer-encoding {value!r}")
            elif lowered not in _HOP_BY_HOP:
                if lowered == "content-encoding":
                    encoding = value.strip().lower()
                kept.append((credentials.restore(key), credentials.restore(value)))
        status_line = credentials.restore(status_line)
        has_body = request.method != "HEAD" and status not in (204, 304)
        if has_body and encoding not in ("", "identity"):
            # Compressed bytes cannot be searched for a secret: fail closed (identity was asked for).
            raise _Refused(502, "egress.response_encoding",
                           f"the response is {encoding}-encoded and cannot be checked for credentials")
        length: int | None = None
        if length_text is not None and not chunked:
            try:
                length = int(length_text)
            except ValueError:
                raise _Refused(502, "egress.response_framing", "malformed response Content-Length") from None
            if length < 0:
                raise _Refused(502, "egress.response_framing", "malformed response Content-Length")
        head_lines = [status_line] + [f"{k}: {v}" for k, v in kept]
        if not has_body:
            if length_text is not None:
                head_lines.append(f"Content-Length: {length_text}")
            writer.write(("\r\n".join([*head_lines, "Connection: close"]) + "\r\n\r\n").encode("iso-8859-1"))
            await writer.drain()
            return
        pieces = _body_pieces(up_reader, length, chunked)
        if length is not None and length <= RESTORE_BUFFER_BYTES:
            data = b"".join([piece async for piece in pieces])
            data = restore_complete(credentials, data)
            head_lines.append(f"Content-Length: {len(data)}")
            writer.write(("\r\n".join([*head_lines, "Connection: close"]) + "\r\n\r\n").encode("iso-8859-1") + data)
            await writer.drain()
            return
        rechunk = request.version != "HTTP/1.0"
        if rechunk:
            head_lines.append("Transfer-Encoding: chunked")
        writer.write(("\r\n".join([*head_lines, "Connection: close"]) + "\r\n\r\n").encode("iso-8859-1"))
        await writer.drain()
        restorer = StreamRestorer(credentials)

        async def send(data: bytes) -> None:
            if data:
                writer.write(b"%x\r\n%b\r\n" % (len(data), data) if rechunk else data)
                await writer.drain()

        async for piece in pieces:
            await send(restorer.feed(piece))
        await send(restorer.finish())
        if rechunk:
            writer.write(b"0\r\n\r\n")
            await writer.drain()


def _status_code(status_line: str) -> int:
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise _Refused(502, "egress.response_framing", "malformed upstream status line")
    return int(parts[1])


async def _body_pieces(reader: asyncio.StreamReader, length: int | None, chunked: bool) -> AsyncIterator[bytes]:
    """The response body without its framing, piece by piece as it arrives."""
    if chunked:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                raise _Refused(502, "egress.response_framing", "malformed chunk size from upstream") from None
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers are dropped
                    pass
                return
            while size > 0:
                piece = await reader.read(min(size, COPY_CHUNK))
                if not piece:
                    raise asyncio.IncompleteReadError(b"", size)
                size -= len(piece)
                yield piece
            await reader.readexactly(2)
    elif length is not None:
        while length > 0:
            piece = await reader.read(min(length, COPY_CHUNK))
            if not piece:
                raise asyncio.IncompleteReadError(b"", length)
            length -= len(piece)
            yield piece
    else:
        while piece := await reader.read(COPY_CHUNK):
            yield piece
