"""The selftest proves each layer from inside a sandbox and fails closed when one is missing."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from ironcage_jupyter.sandbox import bootstrap, cli, launcher
from ironcage_jupyter.sandbox.launcher import SandboxSpec, run_selftest
from ironcage_jupyter.sandbox.selftest import status_lines
from ironcage_jupyter.sandbox.settings import IsolationSettings, ResourceLimits

pytestmark = pytest.mark.timeout(120)
ALL = ["process", "filesystem", "network", "syscall"]


@pytest.fixture
def spec_for(tmp_path):
    def make(**kw) -> SandboxSpec:
        workspace = tmp_path / "ws"
        workspace.mkdir(exist_ok=True)
        socket_dir = tmp_path / "run"
        socket_dir.mkdir(mode=0o700, exist_ok=True)
        isolation = kw.pop("isolation", IsolationSettings())
        return SandboxSpec(workspace, socket_dir, isolation, ResourceLimits(), **kw)

    return make


def test_every_layer_active_on_this_machine(spec_for):
    report = run_selftest(spec_for())
    assert report.error == ""
    assert report.mode == "bubblewrap"
    assert {name: s.state for name, s in report.layers.items()} == dict.fromkeys(ALL, "active")
    assert report.ok_for(ALL) == (True, [])
    lines = status_lines(report)
    assert lines[0].startswith("sandbox: bubblewrap")
    assert all(any(line.strip().startswith(name) for line in lines) for name in ALL)


def test_missing_syscall_layer_refuses_cells(spec_for):
    report = run_selftest(spec_for(disabled_layers=frozenset({"seccomp"})))
    assert report.layers["syscall"].state == "missing"
    assert "unshare(0): succeeded" in report.layers["syscall"].reason
    ok, reasons = report.ok_for(ALL)
    assert not ok
    assert any("required layer 'syscall' is missing" in r for r in reasons)
    # Not required by this policy: cells may run, the gap is still listed.
    assert report.ok_for(["process", "filesystem"])[0]


def test_missing_filesystem_layer_names_the_canary(spec_for):
    report = run_selftest(spec_for(disabled_layers=frozenset({"filesystem"})))
    fs = report.layers["filesystem"]
    assert fs.state == "missing" and "canary" in fs.reason and "outside the workspace" in fs.reason
    assert not report.ok_for(["filesystem"])[0]


def test_unsafe_opt_in_runs_loudly(spec_for):
    report = run_selftest(
        spec_for(disabled_layers=frozenset({"seccomp"}), isolation=IsolationSettings(unsafe=True))
    )
    ok, reasons = report.ok_for(ALL)
    assert ok
    assert reasons[0].startswith("UNSAFE MODE")
    assert any("UNSAFE" in line for line in status_lines(report))


def test_degraded_environment_without_user_namespaces(spec_for):
    report = run_selftest(spec_for(refuse_namespaces=True))
    assert report.mode.startswith("degraded")
    states = {name: s.state for name, s in report.layers.items()}
    assert states == {
        "process": "degraded",
        "filesystem": "degraded",
        "network": "degraded",
        "syscall": "active",
    }
    assert "pidns" in report.layers["process"].reason and "netns" in report.layers["network"].reason
    ok, reasons = report.ok_for(ALL)
    assert ok and len(reasons) == 3


def test_degraded_mode_refused_when_policy_forbids_it(spec_for):
    report = run_selftest(spec_for(refuse_namespaces=True, isolation=IsolationSettings(allow_degraded=False)))
    assert report.mode == "failed" and "degraded mode not allowed" in report.error
    ok, reasons = report.ok_for(ALL)
    assert not ok and "selftest failed" in reasons[0]


def test_cli_selftest_json(capsys):
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["selftest", "--json"])
    assert args.func(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True
    assert {k: v["state"] for k, v in data["layers"].items()} == dict.fromkeys(ALL, "active")


def test_bootstrap_fails_closed_when_a_required_mechanism_cannot_apply(tmp_path):
    config = {"require": ["cgroups"], "cgroup_procs": [str(tmp_path / "missing" / "cgroup.procs")]}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ironcage_jupyter.sandbox.bootstrap",
            "--config",
            json.dumps(config),
            "--",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == bootstrap.EXIT_SETUP_FAILED
    assert "refusing to start the kernel" in proc.stderr and "cgroups" in proc.stderr


def _bootstrap(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ironcage_jupyter.sandbox.bootstrap", *args],
        capture_output=True, text=True, timeout=30,
    )


def test_cgroups_joined_on_the_early_thread_fail_closed_too(tmp_path):
    """The --cgroup files are written by a thread started before the bootstrap's imports; its failure
    still stops the kernel when cgroups are required."""
    missing = str(tmp_path / "missing" / "cgroup.procs")
    proc = _bootstrap("--cgroup", missing, "--config", json.dumps({"require": ["cgroups"]}), "--", "true")
    assert proc.returncode == bootstrap.EXIT_SETUP_FAILED
    assert "cgroups" in proc.stderr and "missing" in proc.stderr


def test_cgroups_joined_on_the_early_thread(tmp_path):
    """A writable stand-in for cgroup.procs receives the bootstrap's pid before the kernel starts."""
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    proc = _bootstrap("--cgroup", str(procs), "--config", json.dumps({"require": ["cgroups"]}), "--",
                      sys.executable, "-c", "import os; print(os.environ['IRONCAGE_SANDBOX_APPLIED'])")
    assert proc.returncode == 0, proc.stderr
    assert procs.read_text().strip().isdigit()
    assert "cgroups" in proc.stdout.split(",")[-1]  # waited for and reported as applied


def test_precompiled_seccomp_filter_is_loaded_and_refuses():
    """The wrapper compiles the filter once; the bootstrap loads the BPF and the calls are refused."""
    program = launcher.compiled_seccomp_filter(False)
    assert program
    config = {"require": ["seccomp"], "seccomp": True, "seccomp_bpf": program}
    check = (
        "import ctypes, errno, socket\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "rc = libc.unshare(0x40000000); print('unshare', rc, errno.errorcode.get(ctypes.get_errno()))\n"
        "try:\n    socket.socket(socket.AF_INET, socket.SOCK_DGRAM); print('udp ok')\n"
        "except OSError as exc:\n    print('udp', errno.errorcode.get(exc.errno))\n"
        "print('Seccomp', [l.split()[1] for l in open('/proc/self/status') if l.startswith('Seccomp:')][0])\n"
    )
    proc = _bootstrap("--config", json.dumps(config), "--", sys.executable, "-c", check)
    assert proc.returncode == 0, proc.stderr
    assert "unshare -1 EPERM" in proc.stdout and "udp EPERM" in proc.stdout and "Seccomp 2" in proc.stdout


def test_malformed_seccomp_program_fails_closed():
    config = {"require": ["seccomp"], "seccomp": True, "seccomp_bpf": "AAAA"}  # 3 bytes: no instruction
    proc = _bootstrap("--config", json.dumps(config), "--", "true")
    assert proc.returncode == bootstrap.EXIT_SETUP_FAILED and "seccomp" in proc.stderr


def test_bootstrap_rejects_malformed_config():
    proc = subprocess.run(
        [sys.executable, "-m", "ironcage_jupyter.sandbox.bootstrap", "--config", "{not json", "--", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == bootstrap.EXIT_SETUP_FAILED


def test_no_linux_no_isolation_unless_unsafe(spec_for, monkeypatch):
    """macOS/Windows: nothing to apply, so cells only run with the loud unsafe opt-in."""
    from ironcage_jupyter.sandbox import launcher

    monkeypatch.setattr(launcher.sys, "platform", "darwin")
    with pytest.raises(launcher.SandboxError, match="no isolation layer exists on darwin"):
        launcher.build_sandboxed_command(["python", "-m", "ipykernel_launcher"], {"PATH": "/bin"}, spec_for())
    argv, env = launcher.build_sandboxed_command(
        ["python", "-m", "ipykernel_launcher"],
        {"PATH": "/bin", "AWS_SECRET_ACCESS_KEY": "x"},
        spec_for(isolation=IsolationSettings(unsafe=True)),
    )
    assert argv == ["python", "-m", "ipykernel_launcher"]
    assert "AWS_SECRET_ACCESS_KEY" not in env


def test_address_space_limit_stays_at_memory_mb_when_the_memory_cgroup_is_not_joined(spec_for, tmp_path, monkeypatch):
    """RLIMIT_AS is relaxed only because a memory cgroup holds the real memory: when the child cannot
    join that cgroup (the join is best effort), its address space falls back to limits.memory_mb."""
    from ironcage_jupyter.sandbox import cgroups

    gone = tmp_path / "gone-cgroup"  # a memory cgroup the bootstrap cannot join
    monkeypatch.setattr(cgroups, "create", lambda name, **kw: cgroups.CgroupSet(name, (gone,), ("memory",)))
    spec = spec_for(isolation=IsolationSettings(unsafe=True))
    argv, _env = launcher.build_sandboxed_command([sys.executable, "-c", "pass"], {}, spec)
    at = argv.index("ironcage_jupyter.sandbox.bootstrap")
    config = json.loads(argv[argv.index("--config", at) + 1])
    memory = spec.limits.memory_mb * 1024 * 1024
    assert config["rlimits"]["as"] > memory  # relaxed: the cgroup was to hold the memory
    keep = {key: value for key, value in config.items() if key.startswith("rlimits")}
    check = "import resource; print(resource.getrlimit(resource.RLIMIT_AS)[0])"
    proc = _bootstrap("--cgroup", str(gone / "cgroup.procs"), "--config", json.dumps(keep), "--",
                      sys.executable, "-c", check)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[-1]) == memory
