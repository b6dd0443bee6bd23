"""Event-driven relay between the wrapper and its child kernel.

One reader task per child channel awaits the next message (no sleeps, no polling with timeouts).
Every message the child sends is routed by its parent header to the wrapper-side request it belongs
to, re-parented under the frontend's request, screened, and published. The child's ``status`` and
``execute_input`` are never forwarded: the wrapper publishes its own.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from hmac import compare_digest
from typing import Any

import zmq
from jupyter_client.session import Session

log = logging.getLogger("ironcage.relay")

#: Key in the child's execute_reply metadata: the iopub messages it published for the request
#: (ironcage_jupyter.child_main.OUTPUT_COUNT_KEY; not imported, the child module patches ipykernel).
OUTPUT_COUNT_KEY = "ironcage_iopub_count"

#: A screen for child messages: returns the content to publish, or None to withhold it.
OutputScreen = Callable[[str, dict[str, Any], "Route"], "dict[str, Any] | None"]


@dataclass(eq=False)
class Route:
    """Where the child's messages for one request go on the wrapper side."""

    kind: str
    parent: dict[str, Any] | None
    ident: Any = None  # the frontend's zmq routing identities
    execution_count: int | None = None
    forward_outputs: bool = True
    reply: asyncio.Future[dict[str, Any]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    idle: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    output_bytes: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    #: iopub messages received from the child for this request, and how many its execute_reply says
    #: it published (None until the reply; see `Relay._on_reply`).
    outputs_seen: int = 0
    outputs_expected: int | None = None
    #: Armed while the reply is in and counted outputs are still missing (see Relay.OUTPUT_GRACE_S).
    outputs_timer: asyncio.TimerHandle | None = None

    def futures(self) -> set[asyncio.Future[Any]]:
        return {self.reply, self.idle}

    def fail(self, exc: BaseException) -> None:
        for fut in (self.reply, self.idle):
            if not fut.done():
                fut.set_exception(exc)
                # Retrieved here so an unawaited failure never becomes an "exception never retrieved" warning.
                fut.exception()

    async def done(self) -> dict[str, Any]:
        """The child's reply, once its iopub idle has also arrived (so every output was relayed)."""
        await asyncio.gather(self.reply, self.idle)
        return self.reply.result()


def _frame_view(part: Any) -> Any:
    """A received frame's bytes without copying them (zmq.Frame: its buffer)."""
    return part.buffer if hasattr(part, "buffer") else part


# A stream message's content as jupyter_client packs it (orjson or json): {"name": ..., "text": "..."}.
_STREAM_HEAD = re.compile(rb'\{\s*"name"\s*:\s*"(stdout|stderr)"\s*,\s*"text"\s*:\s*"')
_STREAM_TAIL = re.compile(rb'"\s*\}\s*\Z')
_BACKSLASH = 0x5C
_IN_PLACE = 1 << 16  # content frames larger than this are not copied out of the zmq frame


def _lazy_stream(
    raw: Any, size: int, unpack: Callable[[Any], Any]
) -> tuple[dict[str, Any], Iterator[str]] | None:
    """A large stream message's content without decoding it whole: ``({"name": name}, pieces)``,
    where ``pieces`` decodes the JSON string of ``text`` about ``size`` bytes at a time, cutting only
    between escape sequences and UTF-8 sequences. ``None`` when the content is not laid out as
    expected (the caller then decodes it whole). A piece that does not decode raises ValueError."""
    head = _STREAM_HEAD.match(bytes(raw[:64]))
    tail_at = max(0, len(raw) - 16)
    tail = _STREAM_TAIL.search(bytes(raw[tail_at:]))
    if head is None or tail is None:
        return None
    start, end = head.end(), tail_at + tail.start()
    if end <= start:
        return None
    window = bytes(raw[max(start, end - 4096) : end])
    run = len(window) - len(window.rstrip(b"\\"))
    if run % 2 or run == len(window):
        # The closing quote is escaped (malformed: the whole decode fails), or the text ends in a run
        # of backslashes too long to count cheaply: decoded whole.
        return None

    def pieces() -> Iterator[str]:
        at = start
        while at < end:
            hi = min(end, at + size)
            buf = bytearray(b'"')
            buf += raw[at:hi]
            if hi < end:
                cut = _json_string_cut(buf, max(2, 1 + size // 2))
                if cut < 0:
                    buf += raw[hi:end]  # no safe cut: decode the rest at once
                    hi = end
                else:
                    del buf[cut:]
                    hi = at + cut - 1
            buf += b'"'
            text = unpack(buf)
            if not isinstance(text, str):
                raise ValueError("malformed stream text from the child")
            yield text
            at = hi

    return {"name": head.group(1).decode()}, pieces()


def _json_string_cut(buf: bytearray, lo: int) -> int:
    """An index >= ``lo`` at which the JSON string body ``buf`` (after its opening quote) may be cut
    without splitting an escape sequence or a UTF-8 sequence: after an escaped newline if there is
    one, else a point with no backslash in the 6 bytes before it. -1 if none is found."""
    q = buf.rfind(b"\\n", lo)
    for _ in range(64):  # a few candidates: text full of literal backslashes falls through below
        if q < lo:
            break
        first = max(1, q - 256)  # buf[0] is the opening quote
        before = buf[first:q]
        run = len(before) - len(before.rstrip(b"\\"))
        # An even run of backslashes before q (counted to its start): q starts an escape.
        if run % 2 == 0 and (run < len(before) or first == 1):
            return q + 2
        q = buf.rfind(b"\\n", lo, q)
    for p in range(len(buf) - 1, max(lo, len(buf) - 4096) - 1, -1):
        if buf[p] & 0xC0 != 0x80 and _BACKSLASH not in buf[max(0, p - 6) : p]:
            return p
    return -1


def stream_pieces(text: str, size: int) -> Iterator[str]:
    """``text`` as consecutive pieces of at most ``size`` characters, cut after a line end when one
    falls in the second half of a piece, and never between ``\\r`` and ``\\n``. Frontends join
    consecutive messages of a stream, so the cut changes nothing they show."""
    start, end = 0, len(text)
    while end - start > size:
        cut = text.rfind("\n", start + size // 2, start + size)
        if cut >= 0:
            cut += 1
        else:
            cut = start + size
            if text[cut - 1] == "\r" and cut - 1 > start:
                cut -= 1
        yield text[start:cut]
        start = cut
    yield text[start:]


class Relay:
    """Holds the child's sockets and routes its messages to the wrapper's sockets."""

    #: How many finished requests keep their route, so late output from threads still finds its cell.
    ROUTE_MEMORY = 256

    def __init__(
        self,
        *,
        publish: Callable[[str, dict[str, Any], dict[str, Any] | None, dict[str, Any], list[Any]], None],
        on_input_request: Callable[[Route, dict[str, Any]], Awaitable[None]],
    ) -> None:
        self.session: Session = Session()
        self.publish = publish
        self.on_input_request = on_input_request
        self.screen: OutputScreen | None = None
        #: With a screen: (msg_type, buffers, route) -> True to forward a message's binary buffers.
        self.screen_buffers: Callable[[str, list[Any], Route], bool] | None = None
        self.routes: OrderedDict[str, Route] = OrderedDict()
        self.pending: set[Route] = set()
        self.last_route: Route | None = None
        self.sockets: dict[str, zmq.asyncio.Socket] = {}
        #: Plain shadows of the same sockets, made once, for sending: Session.send would otherwise
        #: build a new shadow of an asyncio socket for every message (measured ~35 µs per send).
        self._senders: dict[str, zmq.Socket[Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        #: Channels read straight from their zmq FD by `_on_readable` (name -> fd, handler).
        self._readers: dict[str, tuple[int, Callable[[dict[str, Any]], Any]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Open comms (id -> target name) between the frontend and the child, for comm_info_request.
        self.comms: dict[str, str] = {}
        #: Messages received from the child and published to the frontend, for %ironcage status.
        self.received = 0
        self.published = 0
        #: Stream output longer than this (bytes or characters) is decoded, screened and published in
        #: pieces of about this size (the kernel's ``stream_piece_bytes``).
        self.stream_piece = 1 << 20

    # -- connection ----------------------------------------------------------------------------
    def attach(self, client: Any) -> None:
        """Take the channels of a started AsyncKernelClient and start one reader per channel."""
        # The child has its own HMAC key: its messages are signed and read with the child's session.
        self.session = client.session
        self.sockets = {
            "shell": client.shell_channel.socket,
            "iopub": client.iopub_channel.socket,
            "control": client.control_channel.socket,
        }
        self._senders = {name: zmq.Socket.shadow(socket.underlying) for name, socket in self.sockets.items()}
        loop = self._loop = asyncio.get_running_loop()
        self._tasks = []
        self._readers = {}
        for name, handler in (("shell", self._on_reply), ("control", self._on_reply), ("iopub", self._on_iopub)):
            fd = self._senders[name].FD
            self._readers[name] = (fd, handler)
            # Replaces the asyncio socket's own reader of this fd: these channels are read here only.
            loop.add_reader(fd, self._on_readable, name)
            loop.call_soon(self._on_readable, name)  # whatever arrived before the reader was added

    def attach_stdin(self, socket: zmq.asyncio.Socket) -> None:
        """Take the child's stdin channel once it is connected (see the kernel's launch: the child's
        ROUTER drops an input_request addressed to a peer it has not yet seen)."""
        self.sockets["stdin"] = socket
        self._senders["stdin"] = zmq.Socket.shadow(socket.underlying)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._read("stdin", self._on_stdin), name="ironcage-relay-stdin"))

    def note_comm(self, msg_type: str, content: dict[str, Any]) -> None:
        comm_id = content.get("comm_id")
        if not isinstance(comm_id, str):
            return
        if msg_type == "comm_open":
            self.comms[comm_id] = str(content.get("target_name", ""))
        elif msg_type == "comm_close":
            self.comms.pop(comm_id, None)

    def detach(self, reason: BaseException) -> None:
        """Stop reading and fail every request still waiting on the child."""
        self.comms.clear()  # the child's comms die with it
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        loop, readers, self._readers = self._loop, self._readers, {}
        if loop is not None and not loop.is_closed():
            for fd, _handler in readers.values():
                loop.remove_reader(fd)
        self.sockets = {}
        self._senders = {}
        for route in list(self.pending):
            route.fail(reason)
        self.pending.clear()

    #: Messages handled per wake-up of one channel before the loop gets a turn (a flood of output
    #: must not starve the wrapper's other work); the rest is taken on the next turn.
    READ_BATCH = 64

    def _on_readable(self, name: str) -> None:
        """The channel's zmq FD signalled (edge-triggered): take the messages waiting now, each
        handled synchronously, without a Future and a task wake-up per message as with an asyncio
        socket (three messages per trivial cell)."""
        reader = self._readers.get(name)
        if reader is None:
            return
        handler = reader[1]
        socket = self._senders[name]
        for _ in range(self.READ_BATCH):
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return  # drained: the FD signals again when the next message arrives
            except zmq.ZMQError:
                log.debug("child %s socket closed", name)
                return
            self._handle(name, handler, frames)
            if self._readers.get(name) is not reader:
                return  # detached (or re-attached) by the handler
        # More may be waiting, and the FD will not signal for them: continue on the next turn.
        if self._loop is not None:
            self._loop.call_soon(self._on_readable, name)

    def _wake_after_send(self, name: str) -> None:
        """A send on a socket also processes its pending events, which can consume the FD's signal
        for a message that arrived meanwhile: look once more on the next turn if one is waiting."""
        if name in self._readers and self._loop is not None:
            try:
                waiting = int(self._senders[name].getsockopt(zmq.EVENTS)) & zmq.POLLIN
            except zmq.ZMQError:
                return
            if waiting:
                self._loop.call_soon(self._on_readable, name)

    def _parse(self, name: str, frames: list[Any]) -> dict[str, Any] | None:
        try:
            return self._deserialize(frames)
        except Exception:
            # The child is untrusted: a malformed or badly signed message is dropped, never fatal.
            log.warning("dropped a malformed message from the child on %s", name, exc_info=True)
            return None

    def _handle(self, name: str, handler: Callable[[dict[str, Any]], Any], frames: list[Any]) -> None:
        msg = self._parse(name, frames)
        if msg is None:
            return
        try:
            handler(msg)
        except Exception:
            log.error("error relaying a %s message from the child", name, exc_info=True)

    async def _read(self, name: str, handler: Callable[[dict[str, Any]], Any]) -> None:
        socket = self.sockets[name]
        while True:
            try:
                frames = await socket.recv_multipart(copy=False)
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError:
                log.debug("child %s socket closed", name)
                return
            msg = self._parse(name, frames)
            if msg is None:
                continue
            try:
                result = handler(msg)
                if asyncio.iscoroutine(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.error("error relaying a %s message from the child", name, exc_info=True)

    def _deserialize(self, frames: list[Any]) -> dict[str, Any]:
        """Verify and unpack one child message, leaner than Session.deserialize on this hot path:
        no date parsing (the wrapper builds fresh headers when it re-publishes) and no replay
        history (the child holds the key anyway; the signature only guards against other local
        processes)."""
        session = self.session
        _idents, parts = session.feed_identities(frames, copy=False)
        if len(parts) < 5:
            raise ValueError("malformed message from the child: fewer than 5 frames")
        head: list[Any] = [bytes(p.bytes) if hasattr(p, "bytes") else bytes(p) for p in parts[:4]]
        # A large content frame is read in place (a memoryview): a stream message can be tens of MB.
        content: Any = parts[4]
        if len(content) > _IN_PLACE:
            head.append(_frame_view(content))
        else:
            head.append(bytes(content.bytes) if hasattr(content, "bytes") else bytes(content))
        if session.auth is not None and not compare_digest(head[0], session.sign(head[1:5])):
            raise ValueError("invalid signature on a message from the child")
        unpack = session.unpack
        header = unpack(head[1])
        msg = {
            "header": header,
            "parent_header": unpack(head[2]),
            "metadata": unpack(head[3]),
            "buffers": [p.buffer if hasattr(p, "buffer") else p for p in parts[5:]],
        }
        raw = head[4]
        lazy = None
        if len(raw) > 2 * self.stream_piece and isinstance(header, dict) and header.get("msg_type") == "stream":
            lazy = _lazy_stream(raw, self.stream_piece, unpack)
        if lazy is None:
            msg["content"] = unpack(bytes(raw) if isinstance(raw, memoryview) else raw)
        else:
            msg["content"], msg["text_pieces"] = lazy
        return msg

    # -- sending -------------------------------------------------------------------------------
    def send(
        self,
        channel: str,
        msg_type: str,
        content: dict[str, Any],
        route: Route,
        *,
        metadata: dict[str, Any] | None = None,
        buffers: list[Any] | None = None,
        wait_idle: bool = True,
    ) -> Route:
        socket = self._senders.get(channel)
        if socket is None:
            route.fail(ConnectionError("the child kernel is not running"))
            return route
        msg = self.session.msg(msg_type, content, metadata=metadata)
        msg_id = msg["header"]["msg_id"]
        self.routes[msg_id] = route
        if len(self.routes) > self.ROUTE_MEMORY:
            self.routes.popitem(last=False)
        if not wait_idle:
            route.idle.set_result(True)
        self.pending.add(route)
        route.reply.add_done_callback(lambda _f: self._settle(route))
        route.idle.add_done_callback(lambda _f: self._settle(route))
        self.session.send(socket, msg, buffers=buffers)
        self._wake_after_send(channel)
        return route

    def send_reply_to_child(self, msg_type: str, content: dict[str, Any], parent: dict[str, Any]) -> None:
        """Answer the child on its stdin channel (input_reply)."""
        socket = self._senders.get("stdin")
        if socket is not None:
            self.session.send(socket, msg_type, content, parent=parent)

    def _settle(self, route: Route) -> None:
        if route.reply.done() and route.idle.done():
            self.pending.discard(route)

    # -- receiving -----------------------------------------------------------------------------
    def _route_of(self, msg: dict[str, Any]) -> Route | None:
        parent_id = (msg.get("parent_header") or {}).get("msg_id")
        return self.routes.get(parent_id) if parent_id else None

    def _on_reply(self, msg: dict[str, Any]) -> None:
        route = self._route_of(msg)
        if route is not None and not route.reply.done():
            route.reply.set_result(msg)
            if msg["header"].get("msg_type") == "execute_reply" and not route.idle.done():
                # The child sends no idle after an execute request: its reply says how many iopub
                # messages precede it. A missing or malformed count (a compromised child) ends the
                # cell after the grace period, with a notice, like a count that is never met.
                metadata = msg.get("metadata")
                count = metadata.get(OUTPUT_COUNT_KEY) if isinstance(metadata, dict) else None
                if isinstance(count, int) and not isinstance(count, bool) and 0 <= count < 1 << 40:
                    route.outputs_expected = count
                    if route.outputs_seen >= count:
                        route.idle.set_result(True)
                        return
                else:
                    log.warning("the child's execute_reply does not say how many outputs it sent")
                self._arm_output_grace(route)

    #: Seconds without any of a cell's missing outputs, once its reply is in, after which the cell
    #: ends anyway with a notice: zmq drops messages past a queue's high-water mark (a child
    #: flooding faster than the relay forwards), and a count that can no longer be reached must not
    #: hang the kernel. Re-armed by every output that arrives, so a long backlog is never cut.
    OUTPUT_GRACE_S = 5.0

    def _arm_output_grace(self, route: Route) -> None:
        if route.outputs_timer is not None:
            route.outputs_timer.cancel()
        if self._loop is not None:
            route.outputs_timer = self._loop.call_later(self.OUTPUT_GRACE_S, self._outputs_lost, route)

    def _outputs_lost(self, route: Route) -> None:
        route.outputs_timer = None
        if route.idle.done():
            return
        if route.outputs_expected is None:
            notice = "\n[ironcage] the kernel did not say how many outputs this cell sent; later ones may be missing\n"
        else:
            lost = route.outputs_expected - route.outputs_seen
            log.warning("%d outputs of a cell never arrived from the child", lost)
            notice = (
                f"\n[ironcage] {lost:,} output message(s) of this cell were lost between the kernel and "
                "Iron Cage (the output came faster than it could be relayed)\n"
            )
        if route.forward_outputs and route.parent is not None:
            self._forward("stream", {"name": "stderr", "text": notice}, route, {}, [])
        route.idle.set_result(True)

    def _on_iopub(self, msg: dict[str, Any]) -> None:
        self.received += 1
        msg_type = msg["header"].get("msg_type")
        route = self._route_of(msg)
        if msg_type == "status":
            if route is not None and msg["content"].get("execution_state") == "idle":
                if not route.idle.done():
                    route.idle.set_result(True)
            return
        if route is not None:
            route.outputs_seen += 1
            expected = route.outputs_expected
            if expected is not None and not route.idle.done():
                if route.outputs_seen >= expected:
                    # Relayed below, before the loop runs the cell's continuation.
                    if route.outputs_timer is not None:
                        route.outputs_timer.cancel()
                    route.idle.set_result(True)
                else:
                    self._arm_output_grace(route)
        if msg_type == "execute_input":
            return
        if route is None:
            # Output with no known parent (a thread printing after its cell ended, a widget
            # update): it belongs to the most recent request, as in a plain kernel.
            route = self.last_route
            if route is None:
                return
        if not route.forward_outputs:
            return
        content = msg["content"]
        if not isinstance(content, dict):
            return
        if msg_type in ("comm_open", "comm_close"):
            self.note_comm(msg_type, content)
        if msg_type == "execute_result" and route.execution_count is not None:
            content["execution_count"] = route.execution_count
        buffers = msg.get("buffers") or []
        metadata = msg.get("metadata") or {}
        pieces = msg.get("text_pieces")
        if pieces is not None:
            # A large stream message, decoded piece by piece (see _lazy_stream).
            try:
                for text in pieces:
                    for piece in stream_pieces(text, self.stream_piece):
                        self._forward(msg_type, {**content, "text": piece}, route, metadata, buffers)
            except ValueError:
                # Everything already published was screened; the malformed rest is dropped.
                log.warning("dropped the rest of a malformed stream message from the child", exc_info=True)
            return
        if msg_type == "stream" and not buffers:
            text = content.get("text")
            if isinstance(text, str) and len(text) > self.stream_piece:
                # One huge stream message (ipykernel flushes everything written since the last flush
                # as one): relayed as consecutive pieces of the same stream, each screened and sent
                # while the next is screened, so the frontend starts receiving at once.
                for piece in stream_pieces(text, self.stream_piece):
                    self._forward(msg_type, {**content, "text": piece}, route, metadata, buffers)
                return
        self._forward(msg_type, content, route, metadata, buffers)

    def _forward(
        self, msg_type: str, content: dict[str, Any], route: Route, metadata: dict[str, Any], buffers: list[Any]
    ) -> None:
        screen = self.screen
        if screen is not None:
            screened = screen(msg_type, content, route)
            if screened is None:
                return
            content = screened
            # Binary buffers (widgets) cannot be redacted in place: the screen passes or withholds them.
            if buffers and (self.screen_buffers is None or not self.screen_buffers(msg_type, buffers, route)):
                return
        self.published += 1
        self.publish(msg_type, content, route.parent, metadata, buffers)

    async def _on_stdin(self, msg: dict[str, Any]) -> None:
        if msg["header"].get("msg_type") != "input_request":
            return
        route = self._route_of(msg)
        if route is None:
            # Nobody to ask: answer empty so the child never waits forever.
            self.send_reply_to_child("input_reply", {"value": ""}, msg["header"])
            return
        await self.on_input_request(route, msg)
