"""Entry point of the child kernel (inside the sandbox): ipykernel with a deeper iopub queue and a cap
on the stream output a single cell can buffer.

A cell that displays output in a tight loop publishes faster than the wrapper can relay in bursts;
with zmq's default high-water mark of 1,000 messages the child's iopub socket would silently drop
output.

An output flood (``for _ in range(1024): sys.stdout.write('x' * 2**20)``) would otherwise be buffered
whole: ipykernel's ``OutStream`` keeps everything written between two flushes (every 0.2 s) in a
``StringIO``, then serialises it into one message, several copies of up to hundreds of MB, and the
wrapper would receive, parse and then drop it all (its output firewall keeps ``limits.output_max_bytes``
per cell and says so). Here each cell's stdout + stderr is cut shortly after that limit
(``IRONCAGE_OUTPUT_MAX_BYTES``, set by the sandbox launcher): the rest is counted and dropped in the
kernel, and buffered output is flushed in pieces of at most ``FLUSH_CHARS``. The wrapper's output
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


def install_output_cap(limit: int) -> None:
    """Patch ipykernel's OutStream: keep at most ``limit + CAP_SLACK`` characters of stdout + stderr
    per request, and flush every ``FLUSH_CHARS`` buffered characters."""
    from ipykernel.iostream import OutStream

    cap = limit + CAP_SLACK
    lock = threading.Lock()
    state: dict[str, Any] = {"parent": None, "kept": 0, "dropped": 0}
    pending: dict[int, int] = {}  # id(stream) -> characters buffered since its last forced flush
    original_write = OutStream.write

    def write(self: OutStream, string: str) -> int | None:
        if not isinstance(string, str):
            return original_write(self, string)  # raises ipykernel's own TypeError
        header = self.parent_header or {}
        parent = header.get("msg_id") if isinstance(header, dict) else None
        notice = None
        with lock:
            if parent != state["parent"]:
                state.update(parent=parent, kept=0, dropped=0)
            room = cap - state["kept"]
            if len(string) > room:
                kept = string[: max(room, 0)]
                if state["dropped"] == 0:
                    notice = (
                        f"\n[ironcage] output cut in the kernel after {cap:,} characters "
                        "(limits.output_max_bytes); the rest was dropped\n"
                    )
                state["dropped"] += len(string) - len(kept)
            else:
                kept = string
            state["kept"] += len(kept)
            buffered = pending.get(id(self), 0) + len(kept)
            flush_now = buffered >= FLUSH_CHARS
            pending[id(self)] = 0 if flush_now else buffered
        if kept:
            original_write(self, kept)
        if notice:
            original_write(self, notice)
        if flush_now and self.pub_thread is not None:
            self.pub_thread.schedule(self._flush)
        return len(string)

    OutStream.write = write  # type: ignore[method-assign]


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
