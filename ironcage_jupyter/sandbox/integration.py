"""What the wrapper kernel holds for one session: the child's command wrapper, the selftest gate,
status lines, and cleanup.

Wired in kernel.py: ``IronCageKernel._make_sandbox()`` builds it (isolation and limits from the
policy), ``child.command_wrapper = sandbox.command_wrapper``, ``_launch_child`` awaits
``sandbox.check()`` (run in a thread while the child starts) and refuses to mark the child ready when
a required layer is missing, ``status_info()`` merges ``status_fields()``, shutdown calls
``release_all()``.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ironcage_jupyter.sandbox import cgroups
from ironcage_jupyter.sandbox.launcher import (
    SandboxSpec,
    build_sandboxed_command,
    release_sandbox,
    sandbox_cgroup_dirs,
)
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
        self._seen_hits: dict[Path, dict[str, int]] = {}
        self._last_hits: list[str] = []
        self._audited: SelfTestReport | None = None
        #: Each live sandbox's cgroup directories and their counter files, found once (locating them
        #: parses the mount table).
        self._hit_dirs: dict[Path, list[cgroups.HitCounters]] = {}

    def configure(self, isolation: IsolationSettings, limits: ResourceLimits) -> None:
        """Apply the policy's sections (before the first child starts; the selftest re-runs)."""
        self.isolation = isolation
        self.limits = limits
        self._report = None

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
        # The wrapper's ChildKernel already built this environment from its own allowlist plus the
        # sentinels and tool endpoints other components add: keep every name it chose.
        update: dict = {"pass_env": sorted({*self.isolation.pass_env, *env})}
        egress_port = env.get("IRONCAGE_EGRESS_PORT", "")
        if egress_port.isdigit():
            # The tools' egress bridge listens on this port of the child's private loopback.
            update["loopback_ports"] = sorted({*self.isolation.loopback_ports, int(egress_port)})
        isolation = self.isolation.model_copy(update=update)
        spec = dataclasses.replace(spec, isolation=isolation)
        # Leftovers of an earlier child are killed in the background: this runs on the wrapper's
        # event loop, which must not wait for dying processes.
        with self._lock:
            previous = list(self._specs.values())
            self._specs = {spec.socket_dir: spec}
            self._close_hit_counters()
        if previous:
            threading.Thread(
                target=lambda: [release_sandbox(old) for old in previous],
                name="ironcage-sandbox-release",
                daemon=True,
            ).start()
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

    def audit_verdict(self, record: Callable[..., Any]) -> str | None:
        """Record the self-test's verdict in the audit log, once per self-test run (the report is
        cached across child restarts): ``record`` is ``KernelAudit.record``.

        One ``isolation`` event (outcome active / degraded / unsafe / refused, each layer's state and
        reason); a refusal is a ``deny`` naming the missing required layers and each missing required
        layer is also a ``violation`` of kind ``selftest_failure``; the ``unsafe`` opt-in is an
        ``allow`` under rule ``isolation.unsafe``. Raises when the audit cannot record it, so the
        caller refuses to run cells (fail closed). Returns the outcome recorded (None: nothing new).
        """
        report = self._report
        if report is None or report is self._audited:
            return None
        required = list(self.isolation.required_layers)
        ok, reasons = report.ok_for(required)
        missing = [
            name for name in required if name not in report.layers or report.layers[name].state == "missing"
        ]
        if report.error and not missing:
            missing = required
        degraded = any(s.state != "active" for s in report.layers.values())
        decision: str | None = None
        rule: str | None = None
        reason: str | None = None
        if not ok:
            outcome, decision, rule = "refused", "deny", "isolation.required_layers"
            reason = "; ".join(reasons)
        elif report.unsafe and (missing or report.error):
            outcome, decision, rule = "unsafe", "allow", "isolation.unsafe"
            reason = "; ".join(reasons)
        else:
            outcome = "degraded" if degraded else "active"
        detail: dict[str, Any] = {
            "outcome": outcome,
            "mode": report.mode,
            "layers": {name: s.state for name, s in report.layers.items()},
            "reasons": {name: s.reason for name, s in report.layers.items()},
            "mechanisms": {name: list(s.mechanisms) for name, s in report.layers.items()},
            "required_layers": required,
            "missing_required": missing,
            "unsafe": report.unsafe,
            "selftest_ms": round(report.duration_ms, 1),
            "error": report.error or None,
        }
        record("isolation", decision=decision, rule=rule, reason=reason, detail=detail)
        if outcome == "refused":
            for name in missing:
                status = report.layers.get(name)
                record(
                    "violation",
                    decision="deny",
                    rule="isolation.required_layers",
                    reason=f"required isolation layer '{name}' is missing: no cell runs",
                    detail={
                        "kind": "selftest_failure",
                        "layer": name,
                        "message": status.reason if status is not None else (report.error or "not tested"),
                    },
                )
        self._audited = report
        return outcome

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

    def limits_hit(self) -> list[str]:
        """Resource limits the current child ran into since the last call, as sentences (empty: none).

        Call after each cell (one pread per cgroup counter file, held open while the child lives). A process-cap hit leaves the
        fork bomb's children holding every slot, so the child should then be restarted."""
        found: list[str] = []
        with self._lock:
            specs = list(self._specs.values())
        for spec in specs:
            counters = self._hit_dirs.get(spec.socket_dir)
            if counters is None:  # created with the child's command, so present after it started
                counters = [
                    cgroups.HitCounters(directory, cgroups.hit_files(directory))
                    for directory in sandbox_cgroup_dirs(spec)
                ]
                with self._lock:
                    kept = spec.socket_dir in self._specs
                    if kept:
                        self._hit_dirs[spec.socket_dir] = counters
            else:
                kept = True
            counts: dict[str, int] = {}
            for counter in counters:
                for key, value in counter.read().items():
                    counts[key] = counts.get(key, 0) + value
                if not kept:  # its sandbox was replaced meanwhile
                    counter.close()
            seen = self._seen_hits.get(spec.socket_dir, {})
            self._seen_hits[spec.socket_dir] = counts
            if counts.get("processes", 0) > seen.get("processes", 0):
                found.append(f"the process limit ({self.limits.max_processes}) was reached")
            if counts.get("oom_kills", 0) > seen.get("oom_kills", 0):
                found.append(f"the memory limit ({self.limits.memory_mb} MB) killed a process")
        self._last_hits = found or self._last_hits
        return found

    def _close_hit_counters(self) -> None:
        """Called with the lock held, when the sandboxes they belong to are replaced or released."""
        for counters in self._hit_dirs.values():
            for counter in counters:
                counter.close()
        self._hit_dirs = {}

    def ui_layers(self) -> dict[str, tuple[str, str]]:
        """layer -> (state, reason) for the JupyterLab status bar (ui.bridge.IsolationStatus)."""
        if self._report is None:
            return {}
        return {name: (status.state, status.reason) for name, status in self._report.layers.items()}

    def status_fields(self) -> dict:
        """Flat fields for ``%ironcage status`` (text and --json)."""
        if self._report is None:
            return {"sandbox": "selftest not run yet (runs when the child starts)"}
        report = self._report
        ok, reasons = report.ok_for(self.isolation.required_layers)
        return {
            "sandbox": f"{report.mode}{' (UNSAFE MODE)' if report.unsafe else ''}, selftest {report.duration_ms:.0f} ms",
            "isolation": {name: status.state for name, status in report.layers.items()},
            "isolation_ok": ok,
            "isolation_notes": reasons or [f"{s.layer}: {s.reason}" for s in report.layers.values()],
            "limits_hit": self.limits_hit() or self._last_hits,
        }

    def release_all(self) -> int:
        """Kill whatever is left of earlier children (grandchildren in degraded mode) and drop their
        cgroups. Returns the number of processes killed."""
        with self._lock:
            specs = list(self._specs.values())
            self._specs.clear()
            self._close_hit_counters()
        return sum(release_sandbox(spec) for spec in specs)
