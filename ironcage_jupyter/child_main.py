"""Entry point of the child kernel (inside the sandbox): ipykernel with a deeper iopub queue and a cap
on the output a single cell can publish.

A cell that displays output in a tight loop publishes faster than the wrapper can relay in bursts;
with zmq's default high-water mark of 1,000 messages the child's iopub socket would silently drop
output.

An output flood (``for _ in range(1024): sys.stdout.write('x' * 2**20)``) would otherwise be buffered
whole: ipykernel's ``OutStream`` keeps everything written between two flushes (every 0.2 s) in a
``StringIO``, then serialises it into one message, several copies of up to hundreds of MB, and the
wrapper would receive, parse and then drop it all (its output firewall keeps ``limits.output_max_bytes``
per cell and says so). Here each cell's stdout + stderr is cut shortly after that limit
(``IRONCAGE_OUTPUT_MAX_BYTES``, set by the sandbox launcher): the rest is counted and dropped in the
kernel, and buffered output is flushed in pieces of at most ``FLUSH_CHARS``. Displays, results and
tracebacks count against the same budget (``for i in range(10**6): display(HTML(...))`` or one
``display(HTML('x' * 10**9))``): a message that no longer fits is dropped before it is serialised. The wrapper's output
firewall stays the authority (it truncates and shows the notice whatever the child sends); this cap only
keeps a benign flood from costing the child and the wrapper memory and time.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import zmq

IOPUB_QUEUE = 200_000
#: Characters a stream buffers before it is flushed without waiting for ipykernel's 0.2 s timer.
FLUSH_CHARS = 1 << 20
#: Characters kept beyond the wrapper's limit, so the wrapper sees the overflow and shows its notice.
CAP_SLACK = 1 << 16
OUTPUT_LIMIT_ENV = "IRONCAGE_OUTPUT_MAX_BYTES"


#: Child messages other than streams that carry a cell's output, capped together with its streams:
#: these are dropped whole when they do not fit.
DROPPED_TYPES = frozenset({"display_data", "update_display_data", "execute_result"})
#: Characters of an error (ename, evalue, traceback) always kept, even past the budget: the user
#: must still learn that, and why, the cell failed.
ERROR_FLOOR = 4096
ERROR_CUT = "[ironcage] traceback cut in the kernel (limits.output_max_bytes)"


class _OutputBudget:
    """What one request may still publish: ``cap`` characters of stdout, stderr, displays, results
    and tracebacks together (the wrapper's limit counts them together too)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.lock = threading.Lock()
        self.parent: Any = None
        self.kept = 0
        self.dropped = 0

    def notice(self) -> str:
        return (
            f"\n[ironcage] output cut in the kernel after {self.cap:,} characters "
            "(limits.output_max_bytes); what did not fit was dropped\n"
        )

    def _switch(self, parent: Any) -> None:
        if parent != self.parent:
            self.parent, self.kept, self.dropped = parent, 0, 0

    def take(self, parent: Any, size: int) -> tuple[int, bool]:
        """Stream text: (characters of ``size`` to keep, whether this is the request's first cut)."""
        with self.lock:
            self._switch(parent)
            keep = min(size, max(self.cap - self.kept, 0))
            first = keep < size and self.dropped == 0
            self.kept += keep
            self.dropped += size - keep
            return keep, first

    def admit(self, parent: Any, payload: Any) -> tuple[bool, bool]:
        """A whole message (a display cannot be cut safely): (send it, whether this is the first cut)."""
        with self.lock:
            self._switch(parent)
            room = self.cap - self.kept
            size = _payload_chars(payload, room)
            if size <= room:  # a small display after a huge dropped one is still shown
                self.kept += size
                return True, False
            first = self.dropped == 0
            self.dropped += max(size, 1)
            return False, first

    def error_room(self, parent: Any, content: Any) -> int:
        """Characters an error message may keep (in each of ename, evalue and traceback); what it
        keeps is spent."""
        with self.lock:
            self._switch(parent)
            room = max(self.cap - self.kept, ERROR_FLOOR)
            self.kept += min(_payload_chars(content, room), room)
            return room


def _payload_chars(payload: Any, bound: int) -> int:
    """Characters in the strings (and bytes in the buffers) of ``payload``; the walk stops as soon as
    it passes ``bound``, so a huge payload is never walked (or serialised) in full."""
    total = 0
    stack = [payload]
    while stack and total <= bound:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, bytes | bytearray | memoryview):
            total += memoryview(item).nbytes
    return total


def _cut_error(content: Any, limit: int) -> Any:
    """``content`` of an error (or error reply) with ename and evalue cut to ``limit`` characters each
    and the traceback to ``limit`` in total, plus a line saying so; ``content`` itself if it fits."""
    if not isinstance(content, dict):
        return content
    cut: dict[str, Any] = {}
    for key in ("ename", "evalue"):
        value = content.get(key)
        if isinstance(value, str) and len(value) > limit:
            cut[key] = value[:limit] + " " + ERROR_CUT
    traceback = content.get("traceback")
    if isinstance(traceback, list) and _payload_chars(traceback, limit) > limit:
        kept: list[Any] = []
        room = limit
        for line in traceback:
            text = line if isinstance(line, str) else str(line)
            if len(text) >= room:
                kept.append(text[:room])
                break
            kept.append(text)
            room -= len(text)
        cut["traceback"] = [*kept, ERROR_CUT]
    return {**content, **cut} if cut else content


def install_output_cap(limit: int) -> None:
    """Keep at most ``limit + CAP_SLACK`` characters of a request's output: stdout and stderr are cut
    (ipykernel's OutStream, also flushed every ``FLUSH_CHARS`` buffered characters); a display_data,
    update_display_data or execute_result message that does not fit is dropped whole, before it is
    serialised; an error's text is cut to what is left (at least ``ERROR_FLOOR`` characters), and an
    error reply's to the whole budget. The first drop of a request publishes a notice."""
    from ipykernel.iostream import OutStream
    from jupyter_client.session import Session, extract_header

    budget = _OutputBudget(limit + CAP_SLACK)
    lock = threading.Lock()
    pending: dict[int, int] = {}  # id(stream) -> characters buffered since its last forced flush
    original_write = OutStream.write
    original_send = Session.send

    def write(self: OutStream, string: str) -> int | None:
        if not isinstance(string, str):
            return original_write(self, string)  # raises ipykernel's own TypeError
        header = self.parent_header or {}
        parent = header.get("msg_id") if isinstance(header, dict) else None
        size, first_cut = budget.take(parent, len(string))
        kept = string if size == len(string) else string[:size]
        with lock:
            buffered = pending.get(id(self), 0) + len(kept)
            flush_now = buffered >= FLUSH_CHARS
            pending[id(self)] = 0 if flush_now else buffered
        if kept:
            original_write(self, kept)
        if first_cut:
            original_write(self, budget.notice())
        if flush_now and self.pub_thread is not None:
            self.pub_thread.schedule(self._flush)
        return len(string)

    def send(
        self: Session,
        stream: Any,
        msg_or_type: Any,
        content: Any = None,
        parent: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        prebuilt = isinstance(msg_or_type, dict)
        msg_type = (msg_or_type.get("header") or {}).get("msg_type") if prebuilt else msg_or_type
        if msg_type not in DROPPED_TYPES and msg_type != "error" and msg_type != "execute_reply":
            return original_send(self, stream, msg_or_type, content, parent, *args, **kwargs)
        if prebuilt:
            parent_header = msg_or_type.get("parent_header") or {}
            body = msg_or_type.get("content")
        else:
            parent_header = extract_header(parent) if parent is not None else {}
            body = content
        if msg_type in DROPPED_TYPES:
            payload = (body, kwargs.get("buffers"), kwargs.get("metadata"))
            send_it, first_cut = budget.admit(parent_header.get("msg_id"), payload)
            if send_it:
                return original_send(self, stream, msg_or_type, content, parent, *args, **kwargs)
            if first_cut:
                notice = {"name": "stderr", "text": budget.notice()}
                original_send(self, stream, "stream", notice, parent_header, ident=b"stream.stderr")
            return msg_or_type if prebuilt else None
        if msg_type == "execute_reply" and not (isinstance(body, dict) and body.get("status") == "error"):
            return original_send(self, stream, msg_or_type, content, parent, *args, **kwargs)
        # An error on iopub keeps what is left of the budget; the reply's copy of it (which the
        # wrapper returns to the frontend) at most the whole budget.
        room = budget.error_room(parent_header.get("msg_id"), body) if msg_type == "error" else budget.cap
        cut = _cut_error(body, room)
        if cut is not body:
            if prebuilt:
                msg_or_type = {**msg_or_type, "content": cut}
            else:
                content = cut
        return original_send(self, stream, msg_or_type, content, parent, *args, **kwargs)

    OutStream.write = write  # type: ignore[method-assign]
    Session.send = send  # type: ignore[method-assign]


#: Seconds input() waits for the wrapper's stdin connection before it fails (see StdinRouter).
STDIN_CONNECT_WAIT = 30.0


class StdinRouter(zmq.Socket):  # type: ignore[type-arg]
    """The child's stdin ROUTER, made to wait for its peer instead of dropping.

    A ROUTER silently drops a message addressed to a peer that is not connected yet. The wrapper's
    relay connects its channels while the child starts and declares the child ready once shell and
    iopub answer, but zmq connects each channel on its own reconnect timer: right after a (re)start,
    the stdin connection can still be missing, and an ``input()`` in the first cell was then lost
    for good (the cell waited until its timeout). With ROUTER_MANDATORY the send fails instead
    (EHOSTUNREACH) and POLLOUT fires once the peer is there: the send is retried then.
    """

    def send_multipart(self, msg_parts: Any, flags: int = 0, copy: bool = True, track: bool = False, **kw: Any) -> Any:
        try:
            return super().send_multipart(msg_parts, flags, copy, track, **kw)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
        # Short slices keep KeyboardInterrupt (the wrapper's interrupt) deliverable while waiting.
        waited = 0.0
        while waited < STDIN_CONNECT_WAIT:
            _, writable, _ = zmq.select([], [self], [], 0.1)
            if writable:
                try:
                    return super().send_multipart(msg_parts, flags, copy, track, **kw)
                except zmq.ZMQError as exc:
                    if exc.errno != zmq.EHOSTUNREACH:
                        raise
            waited += 0.1
        raise ConnectionError("the wrapper's stdin channel is not connected; input() cannot be answered")


class NoShellChannelThread:
    """Stands in for ipykernel 7's shell-channel thread, which the child does without.

    That thread exists for kernel subshells: it reads the shell socket and hands every request to
    the main thread over an inproc socket pair, and every reply back, two thread wake-ups per
    request. The wrapper refuses subshells and sends one request at a time, so the child reads its
    shell socket on the main event loop (ipykernel's own thread-less path). The stand-in is falsy,
    so ipykernel takes that path everywhere it tests ``if self.shell_channel_thread``, and it has
    the ``parent_thread`` that ``IPythonKernel.do_execute`` reads for cells with top-level
    ``await`` (a plain ``None`` there broke every async cell)."""

    parent_thread = threading.main_thread()

    def __bool__(self) -> bool:
        return False


def _without_shell_channel_thread() -> None:
    from ipykernel.kernelbase import Kernel

    # ipykernel tests `is not None` here; with the stand-in it must say "no subshells".
    Kernel._supports_kernel_subshells = property(lambda self: bool(self.shell_channel_thread))  # type: ignore[method-assign,assignment]


def _wait_for_stdin_peer() -> None:
    """Make IPKernelApp's stdin socket a StdinRouter (same libzmq socket, ROUTER_MANDATORY on), and
    replace the shell-channel thread (see NoShellChannelThread)."""
    from ipykernel.kernelapp import IPKernelApp

    original = IPKernelApp.init_sockets

    def init_sockets(self: IPKernelApp) -> None:
        original(self)
        self.shell_channel_thread = NoShellChannelThread()
        plain = self.stdin_socket
        plain.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._ironcage_stdin_plain = plain  # type: ignore[attr-defined]  # keeps the owning socket alive
        self.stdin_socket = StdinRouter.shadow(plain.underlying)

    IPKernelApp.init_sockets = init_sockets  # type: ignore[method-assign]


#: Metadata key of an execute_reply: how many iopub messages the child published for the request
#: before replying. The wrapper relays until it has received that many, instead of waiting for an
#: ``idle`` status after the reply.
OUTPUT_COUNT_KEY = "ironcage_iopub_count"


def _count_outputs_for_the_reply() -> None:
    """Count the iopub messages sent for each request and put the count in its execute_reply.

    Installed first, so that it wraps the innermost ``Session.send``: a message the output cap
    drops is never counted. ipykernel flushes stdout and stderr (waiting for its IOPub thread) before
    it sends the reply, so the count covers everything the request published up to the reply."""
    from ipykernel.iostream import BackgroundSocket, IOPubThread
    from jupyter_client.session import Session, extract_header

    lock = threading.Lock()
    counts: dict[str, int] = {}
    original_send = Session.send

    def send(self: Session, stream: Any, msg_or_type: Any, content: Any = None, parent: Any = None,
             *args: Any, **kwargs: Any) -> Any:
        prebuilt = isinstance(msg_or_type, dict)
        msg_type = (msg_or_type.get("header") or {}).get("msg_type") if prebuilt else msg_or_type
        if isinstance(stream, BackgroundSocket | IOPubThread):
            if msg_type != "status":
                header = msg_or_type.get("parent_header") if prebuilt else extract_header(parent) if parent else {}
                msg_id = header.get("msg_id") if isinstance(header, dict) else None
                if isinstance(msg_id, str):
                    with lock:
                        if len(counts) > 1000:  # parents that never got a reply (other requests)
                            counts.clear()
                        counts[msg_id] = counts.get(msg_id, 0) + 1
        elif msg_type == "execute_reply" and not prebuilt:
            header = extract_header(parent) if parent else {}
            msg_id = header.get("msg_id") if isinstance(header, dict) else None
            with lock:
                count = counts.pop(msg_id, 0) if isinstance(msg_id, str) else 0
            metadata = kwargs.get("metadata")
            kwargs["metadata"] = {**(metadata if isinstance(metadata, dict) else {}), OUTPUT_COUNT_KEY: count}
        return original_send(self, stream, msg_or_type, content, parent, *args, **kwargs)

    Session.send = send  # type: ignore[method-assign]


def _skip_empty_flushes() -> None:
    """``sys.stdout.flush()`` returns at once when everything written to the stream has been sent.

    ipykernel's ``OutStream.flush`` always hands a flush to the IOPub thread and waits for it (two
    thread wake-ups), even with nothing buffered, and a trivial cell runs four of them before its
    reply (stdout and stderr, in the display hook and again before the reply). Each stream counts
    its writes (after the text is in the buffer) and the writes its last completed ``_flush`` took
    (counted before it rotates the buffers): when the two are equal there is nothing to wait for.
    Otherwise the flush runs as before. Every stream message is counted for the reply
    (`_count_outputs_for_the_reply`) when ``_flush`` sends it, before that flush completes."""
    from ipykernel.iostream import OutStream

    lock = threading.Lock()
    original_write = OutStream.write
    original_flush = OutStream.flush
    original_flush_now = OutStream._flush

    def write(self: OutStream, string: str) -> int | None:
        written = original_write(self, string)
        with lock:
            self._ironcage_written = getattr(self, "_ironcage_written", 0) + 1  # type: ignore[attr-defined]
        return written

    def _flush(self: OutStream) -> None:
        with lock:
            taking = getattr(self, "_ironcage_written", 0)
        original_flush_now(self)
        with lock:
            self._ironcage_sent = max(getattr(self, "_ironcage_sent", 0), taking)  # type: ignore[attr-defined]

    def flush(self: OutStream) -> None:
        with lock:
            idle = getattr(self, "_ironcage_sent", 0) == getattr(self, "_ironcage_written", 0)
        if not idle:
            original_flush(self)

    OutStream.write = write  # type: ignore[method-assign]
    OutStream._flush = _flush  # type: ignore[method-assign]
    OutStream.flush = flush  # type: ignore[method-assign]


def _skip_messages_the_wrapper_drops() -> None:
    """Publish no ``busy`` status, no ``execute_input`` and no ``idle`` after an execute request:
    the wrapper publishes its own and drops the child's, and learns from the execute_reply's
    output count when it has relayed everything (`_count_outputs_for_the_reply`); each message cost
    the child an IOPub thread hop, a signature and a send, and the wrapper a wake-up, a receive and
    a signature check. Other requests still end with ``idle`` (the wrapper's readiness probe waits
    for the one after kernel_info: it proves the iopub subscription is live)."""
    from ipykernel.kernelbase import Kernel

    original_status = Kernel._publish_status

    def publish_status(self: Kernel, status: str, channel: str, parent: Any = None) -> None:
        if status == "busy":
            return
        if status == "idle":
            header = (parent or self.get_parent(channel) or {}).get("header") or {}
            if header.get("msg_type") == "execute_request":
                return
        original_status(self, status, channel, parent)

    Kernel._publish_status = publish_status  # type: ignore[method-assign]
    Kernel._publish_execute_input = lambda self, code, parent, execution_count: None  # type: ignore[method-assign]


def main() -> None:
    original_init = zmq.Context.__init__

    def init(self: zmq.Context, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.setsockopt(zmq.SNDHWM, IOPUB_QUEUE)

    zmq.Context.__init__ = init  # type: ignore[method-assign]
    _count_outputs_for_the_reply()  # first: the innermost Session.send (see its docstring)
    _skip_empty_flushes()
    limit = os.environ.get(OUTPUT_LIMIT_ENV, "")
    if limit.isdigit() and int(limit) > 0:
        install_output_cap(int(limit))
    _wait_for_stdin_peer()
    _without_shell_channel_thread()
    _skip_messages_the_wrapper_drops()
    from ipykernel.kernelapp import launch_new_instance

    sys.argv[0] = "ipykernel_launcher"
    launch_new_instance()


if __name__ == "__main__":
    main()
