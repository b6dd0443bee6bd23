"""The wrapper's iopub publisher, driven by the kernel's event loop instead of an IOPub thread.

ipykernel hands every iopub message to a dedicated IOPub thread, so that a kernel busy running
user code still gets output from other threads out. The wrapper runs no user code and never blocks
its event loop, and every message it publishes comes from that loop (relayed child output, status,
its own errors). Sending in place spares a thread wake-up per message: a trivial cell publishes
four (busy, execute_input, execute_result, idle), and the client waits for the last one.

zmq sockets are not thread-safe, so only the loop's thread touches the socket:

* sends from the loop's thread go out at once;
* sends from any other thread (the control thread publishes busy/idle around interrupt and
  shutdown requests) are handed to the loop with ``call_soon_threadsafe``, which keeps their order;
* XPUB subscriptions are read on the loop too (a reader on the socket's file descriptor), to
  answer each with ``iopub_welcome`` (JEP 65). zmq's descriptor is edge-triggered and a send can
  consume the edge of a subscription that arrived meanwhile, so every send re-checks the socket's
  events and drains pending subscriptions if there are any.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import zmq

log = logging.getLogger("ironcage.iopub")


class LoopIOPub:
    """Stands in for ipykernel's ``IOPubThread`` and its ``BackgroundSocket`` in the wrapper."""

    def __init__(self, socket: zmq.Socket[Any], session: Any) -> None:
        self.socket: zmq.Socket[Any] | None = socket
        self.session = session
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owner: int | None = None
        self._fd: int | None = None
        self._drain_scheduled = False
        #: Publications deferred by the kernel (its busy and execute_input, see
        #: IronCageKernel._defer_publication): sent, in order, before the next message goes out.
        self.deferred: list[Any] = []

    # -- lifecycle -----------------------------------------------------------------------------
    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the kernel's event loop; call from the loop's thread before the loop runs."""
        assert self.socket is not None
        self._loop = loop
        self._owner = threading.get_ident()
        fd = self._fd = int(self.socket.getsockopt(zmq.FD))
        loop.add_reader(fd, self._drain)
        self._schedule_drain()  # subscriptions that arrived before the loop existed

    @property
    def closed(self) -> bool:
        return self.socket is None

    def stop(self) -> None:
        """ipykernel's app calls this at exit (IOPubThread API)."""
        fd, self._fd = self._fd, None
        if fd is None or self._loop is None or self._loop.is_closed():
            return
        if threading.get_ident() == self._owner:
            self._loop.remove_reader(fd)
        else:
            try:
                self._loop.call_soon_threadsafe(self._loop.remove_reader, fd)
            except RuntimeError:
                pass  # the loop is closed

    def close(self) -> None:
        self.stop()
        socket, self.socket = self.socket, None
        if socket is not None and not socket.closed:
            socket.close()

    # -- sending ---------------------------------------------------------------------------------
    def send_multipart(self, msg: list[Any], **kwargs: Any) -> None:
        if self._owner is None or threading.get_ident() == self._owner:
            self._send(msg, kwargs)
            return
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._send, msg, kwargs)
        except RuntimeError:
            log.debug("iopub message dropped: the event loop is closed")

    def send(self, msg: Any, **kwargs: Any) -> None:
        self.send_multipart([msg], **kwargs)

    def _send(self, msg: list[Any], kwargs: dict[str, Any]) -> None:
        socket = self.socket
        if socket is None or socket.closed:
            return
        if self.deferred:
            self.flush_deferred()
        try:
            socket.send_multipart(msg, **kwargs)  # XPUB never blocks: a full queue drops
        except zmq.ZMQError as exc:
            log.warning("could not publish on iopub: %s", exc)
            return
        if self._fd is not None and int(socket.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            self._schedule_drain()

    def on_loop_thread(self) -> bool:
        return self._owner is not None and threading.get_ident() == self._owner

    def flush_deferred(self) -> None:
        """Send the deferred publications now (on the loop's thread)."""
        pending, self.deferred = self.deferred, []  # taken whole: each publish comes back to _send
        for publish in pending:
            publish()

    # -- subscriptions -------------------------------------------------------------------------
    def _schedule_drain(self) -> None:
        if not self._drain_scheduled and self._loop is not None:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        socket = self.socket
        while socket is not None and not socket.closed:
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return  # closed
            for frame in frames:
                # b"\x01" + topic subscribes, b"\x00" + topic unsubscribes.
                if frame[:1] == b"\x01":
                    self._welcome(frame[1:])

    def _welcome(self, topic: bytes) -> None:
        try:
            subscription = topic.decode("utf-8")
        except UnicodeDecodeError:
            return
        msg = {
            "header": self.session.msg_header("iopub_welcome"),
            "parent_header": {},
            "metadata": {},
            "content": {"subscription": subscription},
            "buffers": [],
        }
        frames = self.session.serialize(msg)
        self._send([topic, *frames] if topic else frames, {})
