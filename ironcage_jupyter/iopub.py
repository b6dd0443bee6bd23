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
* XPUB subscriptions are read on the loop too, to answer each with ``iopub_welcome`` (JEP 65).
  They are read through a ``zmq.asyncio`` shadow of the socket and sends go through it as well:
  it re-checks the socket's events after every send, so a subscription that arrives while a
  message is being sent is not stranded by zmq's edge-triggered file descriptor.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import zmq
import zmq.asyncio

log = logging.getLogger("ironcage.iopub")


class LoopIOPub:
    """Stands in for ipykernel's ``IOPubThread`` and its ``BackgroundSocket`` in the wrapper."""

    def __init__(self, socket: zmq.Socket[Any], session: Any) -> None:
        self.socket: zmq.Socket[Any] | None = socket
        self.session = session
        self._async: zmq.asyncio.Socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owner: int | None = None
        self._reader: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the kernel's event loop; call from the loop's thread before the loop runs."""
        assert self.socket is not None
        self._loop = loop
        self._owner = threading.get_ident()
        self._async = zmq.asyncio.Socket.from_socket(self.socket)
        self._reader = loop.create_task(self._read_subscriptions(), name="ironcage-iopub-subscriptions")

    @property
    def closed(self) -> bool:
        return self.socket is None

    def stop(self) -> None:
        """ipykernel's app calls this at exit (IOPubThread API)."""
        reader, self._reader = self._reader, None
        if reader is None or reader.done() or self._loop is None:
            return
        if threading.get_ident() == self._owner:
            reader.cancel()
        else:
            try:
                self._loop.call_soon_threadsafe(reader.cancel)
            except RuntimeError:
                pass  # the loop is closed

    def close(self) -> None:
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
        if self._async is None:  # before the loop is attached nothing reads the socket
            socket.send_multipart(msg, **kwargs)
            return
        # XPUB never blocks a send (a full queue drops), so this completes at once.
        sent: asyncio.Future[Any] = self._async.send_multipart(msg, **kwargs)  # type: ignore[assignment]
        if sent.done() and sent.exception() is not None:
            log.warning("could not publish on iopub: %s", sent.exception())

    # -- subscriptions -------------------------------------------------------------------------
    async def _read_subscriptions(self) -> None:
        assert self._async is not None
        while True:
            try:
                frames = await self._async.recv_multipart()
            except asyncio.CancelledError:
                raise
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
