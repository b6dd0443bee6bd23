"""The child ipykernel: where user code actually runs.

The wrapper starts it through jupyter_client over the ipc transport, in a private runtime directory
(mode 0700) holding the connection file and the sockets, with an allow-listed environment. When the
sandbox is active the command is wrapped by :mod:`ironcage_jupyter.sandbox.launcher`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from traitlets import Dict, Float, List, Unicode
from traitlets.config import LoggingConfigurable

CHILD_KERNEL_NAME = "ironcage-child"

#: Variables a data-science kernel legitimately needs. Everything else in the wrapper's environment
#: (tokens, cloud credentials, JPY_SESSION_NAME, ...) stays out of the child.
DEFAULT_ENV_ALLOWLIST = [
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_NUMERIC",
    "LC_TIME",
    "LC_COLLATE",
    "LC_MONETARY",
    "LC_MESSAGES",
    "TZ",
    "TERM",
    "PYTHONPATH",
    "PYTHONHASHSEED",
    "MPLBACKEND",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "PYDEVD_DISABLE_FILE_VALIDATION",
]


class _ChildSpecManager(KernelSpecManager):
    """Serves the one in-memory kernelspec of the child, so no file on disk can redirect it."""

    def __init__(self, spec: KernelSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._child_spec = spec

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        if kernel_name != CHILD_KERNEL_NAME:
            raise KeyError(kernel_name)
        return self._child_spec

    def find_kernel_specs(self) -> dict[str, str]:
        return {CHILD_KERNEL_NAME: ""}


class ChildDied(RuntimeError):
    """The child kernel process ended while a request was in flight."""


#: Wraps (argv, env) of the child for a sandbox. Given by the kernel when isolation is configured.
CommandWrapper = Callable[[list[str], dict[str, str], Path], tuple[list[str], dict[str, str]]]


class ChildKernel(LoggingConfigurable):
    """Owns the child kernel process: start, stop, kill and restart, and watching it die."""

    startup_timeout = Float(
        60.0, help="Seconds to wait for the child kernel to answer kernel_info after start."
    ).tag(config=True)

    shutdown_wait_time = Float(
        3.0, help="Seconds the child gets to shut down cleanly before it is killed."
    ).tag(config=True)

    env_allowlist = List(
        Unicode(),
        default_value=DEFAULT_ENV_ALLOWLIST,
        help="Names of the wrapper's environment variables passed to the child. Nothing else is.",
    ).tag(config=True)

    extra_env = Dict(
        Unicode(),
        default_value={},
        help="Variables set in the child's environment in addition to the allow-listed ones.",
    ).tag(config=True)

    runtime_base = Unicode(
        "",
        help="Directory under which the private runtime directory of the child (connection file and "
        "ipc sockets) is created. Default: the system temporary directory.",
    ).tag(config=True)

    def __init__(self, *, workspace: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.workspace = workspace
        self.command_wrapper: CommandWrapper | None = None
        self.env_overrides: dict[str, str] = {}
        self.km: AsyncKernelManager | None = None
        self.runtime_dir: Path | None = None
        self.pid: int | None = None
        self.exit_status: int | None = None
        self.on_exit: Callable[[ChildKernel, int | None], None] | None = None
        self.generation = 0
        self._stopping = False

    # -- environment -----------------------------------------------------------------------
    def child_environment(self) -> dict[str, str]:
        """The child's environment: allow-listed names only, plus explicit extras."""
        env = {k: os.environ[k] for k in self.env_allowlist if k in os.environ}
        env.setdefault("PATH", os.defpath)
        env.update(self.extra_env)
        env.update(self.env_overrides)
        # Libraries want writable config and cache dirs; never the user's real ones.
        assert self.runtime_dir is not None
        private = self.runtime_dir / "home"
        env["HOME"] = str(private)
        env.setdefault("IPYTHONDIR", str(private / ".ipython"))
        env.setdefault("MPLCONFIGDIR", str(private / ".config" / "matplotlib"))
        env.setdefault("XDG_CACHE_HOME", str(private / ".cache"))
        env.setdefault("XDG_CONFIG_HOME", str(private / ".config"))
        env["JPY_PARENT_PID"] = str(os.getpid())
        env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
        return env

    def base_argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "ironcage_jupyter.child_main",
            "-f",
            "{connection_file}",
            "--IPKernelApp.kernel_class=ipykernel.ipkernel.IPythonKernel",
            "--Application.log_level=WARN",
            # ipykernel sleeps 0.5 ms before every execute_reply so that a frontend sees the cell's
            # output first. The wrapper orders that itself: it replies only once the child's iopub
            # idle (sent after every output) has arrived, so the sleep is pure latency here.
            "--IPythonKernel._execute_sleep=0",
        ]

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start a fresh child and wait until it answers kernel_info."""
        self._stopping = False
        self.exit_status = None
        base = Path(self.runtime_base) if self.runtime_base else Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        # mkdtemp creates the directory with mode 0700: the HMAC key and sockets are ours alone.
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="ironcage-", dir=base))
        os.chmod(self.runtime_dir, 0o700)
        home = self.runtime_dir / "home"
        home.mkdir(mode=0o700)

        connection_file = self.runtime_dir / "connection.json"
        env = self.child_environment()
        argv = self.base_argv()
        if self.command_wrapper is not None:
            argv, env = self.command_wrapper(argv, env, self.runtime_dir)
        spec = KernelSpec(
            argv=argv,
            display_name="Iron Cage child",
            language="python",
            interrupt_mode="message",
            env={},
        )
        km = AsyncKernelManager(
            kernel_name=CHILD_KERNEL_NAME,
            kernel_spec_manager=_ChildSpecManager(spec),
            transport="ipc",
            ip=str(self.runtime_dir / "kernel"),
            connection_file=str(connection_file),
            shutdown_wait_time=self.shutdown_wait_time,
            parent=self,
        )
        self.km = km
        await km.start_kernel(env=env, cwd=str(self.workspace))
        self.generation += 1
        process = getattr(km.provisioner, "process", None)
        self.pid = process.pid if process is not None else None
        if process is not None:
            self._watch(process, self.generation)

    def _watch(self, process: Any, generation: int) -> None:
        """Learn of the child's death without polling: a thread blocks in wait()."""
        loop = asyncio.get_running_loop()

        def wait() -> None:
            status = process.wait()
            try:
                loop.call_soon_threadsafe(self._exited, generation, status)
            except RuntimeError:
                pass  # the loop is closed: the wrapper is going away too

        threading.Thread(target=wait, name=f"ironcage-child-watch-{generation}", daemon=True).start()

    def _exited(self, generation: int, status: int | None) -> None:
        if generation != self.generation:
            return
        self.exit_status = status
        if self.on_exit is not None and not self._stopping:
            self.on_exit(self, status)

    @property
    def alive(self) -> bool:
        return self.km is not None and self.exit_status is None

    async def interrupt(self) -> None:
        if self.km is not None:
            await self.km.interrupt_kernel()

    async def kill(self) -> None:
        """Kill the child at once (fault path)."""
        self._stopping = True
        if self.km is not None:
            try:
                await self.km.shutdown_kernel(now=True)
            except Exception:  # the process may already be gone
                self.log.debug("kill of the child failed", exc_info=True)
        self._cleanup()

    async def stop(self) -> None:
        """Ask the child to shut down, kill it if it does not, and remove its runtime directory."""
        self._stopping = True
        if self.km is not None:
            try:
                if self.exit_status is None:
                    await self.km.shutdown_kernel(now=False)
                else:
                    await self.km.shutdown_kernel(now=True)
            except Exception:
                self.log.debug("clean shutdown of the child failed", exc_info=True)
                try:
                    await self.km.shutdown_kernel(now=True)
                except Exception:
                    self.log.debug("kill of the child failed", exc_info=True)
        self._cleanup()

    def kill_now_sync(self) -> None:
        """Last resort at interpreter exit: SIGKILL the child's process group, no event loop needed."""
        if self.pid and self.exit_status is None:
            try:
                os.killpg(self.pid, 9)
            except OSError:
                try:
                    os.kill(self.pid, 9)
                except OSError:
                    pass
        self._cleanup()

    def _cleanup(self) -> None:
        self.km = None
        if self.runtime_dir is not None:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            self.runtime_dir = None
