"""Selftest: run the attack probe in a sandbox built exactly like the kernel's, map results to layers.

Each layer is ``active`` (every attack aimed at it failed and all of its mechanisms are in place),
``degraded`` (the attacks failed but a mechanism is missing, e.g. no network namespace where user
namespaces are refused) or ``missing`` (an attack got through, or nothing enforces the layer).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ironcage_jupyter.sandbox.launcher import (
    SandboxError,
    SandboxSpec,
    build_sandboxed_command,
    release_sandbox,
)

State = Literal["active", "degraded", "missing"]
LAYERS = ("process", "filesystem", "network", "syscall")

# Mechanisms expected for each layer to count as fully active.
_EXPECTED = {
    "process": ("pidns", "userns", "no_new_privs", "not_dumpable", "drop_caps"),
    "filesystem": ("mounts", "landlock"),
    "network": ("netns", "seccomp", "landlock"),
    "syscall": ("seccomp",),
}


@dataclass(frozen=True)
class LayerStatus:
    layer: str
    state: State
    reason: str
    mechanisms: tuple[str, ...] = ()


@dataclass
class SelfTestReport:
    layers: dict[str, LayerStatus]
    mode: str  # "bubblewrap" | "degraded (no namespaces)" | "failed"
    unsafe: bool = False
    duration_ms: float = 0.0
    probe: dict = field(default_factory=dict)
    error: str = ""

    def ok_for(self, required_layers: Sequence[str]) -> tuple[bool, list[str]]:
        """May cells run? False with the reasons when a required layer is missing (fail closed).

        A degraded layer still holds (its attacks failed) and is allowed, with its reason listed.
        With the policy's ``unsafe`` opt-in missing layers are allowed too, loudly.
        """
        reasons: list[str] = []
        ok = True
        if self.error:
            reasons.append(f"selftest failed: {self.error}")
            ok = self.unsafe
        for name in required_layers:
            status = self.layers.get(name)
            if status is None or status.state == "missing":
                ok = ok and self.unsafe
                why = status.reason if status else "not tested"
                reasons.append(f"required layer '{name}' is missing: {why}")
            elif status.state == "degraded":
                reasons.append(f"layer '{name}' is degraded: {status.reason}")
        if self.unsafe and reasons:
            reasons.insert(0, "UNSAFE MODE: the policy allows cells to run without the required isolation")
        return ok, reasons

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "unsafe": self.unsafe,
            "duration_ms": round(self.duration_ms, 1),
            "error": self.error,
            "layers": {
                name: {"state": s.state, "reason": s.reason, "mechanisms": list(s.mechanisms)}
                for name, s in self.layers.items()
            },
            "probe": self.probe,
        }


def status_lines(report: SelfTestReport) -> list[str]:
    """Human lines for ``%ironcage status`` and ``ironcage-jupyter selftest``."""
    lines = [f"sandbox: {report.mode} (selftest {report.duration_ms:.0f} ms)"]
    if report.unsafe:
        lines.append("!! UNSAFE MODE: cells run even where isolation layers are missing !!")
    if report.error:
        lines.append(f"error: {report.error}")
    for name in LAYERS:
        status = report.layers.get(name)
        if status is None:
            continue
        mark = {"active": "[ok]", "degraded": "[degraded]", "missing": "[MISSING]"}[status.state]
        lines.append(f"  {name:<11} {mark:<11} {status.reason}")
    return lines


class _HostTargets:
    """Host-side bait: listeners on 127.0.0.1 / ::1, a canary in a hidden dir, a writable dir outside the
    workspace, and a host process whose environment carries a marker."""

    def __init__(self, spec: SandboxSpec) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ironcage-selftest-"))
        self.hidden = self.root / "hidden"
        self.hidden.mkdir()
        self.secret = secrets.token_hex(16)
        self.canary = self.hidden / "canary.txt"
        self.canary.write_text(self.secret)
        self.outside = self.root / "outside"
        self.outside.mkdir()
        self.outside.chmod(0o777)
        self.workspace = spec.workspace
        # Its own socket dir, so the probe's cgroup never collides with a running kernel's.
        self.socket_dir = self.root / "sock"
        self.socket_dir.mkdir(mode=0o700)
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.tcp.setblocking(False)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.setblocking(False)
        self.tcp6: socket.socket | None
        try:
            self.tcp6 = socket.create_server(("::1", 0), family=socket.AF_INET6)
            self.tcp6.setblocking(False)
        except OSError:
            self.tcp6 = None
        self.marker = secrets.token_hex(12)
        self.host_process = subprocess.Popen(
            ["sleep", "60"],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "IRONCAGE_MARKER": self.marker},
        )

    def targets(self) -> dict:
        return {
            "canary_file": str(self.canary),
            "canary_secret": self.secret,
            "outside_dir": str(self.outside),
            "system_dir": sysconfig.get_paths()["purelib"],
            "workspace": str(self.workspace),
            "tcp_port": self.tcp.getsockname()[1],
            "udp_port": self.udp.getsockname()[1],
            "tcp6_port": self.tcp6.getsockname()[1] if self.tcp6 else 0,
            "host_pid": self.host_process.pid,
            "environ_marker": self.marker,
        }

    def arrived(self) -> dict[str, bool]:
        """Did anything reach the host listeners? (The probe has exited: everything sent is queued.)"""
        out = {"tcp_host": _accepts(self.tcp), "udp_host": False, "tcp6_host": _accepts(self.tcp6)}
        try:
            out["udp_host"] = self.udp.recv(64) == b"ironcage-udp"
        except BlockingIOError:
            pass
        return out

    def close(self) -> None:
        self.host_process.kill()
        self.host_process.wait()
        for sock in (self.tcp, self.udp, self.tcp6):
            if sock is not None:
                sock.close()
        shutil.rmtree(self.root, ignore_errors=True)


def _accepts(server: socket.socket | None) -> bool:
    if server is None:
        return False
    try:
        conn, _ = server.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def run_selftest(spec: SandboxSpec, timeout_s: float = 30.0) -> SelfTestReport:
    """Start the probe in a sandbox built by ``build_sandboxed_command`` and judge every layer."""
    started = time.perf_counter()
    host = _HostTargets(spec)
    probe_spec = SandboxSpec(
        workspace=spec.workspace,
        socket_dir=host.socket_dir,
        isolation=spec.isolation,
        limits=spec.limits,
        hidden_paths=(*spec.hidden_paths, host.hidden),
        disabled_layers=spec.disabled_layers,
        refuse_namespaces=spec.refuse_namespaces,
    )
    try:
        try:
            argv, env = build_sandboxed_command(
                [sys.executable, "-m", "ironcage_jupyter.sandbox.probe", json.dumps(host.targets())],
                dict(os.environ),
                probe_spec,
            )
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s)
        except (SandboxError, OSError, subprocess.TimeoutExpired) as exc:
            return _failed(spec, f"{type(exc).__name__}: {exc}", started)
        finally:
            release_sandbox(probe_spec)
        if proc.returncode != 0:
            return _failed(spec, f"probe exited {proc.returncode}: {proc.stderr.strip()[-500:]}", started)
        try:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return _failed(
                spec, f"probe printed no result: {proc.stdout[-200:]!r} {proc.stderr[-300:]!r}", started
            )
        arrived = host.arrived()
    finally:
        host.close()
    report = judge(result, arrived, unsafe=spec.isolation.unsafe)
    report.duration_ms = (time.perf_counter() - started) * 1000
    return report


def _failed(spec: SandboxSpec, error: str, started: float) -> SelfTestReport:
    layers = {name: LayerStatus(name, "missing", "the sandbox did not start") for name in LAYERS}
    return SelfTestReport(
        layers,
        "failed",
        unsafe=spec.isolation.unsafe,
        duration_ms=(time.perf_counter() - started) * 1000,
        error=error,
    )


def judge(result: dict, arrived: dict[str, bool], *, unsafe: bool = False) -> SelfTestReport:
    """Map probe results (inside) and arrivals (host side) to per-layer states."""
    checks, facts = result["checks"], result["facts"]
    applied = set(facts.get("applied", []))
    mode = "bubblewrap" if "userns" in applied else "degraded (no namespaces)"
    layers: dict[str, LayerStatus] = {}

    def decide(layer: str, failures: list[str], extra_missing: list[str] | None = None) -> None:
        present = tuple(m for m in _EXPECTED[layer] if m in applied)
        absent = [m for m in _EXPECTED[layer] if m not in applied] + (extra_missing or [])
        if failures:
            layers[layer] = LayerStatus(layer, "missing", "; ".join(failures), present)
        elif not present:
            layers[layer] = LayerStatus(layer, "missing", "no mechanism enforces it", present)
        elif absent:
            layers[layer] = LayerStatus(
                layer, "degraded", f"held by {', '.join(present)}; missing {', '.join(absent)}", present
            )
        else:
            layers[layer] = LayerStatus(layer, "active", f"held by {', '.join(present)}", present)

    # process
    failures = []
    for name in ("signal_host", "host_environ"):
        if not checks[name]["blocked"]:
            failures.append(checks[name]["detail"])
    if not facts["no_new_privs"]:
        failures.append("no_new_privs is not set")
    if facts["cap_eff"]:
        failures.append(f"capabilities still effective ({facts['cap_eff']:#x})")
    extra = [] if facts["dumpable"] == 0 else ["not dumpable"]
    decide("process", failures, extra)

    # filesystem
    failures = []
    if not checks["read_canary"]["blocked"]:
        failures.append("canary in a hidden directory was readable")
    if not checks["write_outside"]["blocked"]:
        failures.append("wrote outside the workspace")
    if not checks["write_site_packages"]["blocked"]:
        failures.append("wrote into site-packages (persistence)")
    decide("filesystem", failures)
    if not checks["workspace_write"]["ok"]:
        # Not a hole, a usability problem: in degraded mode Landlock alone has to carve hidden paths
        # out of the workspace, which costs its top directory the right to create entries.
        fs = layers["filesystem"]
        layers["filesystem"] = LayerStatus(
            fs.layer,
            fs.state,
            f"{fs.reason}; note: the workspace's top directory is not writable "
            f"({checks['workspace_write']['detail']}; a hidden path lies inside it)",
            fs.mechanisms,
        )

    # network: reaching the host is judged on the host side
    failures = [f"{name} reached the host listener" for name, hit in arrived.items() if hit]
    for name in ("tcp_host", "tcp6_host"):
        if name in checks and checks[name]["blocked"] is False:
            failures.append(checks[name]["detail"])
    decide("network", failures)

    # syscall
    syscalls = checks["syscalls"]
    decide("syscall", [] if syscalls["blocked"] else [syscalls["detail"]])
    return SelfTestReport(layers, mode, unsafe=unsafe, probe=result)
