"""What the wrapper kernel holds for one session: the child's command wrapper, the selftest gate,
status lines, and cleanup.

Wiring (kernel.py, by the lead)::

    self.sandbox = SandboxController(
        workspace=Path(self.workspace),
        isolation=policy.isolation,
        limits=policy.limits,
        hidden_paths=(config_dir, policy_dir, Path(self.audit_dir), secrets_dir),
    )
    self.child.command_wrapper = self.sandbox.command_wrapper
    # before the first cell (once; ~0.1-0.2 s, may run in a thread while the child starts):
    ok, reasons = await asyncio.to_thread(self.sandbox.check)
    # not ok -> Block(ename="IsolationUnavailable", evalue="; ".join(reasons)); cells do not run
    # %ironcage status: self.sandbox.status_lines()  /  status_info: self.sandbox.status_dict()
    # at shutdown / after killing the child: self.sandbox.release_all()
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

from ironcage_jupyter.sandbox.launcher import SandboxSpec, build_sandboxed_command, release_sandbox
from ironcage_jupyter.sandbox.selftest import SelfTestReport, run_selftest, status_lines
from ironcage_jupyter.sandbox.settings import IsolationSettings, ResourceLimits


class SandboxController:
    def __init__(
        self,
        *,
        workspace: Path,
        isolation: IsolationSettings,
        limits: ResourceLimits,
        hidden_paths: Iterable[Path] = (),
        disabled_layers: frozenset[str] = frozenset(),
        refuse_namespaces: bool = False,
    ) -> None:
        self.workspace = Path(workspace)
        self.isolation = isolation
        self.limits = limits
        self.hidden_paths = tuple(Path(p) for p in hidden_paths)
        self.disabled_layers = disabled_layers
        self.refuse_namespaces = refuse_namespaces
        self._report: SelfTestReport | None = None
        self._specs: dict[Path, SandboxSpec] = {}
        self._lock = threading.Lock()

    def spec_for(self, socket_dir: Path) -> SandboxSpec:
        return SandboxSpec(
            workspace=self.workspace,
            socket_dir=Path(socket_dir),
            isolation=self.isolation,
            limits=self.limits,
            hidden_paths=self.hidden_paths,
            disabled_layers=self.disabled_layers,
            refuse_namespaces=self.refuse_namespaces,
        )

    def command_wrapper(
        self, argv: list[str], env: dict[str, str], runtime_dir: Path
    ) -> tuple[list[str], dict[str, str]]:
        """``ChildKernel.command_wrapper``: the child's argv/env inside the sandbox.

        ``runtime_dir`` (0700, holding connection.json and the ipc sockets) is bound read-write;
        a child started before (a restart) has its leftovers killed first.
        """
        spec = self.spec_for(runtime_dir)
        self.release_all()
        with self._lock:
            self._specs[spec.socket_dir] = spec
        return build_sandboxed_command(argv, env, spec)

    def selftest(self, *, refresh: bool = False) -> SelfTestReport:
        """Run (once, cached) the attack probe in a sandbox built like the child's."""
        if self._report is None or refresh:
            probe_dir = Path(tempfile.mkdtemp(prefix="ironcage-selftest-"))
            try:
                self._report = run_selftest(self.spec_for(probe_dir))
            finally:
                shutil.rmtree(probe_dir, ignore_errors=True)
        return self._report

    def check(self) -> tuple[bool, list[str]]:
        """May cells run? (False, reasons) when a required layer is missing: fail closed."""
        return self.selftest().ok_for(self.isolation.required_layers)

    def status_lines(self) -> list[str]:
        if self._report is None:
            return ["sandbox: selftest not run yet"]
        return status_lines(self._report)

    def status_dict(self) -> dict:
        if self._report is None:
            return {"mode": "not tested"}
        data = self._report.to_dict()
        data.pop("probe", None)
        ok, reasons = self._report.ok_for(self.isolation.required_layers)
        data["ok"] = ok
        data["reasons"] = reasons
        data["required_layers"] = list(self.isolation.required_layers)
        return data

    def release_all(self) -> int:
        """Kill whatever is left of earlier children (grandchildren in degraded mode) and drop their
        cgroups. Returns the number of processes killed."""
        with self._lock:
            specs = list(self._specs.values())
            self._specs.clear()
        return sum(release_sandbox(spec) for spec in specs)
