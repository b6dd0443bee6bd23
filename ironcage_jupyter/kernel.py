"""The Iron Cage wrapper kernel.

It speaks the Jupyter protocol to the frontend and never runs user code itself: every request is
screened and decided here, then relayed to a child ipykernel (see :mod:`.child` and :mod:`.relay`).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import importlib
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
from ipykernel._version import kernel_protocol_version
from ipykernel.kernelbase import Kernel
from jupyter_client.session import Session
from traitlets import Float, Int, Unicode, default
from zmq.eventloop.zmqstream import ZMQStream

from . import __version__
from .child import ChildDied, ChildKernel
from .iopub import LoopIOPub
from .magics import MagicResult, is_ironcage_magic, run_magic
from .pipeline import Block, CellRequest, Pipeline, Stage
from .relay import Relay, Route

if TYPE_CHECKING:
    from .credentials.session import CredentialSession
    from .sandbox.integration import SandboxController

#: ironcage_jupyter.components, imported off the event loop once the kernel has answered kernel_info.
components: Any = None


def _import_components() -> None:
    global components
    components = importlib.import_module("ironcage_jupyter.components")

#: Frontend comm targets that the wrapper answers itself; every other comm goes to the child.
WRAPPER_COMM_TARGETS = ("ironcage.ui", "ironcage.tools")

#: Fields a request must carry, with their types, before any handler sees it.
REQUIRED_FIELDS: dict[str, dict[str, type]] = {
    "execute_request": {"code": str},
    "complete_request": {"code": str, "cursor_pos": int},
    "inspect_request": {"code": str, "cursor_pos": int},
    "is_complete_request": {"code": str},
    "history_request": {"hist_access_type": str},
    "comm_open": {"comm_id": str, "target_name": str},
    "comm_msg": {"comm_id": str},
    "comm_close": {"comm_id": str},
}

RED = "\x1b[0;31m"
BOLD = "\x1b[1m"
RESET = "\x1b[0m"


def _env_default(name: str, fallback: str = "") -> str:
    return os.environ.get(name, fallback)


def _skip_unprinted_debug(logger: Any) -> None:
    """traitlets leaves the application's logger at DEBUG and filters in its handlers, so each of
    ipykernel's per-message ``log.debug`` calls builds a record that no handler prints. Raise the
    logger to its handlers' lowest level (nothing printed before is lost)."""
    if not isinstance(logger, logging.Logger) or logger.propagate or not logger.handlers:
        return
    lowest = min(handler.level for handler in logger.handlers)
    if lowest > logger.level:
        logger.setLevel(lowest)


class IsolationRefused(RuntimeError):
    """The sandbox's self-test found a required layer missing: no child runs (until a restart)."""


class ExecuteStage:
    """Runs the cell in the child and waits for its reply and its last output."""

    name = "execute"
    always = False

    def __init__(self, kernel: IronCageKernel) -> None:
        self.kernel = kernel

    async def run(self, cell: CellRequest) -> None:
        await self.kernel.execute_in_child(cell)


class IronCageKernel(Kernel):
    if TYPE_CHECKING:  # set by the kernel app before any handler runs
        session: Session

    implementation = "ironcage"
    implementation_version = __version__
    banner = (
        f"Iron Cage Python {__version__}: cells are screened, decided by policy and run in an "
        "isolated child kernel. Type %ironcage? for help."
    )
    language_info = {
        "name": "python",
        "version": sys.version.split()[0],
        "mimetype": "text/x-python",
        "codemirror_mode": {"name": "ipython", "version": 3},
        "pygments_lexer": "ipython3",
        "nbconvert_exporter": "python",
        "file_extension": ".py",
    }
    help_links = [{"text": "Iron Cage Python", "url": "https://pypi.org/project/ironcage-jupyter/"}]

    # -- configuration -------------------------------------------------------------------------
    workspace = Unicode(
        help="The directory cells may write (env IRONCAGE_WORKSPACE). Default: the directory the "
        "kernel was started in, which Jupyter sets to the notebook's directory."
    ).tag(config=True)

    @default("workspace")
    def _workspace_default(self) -> str:
        return _env_default("IRONCAGE_WORKSPACE") or os.getcwd()

    policy = Unicode(
        help="Name of a built-in policy (default, strict, observe) or path of a policy YAML file "
        "(env IRONCAGE_POLICY)."
    ).tag(config=True)

    @default("policy")
    def _policy_default(self) -> str:
        return _env_default("IRONCAGE_POLICY", "default")

    audit_dir = Unicode(
        help="Directory of the DuckDB audit store (env IRONCAGE_AUDIT_DIR). Default: "
        "<jupyter data dir>/ironcage/audit."
    ).tag(config=True)

    @default("audit_dir")
    def _audit_dir_default(self) -> str:
        env = _env_default("IRONCAGE_AUDIT_DIR")
        if env:
            return env
        from jupyter_core.paths import jupyter_data_dir

        return str(Path(jupyter_data_dir()) / "ironcage" / "audit")

    secrets_file = Unicode(
        help="TOML file of secrets the credential broker may hand out (env IRONCAGE_SECRETS_FILE). "
        "Refused unless mode 0600 and owned by the user."
    ).tag(config=True)

    @default("secrets_file")
    def _secrets_file_default(self) -> str:
        return _env_default("IRONCAGE_SECRETS_FILE")

    cell_timeout = Float(
        0.0,
        help="Wall-clock limit of a cell in seconds, enforced by the wrapper's watchdog "
        "(0: take it from the policy's limits, or no limit without a policy).",
    ).tag(config=True)

    interrupt_grace = Float(
        5.0,
        help="Seconds a cell gets to stop after the watchdog interrupts it, before the child is killed.",
    ).tag(config=True)

    request_timeout = Float(
        30.0,
        help="Seconds to wait for the child's answer to completion, inspection, history and similar "
        "requests before replying with an error.",
    ).tag(config=True)

    # ipykernel sleeps 0.5 ms after every execute as a workaround for lost flushes; the wrapper's
    # outputs are already relayed in full before its reply, so the sleep is pure latency here.
    _execute_sleep = Float(0.0).tag(config=True)

    child_output_queue = Int(
        200_000,
        help="Messages from the child that may wait for the relay before zmq drops output (0: unbounded).",
    ).tag(config=True)

    stream_piece_bytes = Int(
        1 << 20,
        min=1024,
        help="Stream output longer than this (bytes) is screened and relayed in pieces of about this "
        "size, so the frontend receives the first piece while the rest is screened.",
    ).tag(config=True)

    lost_output_grace = Float(
        5.0,
        min=0.1,
        help="Seconds without any of a cell's still-missing outputs, once the child's reply is in, "
        "after which the cell ends with a notice that they were lost (zmq drops messages past a "
        "full queue; a count the child can no longer meet must not hang the kernel).",
    ).tag(config=True)

    gil_switch_interval = Float(
        0.0005,
        min=0.0,
        help="sys.setswitchinterval for the wrapper process in seconds (0: leave Python's default "
        "of 5 ms). The relay runs on the event loop while background threads (the audit journal "
        "and DuckDB ingestion) run Python code; a shorter interval bounds how long a relayed "
        "message waits for the GIL behind them.",
    ).tag(config=True)

    # -- lifecycle -----------------------------------------------------------------------------
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.gil_switch_interval > 0:
            sys.setswitchinterval(self.gil_switch_interval)
        for msg_type in ("comm_open", "comm_msg", "comm_close"):
            self.shell_handlers[msg_type] = getattr(self, msg_type)
        for msg_type, handler in list(self.shell_handlers.items()):
            self.shell_handlers[msg_type] = self._guarded(msg_type, handler)
        self.session_started = time.time()
        self.child = ChildKernel(workspace=Path(self.workspace), parent=self)
        self.child.on_exit = self._on_child_exit
        # The child always runs in the sandbox; the selftest gates the first cell (fail closed).
        self.relay = Relay(
            publish=self._publish_from_child,
            on_input_request=self._forward_input_request,
        )
        self.relay.screen = self._screen_output
        self.relay.stream_piece = self.stream_piece_bytes
        self.relay.OUTPUT_GRACE_S = self.lost_output_grace
        self.relay.screen_buffers = self._screen_buffers
        self._child_ready: asyncio.Future[None] | None = None
        self._relaunch_after_failure = False
        self._child_error: str | None = None
        self._restarts = 0
        self._current_cell: CellRequest | None = None
        #: Cells whose after-reply stages are still running (see _finish_after_reply).
        self._finishing: set[asyncio.Future[None]] = set()
        self._cell_interrupted: asyncio.Future[bool] | None = None
        self._stdin_waiter: asyncio.Future[dict[str, Any]] | None = None
        self._wrapper_comms: dict[str, str] = {}
        self._shutting_down = False
        self._main_loop: asyncio.AbstractEventLoop | None = None
        self._current_parent: dict[str, Any] | None = None
        self._components_ready: asyncio.Future[None] | None = None
        #: Set when the kernel can no longer trust its own state (see `_refuse_everything`).
        self._refusal: str | None = None
        self._components_error: str | None = None
        #: Shell requests numbered as they are read (see start and _abort_queues).
        self._shell_received = 0
        self._shell_seq: dict[int, int] = {}
        self._abort_through = 0
        self._abort_marked = False
        atexit.register(self.child.kill_now_sync)

    # -- components ------------------------------------------------------------------------------
    def _start_components(self) -> asyncio.Future[None]:
        if self._components_ready is None:
            loop = asyncio.get_event_loop()
            self._components_ready = loop.create_future()
            loop.create_task(self._load_components(self._components_ready))
        return self._components_ready

    async def ensure_components(self) -> None:
        """Wait until policy, audit, credentials, tools and UI are built; raise if they cannot be."""
        await asyncio.shield(self._start_components())
        if self._refusal is not None:
            raise RuntimeError(self._refusal)

    @property
    def components_ready(self) -> bool:
        ready = self._components_ready
        return ready is not None and ready.done() and ready.exception() is None

    async def _load_components(self, ready: asyncio.Future[None]) -> None:
        try:
            # The imports take over a second: a worker thread keeps the event loop answering.
            await asyncio.to_thread(_import_components)
            self._build_components()
            ready.set_result(None)
        except Exception as exc:
            self.log.error("could not set up Iron Cage's components", exc_info=True)
            self._components_error = f"Iron Cage could not set up its checks, so no cell runs: {exc!r}"
            ready.set_exception(RuntimeError(self._components_error))
            ready.exception()

    def _build_components(self) -> None:
        # The sandbox wraps the child's command; it is built here, off the first kernel_info reply's
        # path, like the other components (the child never starts before this).
        self.sandbox = self._make_sandbox()
        self.child.command_wrapper = self.sandbox.command_wrapper
        atexit.register(self.sandbox.release_all)
        # The audit log opens in the background; no cell runs before it has (and none if it cannot
        # be written: fail closed).
        self.audit = components.KernelAudit(
            self.audit_dir,
            session_start={"policy_name": self.policy, "workspace": str(self.workspace),
                           "kernel_version": __version__},
        )
        # The JupyterLab extension's comm (docs/ui-protocol.md). Isolation shows "unsafe" until the
        # sandbox reports its layers (self.ui.isolation). Escalations: pass `self.ui_ask` as the
        # policy stage's `ask` (dialog when the extension is attached, input_request otherwise).
        self.ui = components.UiBridge(self.send_comm_msg, session_id=self._ui_session_id(),
                                      policy=Path(self.policy).stem)
        self.ui_ask = components.policy_ask(self.ui, self.ask_frontend, self._ui_current_cell)
        self.pipeline = Pipeline(self._build_stages())
        if self.policy_session is not None:
            # The policy's isolation and limits sections govern the sandbox (no child exists yet).
            self.sandbox.configure(self.policy_session.policy.isolation, self.policy_session.policy.limits)
        self._connect_ui()

    def _connect_ui(self) -> None:
        """Feed the lab extension from the components present: the audit panel from the audit log,
        the policy name from the policy session."""
        audit = getattr(self, "audit", None)
        if audit is not None and getattr(audit, "session_id", None):
            self.ui.session_id = audit.session_id
            self.ui.audit_query = components.audit_panel_query(self.audit_dir, audit.session_id,
                                                    live_store=lambda: getattr(audit, "store", None),
                                                    record_query=audit.audit_query)
        policy_session = getattr(self, "policy_session", None)
        if policy_session is not None:
            self.ui.policy = policy_session.policy.name

    def _ui_session_id(self) -> str:
        session = getattr(self, "session", None)
        return str(getattr(session, "session", "") or os.getpid())

    def _ui_current_cell(self) -> tuple[str | None, dict[str, Any] | None]:
        cell = self._current_cell
        return (cell.cell_id if cell is not None else None), self._current_parent

    def _guarded(self, msg_type: str, handler: Any) -> Any:
        """Every request gets a reply: malformed content or an internal error yields an error reply."""
        required = REQUIRED_FIELDS.get(msg_type, {})

        async def guarded(stream: Any, ident: Any, parent: dict[str, Any]) -> None:
            content = parent.get("content")
            problem = None
            if not isinstance(content, dict):
                problem = "content is not an object"
            else:
                for key, kind in required.items():
                    if not isinstance(content.get(key), kind):
                        problem = f"field {key!r} is missing or not of type {kind.__name__}"
                        break
            if problem is None:
                try:
                    await handler(stream, ident, parent)
                    return
                except Exception as exc:
                    self.log.error("error handling %s", msg_type, exc_info=True)
                    problem = f"internal error: {exc!r}"
            if msg_type.startswith("comm_"):
                return  # comm messages have no reply in the protocol
            reply_type = msg_type.replace("_request", "_reply")
            self.session.send(
                stream,
                reply_type,
                {"status": "error", "ename": "MalformedMessage" if "internal" not in problem else "IronCageError",
                 "evalue": f"{msg_type}: {problem}", "traceback": []},
                parent,
                ident,
            )

        return guarded

    def _make_credential_session(self) -> CredentialSession:
        """Credential broker + output firewall of this session (see credentials/wiring.py)."""
        policy_session = getattr(self, "policy_session", None)
        policy = policy_session.policy if policy_session is not None else None
        return components.make_session(self, policy=policy, audit_callback=self.audit.credentials_callback)

    def _build_stages(self) -> list[Stage]:
        """The ordered per-cell stages. Later components (firewall, policy, credentials, audit)
        register here; no stage is shipped that pretends to check something."""
        from .policy.session import build_policy_stages

        # firewall screen -> policy decide (an invalid policy: a stage refusing every cell)
        self.policy_session, self.policy_error, policy_stages = build_policy_stages(self)
        # The broker needs the policy's grants, so it is built after the policy is loaded.
        self.credentials = self._make_credential_session()
        self.tools = components.kernel_glue.build_session(self)
        return [
            components.AuditSubmitStage(self.audit, self),
            *policy_stages,
            components.kernel_glue.CellBudgetStage(self.tools),
            components.CredentialStage(self, self.credentials),
            # the decision (or refusal) is durable before anything runs
            components.AuditDecisionStage(self.audit),
            ExecuteStage(self),
            components.OutputFinishStage(self, self.credentials),
            components.AuditRecordStage(self.audit),
        ]

    def start(self) -> None:
        if isinstance(self.iopub_thread, LoopIOPub):
            self.iopub_thread.attach(asyncio.get_event_loop())
        super().start()
        self._main_loop = asyncio.get_event_loop()
        if self.shell_channel_thread is None and self.shell_stream is not None:
            self._number_shell_requests()
        _skip_unprinted_debug(self.log)
        stdin_stream = ZMQStream(self.stdin_socket)
        stdin_stream.on_recv(self._on_frontend_stdin, copy=False)
        self._stdin_stream = stdin_stream
        # The child starts once the frontend's first kernel_info_request is answered (frontends
        # always send one), so the wrapper's own start is not slowed by the child's.

    # -- shell requests without ipykernel's shell-channel thread (see make_app_class) ----------------
    def _number_shell_requests(self) -> None:
        """Read the shell socket with ipykernel's own handler, numbering every request as it is read,
        so that ``_abort_queues`` can abort exactly the execute requests already received."""
        from functools import partial

        from ipykernel.utils import _async_in_context

        stream = self.shell_stream
        assert stream is not None
        handler = _async_in_context(partial(self.shell_main, None))

        def numbered(msg: list[Any]) -> Any:
            self._shell_received += 1
            self._shell_seq[id(msg)] = self._shell_received  # the frame list lives until dispatched
            return handler(msg)

        stream.on_recv(numbered, copy=False)

    async def dispatch_shell(self, msg: Any, /, subshell_id: str | None = None, *, concurrent: bool = False) -> None:
        seq = self._shell_seq.pop(id(msg), None)
        if seq is not None and not concurrent:
            # ipykernel aborts execute requests while _aborting is set. Requests are dispatched one
            # at a time (its shell lock), so setting it here, per request, is race-free.
            self._aborting = seq <= self._abort_through
        await super().dispatch_shell(msg, subshell_id=subshell_id, concurrent=concurrent)

    def _abort_queues(self, subshell_id: str | None = None) -> None:
        """After an error: abort every execute request already received (as ipykernel does with its
        shell-channel thread). ipykernel's thread-less path cleared its flag on the loop's next turn,
        which aborted only the first of several queued requests."""
        if self.shell_channel_thread is not None or subshell_id is not None or self.shell_stream is None:
            super()._abort_queues(subshell_id)
            return
        if self._abort_marked:  # done before the reply went out (see _mark_abort_point)
            self._abort_marked = False
            return
        self.shell_stream.flush()  # every request waiting in the socket is read (and numbered) now
        self._abort_through = self._shell_received

    def _schedule_launch(self, *, kill_first: bool = False) -> asyncio.Future[None]:
        """Start (or replace) the child in the background; the returned future says when it is ready.

        The future is installed at once, so every request arriving meanwhile waits for this one
        launch instead of starting another.
        """
        pending = self._launch_in_progress()
        if pending is not None:
            # One launch at a time: two would kill each other's child and runtime directory. The
            # launch under way already replaces whatever child a second request wanted replaced.
            return pending
        loop = asyncio.get_event_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._child_ready = ready
        loop.create_task(self._launch_child(ready, kill_first=kill_first))
        return ready

    def _launch_in_progress(self) -> asyncio.Future[None] | None:
        ready = self._child_ready
        return ready if ready is not None and not ready.done() else None

    def _make_sandbox(self) -> SandboxController:
        from .sandbox.integration import SandboxController

        """The sandbox for this session, with default isolation (every layer required, no unsafe mode)
        and limits until ``__init__`` applies the loaded policy's sections (``sandbox.configure``)."""
        from .sandbox.settings import IsolationSettings, ResourceLimits

        return SandboxController(
            workspace=Path(self.workspace),
            isolation=IsolationSettings(),
            limits=ResourceLimits(),
            hidden_paths=self._protected_paths(),
        )

    def _protected_paths(self) -> list[Path]:
        """Iron Cage's own config, policy, secrets and audit locations: hidden from the child."""
        from jupyter_core.paths import jupyter_config_path

        paths = [Path(self.audit_dir)]
        if self.secrets_file:
            paths.append(Path(self.secrets_file))
        if self.policy and os.sep in self.policy:
            paths.append(Path(self.policy))
        for directory in jupyter_config_path():
            for name in ("jupyter_ironcage_config.py", "jupyter_ironcage_config.json"):
                paths.append(Path(directory) / name)
        return paths

    async def _launch_child(self, ready: asyncio.Future[None], *, kill_first: bool = False) -> None:
        try:
            await self.ensure_components()
            if kill_first:
                await self.child.kill()
            components.prepare_child_launch(self.credentials, self.child, replacing=kill_first)
            await components.kernel_glue.ensure_started(self)
            # The selftest (cached after the first run) proves each isolation layer while the child
            # starts; a missing required layer stops the launch and says why.
            isolation = asyncio.ensure_future(asyncio.to_thread(self.sandbox.check))
            try:
                await self.child.start()
            finally:
                ok, reasons = await isolation
                self.ui.isolation.layers = self.sandbox.ui_layers()
                self.ui.isolation.sandbox_enabled = not self.sandbox.isolation.unsafe
                self.ui.publish_status()
            # The verdict (each layer, the unsafe opt-in, a refusal) is on disk before any cell runs.
            await self.audit.ready()
            if self.sandbox.audit_verdict(self.audit.record) == "unsafe":
                self.log.warning("UNSAFE MODE: cells run without required isolation: %s", "; ".join(reasons))
            if not ok:
                raise IsolationRefused("isolation unavailable: " + "; ".join(reasons))
            client = self.child.km.client() if self.child.km else None
            if client is None:
                raise RuntimeError("the child kernel manager has no client")
            # A fast child can publish faster than the relay forwards; the default high-water mark
            # (1,000) would silently drop outputs, so the receive queue is made much deeper.
            client.context.setsockopt(zmq.RCVHWM, self.child_output_queue)
            client.start_channels(hb=False, stdin=False)
            self._child_client = client
            self.relay.attach(client)
            await self._wait_child_ready()
            await self._connect_child_stdin(client)
            self._child_error = None
            ready.set_result(None)
        except Exception as exc:
            self.log.error("could not start the child kernel", exc_info=True)
            # A missing isolation layer is a verdict (fail closed until a restart), and so is an audit
            # log that could not record the isolation verdict (its failure is permanent); anything
            # else (a start timeout, a child that died while starting) may pass: the next request
            # tries once more rather than leaving the kernel unusable.
            audit = getattr(self, "audit", None)
            self._relaunch_after_failure = (
                self.components_ready
                and not isinstance(exc, IsolationRefused)
                and (audit is None or audit.failed is None)
            )
            self._child_error = f"the isolated child kernel could not start: {exc}"
            ready.set_exception(RuntimeError(self._child_error))
            ready.exception()
            await self.child.kill()

    async def _connect_child_stdin(self, client: Any) -> None:
        """Connect the child's stdin channel and wait for its handshake. The child sends
        input_request from a ROUTER, which silently drops a message for a peer whose connection is
        not yet complete: a cell calling input() right after a (re)start would then wait forever.
        Connecting once the child answers (its sockets are bound) and awaiting the handshake event
        closes that window without polling."""
        socket = client.context.socket(zmq.DEALER)
        socket.linger = 1000
        socket.identity = client.session.bsession  # the child addresses input_request to the shell peer
        monitor = socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        connected = False
        try:
            socket.connect(client._make_url("stdin"))
            await asyncio.wait_for(monitor.recv_multipart(), timeout=self.child.startup_timeout)
            connected = True
        finally:
            socket.disable_monitor()
            monitor.close(linger=0)
            if not connected:  # the launch fails with the original error, not one from closing
                socket.close(linger=0)
        client._stdin_channel = client.stdin_channel_class(socket, client.session, client.ioloop)
        client._stdin_channel.start()
        self.relay.attach_stdin(socket)

    async def _wait_child_ready(self) -> None:
        """kernel_info until the child answers on shell and its iopub is subscribed."""
        deadline = time.monotonic() + self.child.startup_timeout
        while time.monotonic() < deadline:
            if not self.child.alive:
                raise ChildDied(f"the child kernel exited during start (status {self.child.exit_status})")
            route = Route(kind="kernel_info", parent=None, forward_outputs=False)
            self.relay.send("shell", "kernel_info_request", {}, route)
            done, _ = await asyncio.wait(route.futures(), timeout=1.0)
            if route.reply.done() and route.idle.done():
                route.reply.result()
                return
        raise TimeoutError(f"the child kernel did not answer within {self.child.startup_timeout:.0f}s")

    async def ensure_child(self) -> None:
        """Wait for the child to be ready; raise with the reason when it cannot be."""
        if self._refusal is not None:  # nothing reaches the child (completions, widget comms) either
            raise RuntimeError(self._refusal)
        ready = self._child_ready
        if ready is None:
            ready = self._schedule_launch()
        elif ready.done() and ready.exception() is not None and self._relaunch_after_failure:
            self._relaunch_after_failure = False  # set again if this launch fails too
            self.relay.detach(ChildDied("the child kernel is being started again"))
            self._restarts += 1
            ready = self._schedule_launch(kill_first=True)
        await asyncio.shield(ready)

    async def restart_child(self) -> None:
        pending = self._launch_in_progress()
        if pending is not None:
            # A fresh child is already starting (e.g. the old one crashed while the watchdog waited
            # for it): detaching now would fail that launch's own handshake.
            await asyncio.shield(pending)
            return
        self.relay.detach(ChildDied("the child kernel is being restarted"))
        self._restarts += 1
        await asyncio.shield(self._schedule_launch(kill_first=True))

    def _on_child_exit(self, child: ChildKernel, status: int | None) -> None:
        if self._shutting_down:
            return
        ready = self._child_ready
        if ready is not None and not ready.done():
            # Died while starting: the launch fails and says why; no relaunch loop.
            self.relay.detach(ChildDied(f"the child kernel exited during start (status {status})"))
            return
        self.log.warning("the child kernel exited with status %s", status)
        try:
            self.audit.record(
                "violation",
                detail={"kind": "child_crash", "message": f"the child kernel exited (status {status})",
                        "exit_code": status if isinstance(status, int) else None},
            )
        except Exception:
            self.log.error("the audit log could not record the child's exit", exc_info=True)
        self.relay.detach(ChildDied(f"the child kernel died (exit status {status})"))
        # A fresh child, so the next cell runs.
        self._restarts += 1
        self._schedule_launch(kill_first=True)

    # -- kernel_info -----------------------------------------------------------------------------
    async def kernel_info_request(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        await super().kernel_info_request(stream, ident, parent)
        if self._child_ready is None:
            self._schedule_launch()

    @property
    def kernel_info(self) -> dict[str, Any]:
        # A forwarded debugger would run code outside the policy engine; subshells would bypass
        # the one-cell-at-a-time pipeline. Advertise neither. (Built here rather than from the base
        # property, which imports debugpy just to find out whether to advertise the debugger.)
        return {
            "protocol_version": kernel_protocol_version,
            "implementation": self.implementation,
            "implementation_version": self.implementation_version,
            "language_info": self.language_info,
            "banner": self.banner,
            "help_links": self.help_links,
            "supported_features": [],
        }

    # -- publishing ------------------------------------------------------------------------------
    def _publish_from_child(
        self,
        msg_type: str,
        content: dict[str, Any],
        parent: dict[str, Any] | None,
        metadata: dict[str, Any],
        buffers: list[Any],
    ) -> None:
        self.session.send(
            self.iopub_socket,
            msg_type,
            content,
            parent=parent,
            metadata=metadata,
            buffers=buffers or None,
            ident=self._topic(msg_type),
        )

    def _screen_output(self, msg_type: str, content: dict[str, Any], route: Route) -> dict[str, Any] | None:
        """The output firewall's hook on every child message (see the outputs package)."""
        return components.screen_child_output(self, self.credentials, msg_type, content, route)

    def _screen_buffers(self, msg_type: str, buffers: list[Any], route: Route) -> bool:
        """The output firewall's hook on binary buffers (widgets): True forwards them."""
        return components.screen_child_buffers(self, self.credentials, msg_type, buffers, route)

    def publish_error(self, block: Block, parent: dict[str, Any] | None = None) -> dict[str, Any]:
        """Show a refusal or fault as a proper error in the cell; returns the reply content."""
        lines = [f"{RED}{BOLD}{block.ename}{RESET}: {block.evalue}"]
        if block.rule:
            lines.append(f"  rule:   {block.rule}")
        if block.reason:
            lines.append(f"  reason: {block.reason}")
        lines.extend(block.details)
        content = {"ename": block.ename, "evalue": block.evalue, "traceback": lines}
        self.session.send(
            self.iopub_socket,
            "error",
            content,
            parent=parent or self.get_parent("shell"),
            ident=self._topic("error"),
        )
        return {"status": "error", "execution_count": self.execution_count, **content}

    def publish_display(self, data: dict[str, Any], parent: dict[str, Any] | None = None) -> None:
        self.session.send(
            self.iopub_socket,
            "display_data",
            {"data": data, "metadata": {}, "transient": {}},
            parent=parent or self.get_parent("shell"),
            ident=self._topic("display_data"),
        )

    # -- execute ---------------------------------------------------------------------------------
    async def do_execute(  # type: ignore[override]
        self,
        code: str,
        silent: bool,
        store_history: bool = True,
        user_expressions: dict[str, Any] | None = None,
        allow_stdin: bool = False,
        *,
        cell_meta: dict[str, Any] | None = None,
        cell_id: str | None = None,
    ) -> dict[str, Any]:
        try:
            reply = await self._execute(code, silent, store_history, user_expressions, allow_stdin,
                                        cell_meta=cell_meta, cell_id=cell_id)
        finally:
            self._flush_deferred()  # before the reply, if nothing was published since
        if reply.get("status") == "error" and not silent:
            content = (self.get_parent("shell") or {}).get("content") or {}
            if content.get("stop_on_error", True):
                self._mark_abort_point()
        return reply

    def _publish_status(self, status: str, channel: str, parent: dict[str, Any] | None = None) -> None:
        """``busy`` for an execute request is deferred like execute_input (see `_defer_publication`)
        once the kernel is warm; a first cell, which may wait for the audit log or the child to
        start, says busy at once."""
        if status == "busy" and channel == "shell" and parent is None and self._warm():
            msg = self.get_parent("shell") or {}
            if (msg.get("header") or {}).get("msg_type") == "execute_request":
                self._defer_publication(functools.partial(super()._publish_status, status, channel, msg))
                return
        super()._publish_status(status, channel, parent)

    def _publish_execute_input(self, code: str, parent: dict[str, Any], execution_count: int) -> None:
        self._defer_publication(functools.partial(super()._publish_execute_input, code, parent, execution_count))

    def _warm(self) -> bool:
        ready = self._child_ready
        return (
            self.components_ready
            and self.audit.usable
            and ready is not None
            and ready.done()
            and not ready.cancelled()
            and ready.exception() is None
        )

    def _defer_publication(self, publish: Any) -> None:
        """Hold busy and execute_input until the cell is on its way to the child, so that the child
        starts on it while the wrapper publishes them (two sends, about 0.2 ms of the round trip).
        Anything else the request publishes first (an error, a refusal, a magic's output, a UI
        prompt, idle) sends them beforehand, as do a stdin prompt and the reply, so frontends still
        see busy, execute_input, outputs and idle in that order."""
        iopub = self.iopub_socket
        if isinstance(iopub, LoopIOPub) and iopub.on_loop_thread():
            iopub.deferred.append(publish)
        else:
            publish()

    def _send_abort_reply(self, stream: Any, msg: dict[str, Any], idents: Any) -> None:
        self._flush_deferred()  # busy before the reply, as for every request
        super()._send_abort_reply(stream, msg, idents)

    def _flush_deferred(self) -> None:
        iopub = self.iopub_socket
        if isinstance(iopub, LoopIOPub) and iopub.deferred:
            iopub.flush_deferred()

    def _mark_abort_point(self) -> None:
        """Fix which queued requests an error aborts *before* its reply is sent: ipykernel calls
        ``_abort_queues`` only after sending the reply, and a client that answers the error at once
        (a request sent after it saw the reply) was then aborted too."""
        if self.shell_channel_thread is not None or self.shell_stream is None:
            return
        self.shell_stream.flush()  # every request waiting in the socket is read (and numbered) now
        self._abort_through = self._shell_received
        self._abort_marked = True

    async def _execute(
        self,
        code: str,
        silent: bool,
        store_history: bool,
        user_expressions: dict[str, Any] | None,
        allow_stdin: bool,
        *,
        cell_meta: dict[str, Any] | None,
        cell_id: str | None,
    ) -> dict[str, Any]:
        try:
            try:
                await self.ensure_components()
            except Exception as exc:
                if not is_ironcage_magic(code):  # %ironcage status still answers and says why
                    return self.publish_error(Block(ename="IronCageUnavailable", evalue=str(exc),
                                                    reason="no cell runs without Iron Cage's checks"))
            if is_ironcage_magic(code):
                self._magic_allow_stdin = allow_stdin  # `%ironcage policy load` may ask the human
                return await self._run_magic(code, silent, cell_id=cell_id)
            cell = CellRequest(
                code=code,
                silent=silent,
                store_history=store_history,
                user_expressions=user_expressions or {},
                allow_stdin=allow_stdin,
                cell_id=cell_id,
                metadata=cell_meta or {},
                execution_count=self.execution_count,
            )
            self._current_cell = cell
            self._current_parent = parent = self.get_parent("shell")
            try:
                await self.pipeline.run(cell)
            finally:
                self._current_cell = None
                self._current_parent = None
                self._finish_after_reply(cell)
            try:
                components.report_cell(self.ui, cell, parent)
            except Exception:  # the UI report never changes the cell's outcome
                self.log.warning("could not report the cell to the lab extension", exc_info=True)
            if cell.block is not None:
                return self.publish_error(cell.block)
            assert cell.reply is not None
            return cell.reply
        except Exception as exc:
            # The wrapper never dies because of a cell: any internal error becomes an error reply.
            self.log.error("internal error while executing a cell", exc_info=True)
            return self.publish_error(
                Block(
                    ename="IronCageError",
                    evalue=f"internal error in the Iron Cage wrapper; the cell was not completed: {exc!r}",
                    details=traceback.format_exception_only(type(exc), exc),
                )
            )

    def _finish_after_reply(self, cell: CellRequest) -> None:
        """Run the pipeline's after-reply stages (the closing audit record) once this request's reply
        and idle are out: a new task's first step runs on the loop's next turn, and nothing between
        here and the idle message awaits. The next request is read after that turn."""
        if not self.pipeline.after_reply:
            return
        task = asyncio.ensure_future(self._finish_cell(cell))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _finish_cell(self, cell: CellRequest) -> None:
        try:
            await self.pipeline.finish(cell)
        except Exception as exc:
            # The cell has already been answered: fail closed from the next cell on.
            self.log.error("the closing record of a cell failed", exc_info=True)
            self.audit.error = self.audit.error or f"the closing record of a cell failed: {exc!r}"

    def cell_timeout_seconds(self) -> float | None:
        session = getattr(self, "policy_session", None)
        return self.cell_timeout or (session.policy.limits.cell_timeout_s if session is not None else None)

    async def execute_in_child(self, cell: CellRequest) -> None:
        interrupted = self._cell_interrupted = asyncio.get_running_loop().create_future()
        child_ready = self._child_ready
        if child_ready is not None and child_ready.done() and child_ready.exception() is None:
            pass  # the usual case: the child is up, no task and no extra trip through the loop
        else:
            await self._wait_for_child_or_interrupt(cell, interrupted)
            if cell.block is not None:
                return
        await self._send_and_wait(cell)

    async def _wait_for_child_or_interrupt(self, cell: CellRequest, interrupted: asyncio.Future[bool]) -> None:
        try:
            ready: asyncio.Future[Any] = asyncio.ensure_future(self.ensure_child())
            waiting: set[asyncio.Future[Any]] = {ready, interrupted}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not ready.done():
                # Interrupted while the child was still starting: the cell is never sent.
                ready.add_done_callback(lambda f: f.exception())
                cell.block = Block(ename="KeyboardInterrupt", evalue="interrupted before the cell started")
                return
            ready.result()
        except Exception as exc:
            cell.block = Block(
                ename="IronCageUnavailable",
                evalue=str(exc) or self._child_error or "the child kernel is not available",
                reason="no cell runs without a working isolated child kernel",
            )

    async def _send_and_wait(self, cell: CellRequest) -> None:
        route = Route(
            kind="execute",
            parent=self.get_parent("shell"),
            ident=self._parent_ident["shell"],
            execution_count=cell.execution_count,
        )
        cell.notes["route"] = route
        self.relay.last_route = route
        self.relay.send(
            "shell",
            "execute_request",
            {
                "code": cell.code,
                "silent": cell.silent,
                "store_history": cell.store_history,
                "user_expressions": cell.user_expressions,
                "allow_stdin": cell.allow_stdin,
                # The wrapper aborts the frontend's queue itself; a child aborting would race
                # with the next cell the wrapper forwards.
                "stop_on_error": False,
            },
            route,
            metadata=cell.metadata,
        )
        self._flush_deferred()  # while the child starts on the cell
        timeout = self.cell_timeout_seconds()
        try:
            await asyncio.wait(route.futures(), timeout=timeout)
            if not (route.reply.done() and route.idle.done()):
                await self._cell_timed_out(cell, route, timeout)
                return
            reply = route.reply.result()
            route.idle.result()
        except ChildDied as exc:
            cell.block = Block(
                ename="KernelStateLost",
                evalue=f"{exc}; the kernel's state was lost. A fresh kernel has been started: "
                "re-run the cells this one depends on.",
                reason="child kernel died mid-cell",
            )
            return
        content = dict(reply["content"])
        content["execution_count"] = cell.execution_count
        cell.reply = content
        await self._after_limits(cell)

    async def _after_limits(self, cell: CellRequest) -> None:
        """A cell that ran into the process or memory cap leaves the child crippled (a fork bomb's
        children keep every process slot): replace the child and say so."""
        hits = self.sandbox.limits_hit()
        if not hits:
            return
        try:
            self.audit.record("violation", detail={"kind": "limit_hit", "message": "; ".join(hits),
                                                   "cell_id": cell.cell_id})
        except Exception:
            self.log.error("the audit log could not record a limit hit", exc_info=True)
        await self.restart_child()
        cell.block = Block(
            ename="ResourceLimitReached",
            evalue="; ".join(hits) + ": the kernel was restarted and its state lost",
            rule="limits",
            reason="the sandbox's resource limits stopped the cell",
        )

    async def _cell_timed_out(self, cell: CellRequest, route: Route, timeout: float | None) -> None:
        """Watchdog: interrupt, then kill and restart if the cell does not stop."""
        await self._interrupt_child()
        await asyncio.wait(route.futures(), timeout=self.interrupt_grace)
        if route.reply.done() and route.idle.done() and not route.reply.exception():
            cell.block = Block(
                ename="CellTimeout",
                evalue=f"the cell ran longer than its limit of {timeout:g}s and was interrupted",
                rule="limits.cell_timeout_s",
                reason="wall-clock watchdog",
            )
            return
        await self.restart_child()
        cell.block = Block(
            ename="CellTimeout",
            evalue=f"the cell ran longer than its limit of {timeout:g}s and did not stop when "
            "interrupted; the kernel was restarted and its state lost",
            rule="limits.cell_timeout_s",
            reason="wall-clock watchdog killed the child kernel",
        )

    # -- stdin -----------------------------------------------------------------------------------
    def _on_frontend_stdin(self, frames: list[Any]) -> None:
        try:
            _idents, frames = self.session.feed_identities(frames, copy=False)
            msg = self.session.deserialize(frames, content=True, copy=False)
        except Exception:
            self.log.warning("malformed message on stdin", exc_info=True)
            return
        waiter = self._stdin_waiter
        if msg["header"].get("msg_type") == "input_reply" and waiter is not None and not waiter.done():
            waiter.set_result(msg["content"])

    async def ask_frontend(self, prompt: str, *, password: bool = False, route: Route | None = None) -> str:
        """Send input_request to the frontend and wait for its input_reply."""
        self._flush_deferred()
        parent = route.parent if route is not None else self.get_parent("shell")
        ident = route.ident if route is not None else self._parent_ident["shell"]
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._stdin_waiter = waiter
        try:
            self.session.send(
                self.stdin_socket,
                "input_request",
                {"prompt": prompt, "password": password},
                parent=parent,
                ident=ident,
            )
            reply = await waiter
        finally:
            if self._stdin_waiter is waiter:
                self._stdin_waiter = None
        value = reply.get("value", "")
        return value if isinstance(value, str) else ""

    async def _forward_input_request(self, route: Route, msg: dict[str, Any]) -> None:
        # The prompt is child output too (input(secret) would show it): screened, "" if withheld.
        content = self.credentials.screen("input_request", msg["content"]).content or {}
        try:
            value = await self.ask_frontend(
                str(content.get("prompt", "")), password=bool(content.get("password")), route=route
            )
        except asyncio.CancelledError:
            value = ""
        self.relay.send_reply_to_child("input_reply", {"value": value}, msg["header"])

    # -- requests answered by the child --------------------------------------------------------------
    async def _ask_child(self, msg_type: str, content: dict[str, Any]) -> dict[str, Any] | None:
        try:
            await self.ensure_child()
        except Exception:
            return None
        route = Route(kind=msg_type, parent=self.get_parent("shell"), forward_outputs=False)
        self.relay.send("shell", msg_type, content, route, wait_idle=False)
        try:
            done, _ = await asyncio.wait({route.reply}, timeout=self.request_timeout)
            if not done:
                return None
            reply = dict(route.reply.result()["content"])
        except ChildDied:
            return None
        # Completions, inspection, history come from the child: screened like its outputs.
        return self.credentials.screen_reply(msg_type.replace("_request", "_reply"), reply)

    async def do_complete(self, code: str, cursor_pos: int) -> dict[str, Any]:  # type: ignore[override]
        reply = await self._ask_child("complete_request", {"code": code, "cursor_pos": cursor_pos})
        if reply is None:
            return {"status": "ok", "matches": [], "cursor_start": cursor_pos, "cursor_end": cursor_pos,
                    "metadata": {}}
        return reply

    async def do_inspect(  # type: ignore[override]
        self, code: str, cursor_pos: int, detail_level: int = 0, omit_sections: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        reply = await self._ask_child(
            "inspect_request", {"code": code, "cursor_pos": cursor_pos, "detail_level": detail_level}
        )
        if reply is None:
            return {"status": "ok", "found": False, "data": {}, "metadata": {}}
        # _ask_child already passed the whole reply (its data included) through the output firewall.
        return reply

    async def do_is_complete(self, code: str) -> dict[str, Any]:  # type: ignore[override]
        reply = await self._ask_child("is_complete_request", {"code": code})
        return reply if reply is not None else {"status": "unknown"}

    async def do_history(  # type: ignore[override]
        self,
        hist_access_type: str,
        output: bool,
        raw: bool,
        session: int | None = None,
        start: int | None = None,
        stop: int | None = None,
        n: int | None = None,
        pattern: str | None = None,
        unique: bool = False,
    ) -> dict[str, Any]:
        content: dict[str, Any] = {"hist_access_type": hist_access_type, "output": output, "raw": raw,
                                   "unique": unique}
        for key, value in (("session", session), ("start", start), ("stop", stop), ("n", n),
                           ("pattern", pattern)):
            if value is not None:
                content[key] = value
        reply = await self._ask_child("history_request", content)
        if reply is None:
            return {"status": "ok", "history": []}
        return reply

    # -- comms -----------------------------------------------------------------------------------
    async def comm_open(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        content = parent["content"]
        if content.get("target_name") in WRAPPER_COMM_TARGETS:
            self._wrapper_comms[content.get("comm_id", "")] = content["target_name"]
            await self.on_wrapper_comm("open", content)
            return
        await self._forward_comm(parent)

    async def comm_msg(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        content = parent["content"]
        if content.get("comm_id") in self._wrapper_comms:
            await self.on_wrapper_comm("msg", content)
            return
        await self._forward_comm(parent)

    async def comm_close(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        content = parent["content"]
        if content.get("comm_id") in self._wrapper_comms:
            self._wrapper_comms.pop(content.get("comm_id", ""), None)
            await self.on_wrapper_comm("close", content)
            return
        await self._forward_comm(parent)

    async def _forward_comm(self, parent: dict[str, Any]) -> None:
        """Comm traffic from the frontend (widgets) goes to the child; its answers come back on iopub."""
        try:
            await self.ensure_child()
        except Exception:
            return
        self.relay.note_comm(parent["header"]["msg_type"], parent["content"])
        route = Route(kind="comm", parent=parent)
        self.relay.last_route = route if self._current_cell is None else self.relay.last_route
        self.relay.send(
            "shell",
            parent["header"]["msg_type"],
            parent["content"],
            route,
            metadata=parent.get("metadata") or {},
            buffers=parent.get("buffers") or None,
            wait_idle=False,
        )
        # Comm messages get no reply; the route only carries the child's iopub answers.
        route.reply.set_result({})

    async def on_wrapper_comm(self, event: str, content: dict[str, Any]) -> None:
        """Comms the wrapper itself answers (the lab extension, tool calls from agents)."""
        try:
            await self.ensure_components()
        except Exception as exc:
            # Nothing runs without the checks; a tool caller gets a refusal saying why instead of
            # waiting forever for an answer.
            comm_id = content.get("comm_id", "")
            data = content.get("data")
            if event == "msg" and self._wrapper_comms.get(comm_id) == "ironcage.tools":
                refusal: dict[str, Any] = {"ok": False, "refusal": {
                    "rule": "invariant.fail-closed", "reason": str(exc), "stage": "channel"}}
                if isinstance(data, dict) and "id" in data:
                    refusal["id"] = data["id"]
                self.send_comm_msg(comm_id, refusal)
            return
        if self._wrapper_comms.get(content.get("comm_id", "")) == components.kernel_glue.TOOLS_COMM_TARGET:
            await components.kernel_glue.on_tools_comm(self, event, content)
            return
        # The bridge only takes ironcage.ui opens and the comm ids it opened.
        await self.ui.handle(event, content)

    def send_comm_msg(self, comm_id: str, data: dict[str, Any], parent: dict[str, Any] | None = None) -> None:
        self.session.send(
            self.iopub_socket,
            "comm_msg",
            {"comm_id": comm_id, "data": data},
            parent=parent or self.get_parent("shell"),
            ident=self._topic("comm_msg"),
        )

    async def comm_info_request(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        """Answered from the comms the wrapper has seen open and close (child comms on iopub, frontend
        comms on shell): no round trip to the child, which may still be starting."""
        target_name = parent["content"].get("target_name")
        comms = {
            comm_id: {"target_name": target}
            for registry in (self.relay.comms, self._wrapper_comms)
            for comm_id, target in registry.items()
            if target_name is None or target == target_name
        }
        self.session.send(stream, "comm_info_reply", {"status": "ok", "comms": comms}, parent, ident)

    # -- control: interrupt, shutdown, unsupported ----------------------------------------------------
    def _on_main_loop(self, coro: Any) -> asyncio.Future[Any]:
        """Control requests arrive on the control thread; the child belongs to the main loop."""
        assert self._main_loop is not None
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._main_loop))

    async def _interrupt_child(self) -> None:
        pending_cell = self._cell_interrupted
        if pending_cell is not None and not pending_cell.done():
            pending_cell.set_result(True)
        waiter = self._stdin_waiter
        if waiter is not None and not waiter.done():
            waiter.cancel()
        ui = getattr(self, "ui", None)
        if ui is not None:
            ui.cancel_escalations("interrupt")
        if self.child.alive and self.relay.sockets:
            route = Route(kind="interrupt", parent=None, forward_outputs=False)
            self.relay.send("control", "interrupt_request", {}, route, wait_idle=False)
            await asyncio.wait({route.reply}, timeout=self.interrupt_grace)

    async def interrupt_request(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        content: dict[str, Any] = {"status": "ok"}
        try:
            await self._on_main_loop(self._interrupt_child())
        except Exception as exc:
            content = {"status": "error", "ename": type(exc).__name__, "evalue": str(exc), "traceback": []}
        self.session.send(stream, "interrupt_reply", content, parent, ident=ident)

    async def _shutdown_child(self) -> None:
        self._shutting_down = True
        self.relay.detach(ChildDied("the kernel is shutting down"))
        try:
            await self.child.stop()
            if self.components_ready:
                await components.kernel_glue.shutdown(self)
        finally:
            if self.components_ready:  # whatever the child left behind (degraded mode, no pid ns)
                self.sandbox.release_all()
            try:
                if self._finishing:  # the last cells' closing records go in before the session's end
                    await asyncio.wait(set(self._finishing), timeout=10)
                if self.components_ready:
                    self.audit.close(status="normal", reason="shutdown requested")
            except Exception:
                self.log.error("the audit log could not be closed cleanly", exc_info=True)

    async def do_shutdown(self, restart: bool) -> dict[str, Any]:  # type: ignore[override]
        try:
            await self._on_main_loop(self._shutdown_child())
        except Exception:
            self.log.error("error while stopping the child kernel", exc_info=True)
            self.child.kill_now_sync()
        return {"status": "ok", "restart": restart}

    async def debug_request(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        self.session.send(
            stream,
            "debug_reply",
            {"status": "error", "ename": "NotSupported",
             "evalue": "debugging is not available in Iron Cage: it would run code outside the policy"},
            parent,
            ident,
        )

    async def create_subshell_request(self, socket: Any, ident: Any, parent: dict[str, Any]) -> None:
        self._refuse_subshells(socket, ident, parent, "create_subshell_reply")

    async def delete_subshell_request(self, socket: Any, ident: Any, parent: dict[str, Any]) -> None:
        self._refuse_subshells(socket, ident, parent, "delete_subshell_reply")

    async def list_subshell_request(self, socket: Any, ident: Any, parent: dict[str, Any]) -> None:
        self._refuse_subshells(socket, ident, parent, "list_subshell_reply")

    def _refuse_subshells(self, socket: Any, ident: Any, parent: dict[str, Any], reply_type: str) -> None:
        self.session.send(
            socket,
            reply_type,
            {"status": "error", "ename": "NotSupported", "evalue": "Iron Cage runs one cell at a time"},
            parent,
            ident,
        )

    # -- %ironcage magics ------------------------------------------------------------------------
    async def _run_magic(self, code: str, silent: bool, *, cell_id: str | None = None) -> dict[str, Any]:
        policy_before = self._active_policy()
        result: MagicResult = await run_magic(self, code)
        if self._active_policy() is not policy_before:
            try:
                self._apply_policy_change()
            except Exception as exc:
                # Half-applied (new rules, old grants or limits): no cell or tool call runs until a
                # restart, and %ironcage status says why.
                self.log.error("could not apply the new policy", exc_info=True)
                self._refuse_everything(f"the new policy could not be applied, so no cell runs: {exc!r}")
                name = getattr(self._active_policy(), "name", "?")
                result = MagicResult.fail(
                    f"policy {name!r} was loaded but could not be applied, so no cell or tool call runs "
                    f"until the kernel is restarted: {exc!r}",
                    "IronCageUnavailable",
                )
        try:  # a policy load/change made by the magic is recorded at once (a failure refuses later cells)
            self.audit.drain_policy_events(self)
        except Exception:
            self.log.error("the audit log could not record the policy change", exc_info=True)
        try:  # the lab extension marks refused magic cells too, not only refused code cells
            self._report_magic(code, result, cell_id)
        except Exception:
            self.log.warning("could not report the magic cell to the lab extension", exc_info=True)
        if result.error is not None:
            return self.publish_error(
                Block(ename=result.error_name or "UsageError", evalue=result.error, details=result.details)
            )
        if result.reply is not None:
            return result.reply
        if not silent and result.data:
            self.publish_display(result.data)
        return {"status": "ok", "execution_count": self.execution_count, "payload": [],
                "user_expressions": {}}

    def _refuse_everything(self, reason: str) -> None:
        """Fail closed from now on: every request that waits for the components is refused."""
        self._refusal = reason

    def _active_policy(self) -> Any:
        session = getattr(self, "policy_session", None)
        return session.policy if session is not None else None

    def _apply_policy_change(self) -> None:
        """A policy loaded or changed from the notebook governs what the wrapper holds too: grants,
        output detectors and limits from the next cell; isolation and resource limits from the child's
        next start (the self-test re-runs then)."""
        policy = self._active_policy()
        if policy is None:
            return
        credentials = getattr(self, "credentials", None)
        if credentials is not None:
            credentials.apply_policy(policy.credentials, policy.outputs, policy.limits)
        self.sandbox.configure(policy.isolation, policy.limits)
        tools = getattr(self, "tools", None)
        if tools is not None:  # budgets apply at once; what was already spent stays spent
            tools.budget_tracker.settings = policy.budgets
        ui = getattr(self, "ui", None)
        if ui is not None:
            ui.policy = policy.name
            ui.publish_status()

    #: Magic errors that are refusals by a check (shown as a denied cell), not usage mistakes.
    MAGIC_REFUSALS = frozenset({"PolicyError", "AuditQueryError", "CredentialRefused", "ToolRefused",
                                "IronCageUnavailable"})

    def _report_magic(self, code: str, result: MagicResult, cell_id: str | None) -> None:
        ui = getattr(self, "ui", None)
        if ui is None or not self.components_ready:
            return
        parent = self.get_parent("shell")
        if result.cell is not None:  # a cell the magic ran through the pipeline (with-secret)
            components.report_cell(ui, result.cell, parent)
            return
        if result.error is None or result.error_name not in self.MAGIC_REFUSALS:
            return
        words = code.lstrip("%").split()
        subcommand = words[1] if len(words) > 1 else "ironcage"
        ui.cell_finished(
            cell_id=cell_id,
            msg_id=(parent or {}).get("header", {}).get("msg_id"),
            decision="deny",
            rules=[f"%ironcage {subcommand}"],
            reason=result.error.splitlines()[0] if result.error else "",
            parent=parent,
        )

    # -- status ----------------------------------------------------------------------------------
    def status_info(self) -> dict[str, Any]:
        child = self.child
        ready = self._child_ready
        if ready is None or not ready.done():
            state = "starting"
        elif ready.exception() is not None:
            state = f"unavailable: {self._child_error}"
        else:
            state = "running"
        info: dict[str, Any] = {
            "version": __version__,
            "wrapper_pid": os.getpid(),
            "child_pid": child.pid,
            "child_state": state,
            "transport": "ipc",
            "runtime_dir": str(child.runtime_dir) if child.runtime_dir else None,
            "workspace": str(Path(self.workspace)),
            "restarts": self._restarts,
            "cell_timeout_s": self.cell_timeout_seconds(),
            "request_timeout_s": self.request_timeout,
            "child_messages": {"received": self.relay.received, "published": self.relay.published},
        }
        sandbox = getattr(self, "sandbox", None)
        if sandbox is not None:
            info.update(sandbox.status_fields())
        if self._refusal is not None:
            info["refusing"] = self._refusal
        if not self.components_ready:
            info["components"] = self._components_error or "starting"
            return info
        info.update({
            "pipeline": self.pipeline.names,
            "audit": self.audit.status(),
            **components.policy_status(getattr(self, "policy_session", None), getattr(self, "policy_error", None)),
            "credentials": self.credentials.status(),
            "tools": components.kernel_glue.status(self),
        })
        return info


def make_app_class() -> Any:
    """The kernel application: IPKernelApp that also reads ``jupyter_ironcage_config.{py,json}``."""
    from ipykernel.kernelapp import IPKernelApp
    from jupyter_core.paths import jupyter_config_path
    from traitlets.config.application import Application

    class IronCageKernelApp(IPKernelApp):
        name = "ironcage-kernel"

        iopub_queue = Int(
            200_000,
            help="Messages the wrapper's iopub socket queues for a slow frontend before zmq drops "
            "output. The relay forwards the child's output in bursts, so the default of 1,000 "
            "dropped output a plain kernel would have delivered.",
        ).tag(config=True)

        def init_control(self, context: Any) -> None:
            super().init_control(context)
            # ipykernel 7 reads the shell socket in a "shell channel" thread and hands every request
            # to the main thread over an inproc socket pair (and every reply back), for subshells.
            # The wrapper refuses subshells and runs one request at a time on its event loop, so the
            # main thread reads and writes the shell socket itself: two thread wake-ups fewer per
            # request (about 0.5 ms of the wrapper's CPU per trivial cell). Queued requests are
            # still aborted after an error (IronCageKernel._abort_queues).
            thread = self.shell_channel_thread
            if thread is not None:
                thread.io_loop.close()
                self.shell_channel_thread = None

        def init_iopub(self, context: Any) -> None:
            # ipykernel's IOPub thread is replaced by a publisher on the event loop (see iopub.py).
            socket = context.socket(zmq.XPUB)
            socket.setsockopt(zmq.SNDHWM, self.iopub_queue)
            socket.linger = 1000
            curve = getattr(self, "_apply_curve_server_options", None)
            if curve is not None:  # CurveZMQ keys from the connection file, as on ipykernel's sockets
                curve(socket)
            self.iopub_port = self._bind_socket(socket, self.iopub_port)
            self.configure_tornado_logger()
            self.iopub_thread = LoopIOPub(socket, self.session)
            self.iopub_socket = self.iopub_thread

        def load_config_file(self, *args: Any, **kwargs: Any) -> None:
            super().load_config_file(*args, **kwargs)
            # Jupyter config path order: the first directory has the highest priority.
            Application.load_config_file(self, "jupyter_ironcage_config", path=jupyter_config_path())

    return IronCageKernelApp


def main() -> None:
    app_class = make_app_class()
    # The wrapper runs no user code, so nothing it prints belongs in the notebook: its stdout and
    # stderr stay the process's own (the Jupyter server log) instead of iopub streams, which also
    # spares two cross-thread flushes per request.
    app_class.outstream_class = None
    app_class.launch_instance(kernel_class=IronCageKernel)
