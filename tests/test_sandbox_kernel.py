"""A real ipykernel in the real sandbox: every layer on, each attack of the battery must fail."""

from __future__ import annotations

import json
import os

import pytest
from sandbox_support import ATTACKS, Bait, SandboxedKernel, leaks, run_battery

from ironcage_jupyter.sandbox.launcher import address_space_mb, sandbox_cgroup_dirs
from ironcage_jupyter.sandbox.settings import IsolationSettings, ResourceLimits

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def bait(tmp_path_factory):
    root = tmp_path_factory.mktemp("sandbox-kernel")
    with pytest.MonkeyPatch.context() as mp:
        bait = Bait.create(root)
        mp.setenv("HOME", str(bait.home))
        mp.setenv("IRONCAGE_TEST_WRAPPER_SECRET", bait.secret)
        yield bait
        bait.close()


@pytest.fixture(scope="module")
def kernel(bait):
    kernel = SandboxedKernel(bait.spec())
    yield kernel
    kernel.shutdown()


def test_every_attack_in_the_battery_is_blocked(kernel, bait):
    results = run_battery(kernel, bait)
    assert set(results) == set(ATTACKS)
    assert leaks(results) == {}
    assert bait.hits == []


def test_kernel_still_works_after_the_attacks(kernel, bait):
    reply, out = kernel.run("print(6 * 7)")
    assert reply["status"] == "ok" and out.strip() == "42"


def test_workspace_is_writable_and_data_readable(kernel, bait):
    data = kernel.run_json(
        "import json; open('result.txt', 'w').write('done'); print(json.dumps([open('data.csv').read(), __import__('os').getcwd()]))"
    )
    assert data == ["a,b\n1,2\n", str(bait.workspace)]
    assert (bait.workspace / "result.txt").read_text() == "done"


def test_wrapper_environment_does_not_reach_the_child(kernel, bait):
    env = kernel.run_json("import os, json; print(json.dumps(dict(os.environ)))")
    assert "IRONCAGE_TEST_WRAPPER_SECRET" not in env
    assert bait.secret not in json.dumps(env)
    # A private home: the real path on a tmpfs, or a directory in the private tmp.
    assert env["HOME"] == str(bait.home) or env["HOME"].startswith(env["TMPDIR"])
    assert env["IPYTHONDIR"].startswith(env["TMPDIR"])


def test_home_shows_only_the_workspace(kernel, bait):
    # Landlock refuses to list home at all; the mount view (checked with Landlock off) shows only
    # the workspace in a private tmpfs.
    reply, out = kernel.run(f"import os; os.listdir({str(bait.home)!r})")
    assert reply["status"] == "error" and "PermissionError" in out
    relaxed = SandboxedKernel(bait.spec(disabled_layers=frozenset({"landlock"})))
    try:
        listing = relaxed.run_json(
            f"import os, json; print(json.dumps(sorted(os.listdir({str(bait.home)!r}))))"
        )
    finally:
        relaxed.shutdown()
    planted = {".ssh", ".aws", ".netrc", ".config", ".local", "notes.txt"}
    assert planted <= {p.name for p in bait.home.iterdir()}
    assert "project" in listing and not set(listing) & planted


def test_proc_belongs_to_a_new_pid_namespace(kernel, bait):
    info = kernel.run_json(
        "import os, json; print(json.dumps([open('/proc/1/cmdline').read().split(chr(0))[0], os.getpid(), sorted(int(p) for p in os.listdir('/proc') if p.isdigit())]))"
    )
    init, pid, pids = info
    assert init.endswith("bwrap")
    assert pid < 10 and os.getpid() not in pids and max(pids) < 100


def test_process_hardening_in_the_kernel(kernel, bait):
    status = kernel.run_json(
        "import ctypes, json; s = dict(l.split(':', 1) for l in open('/proc/self/status')); "
        "print(json.dumps({k: s[k].strip() for k in ('Uid', 'CapEff', 'CapBnd', 'NoNewPrivs', 'Seccomp')} | "
        "{'dumpable': ctypes.CDLL(None).prctl(3, 0, 0, 0, 0), 'sid': __import__('os').getsid(0)}))"
    )
    assert status["Uid"].split()[0] == "65534"
    assert int(status["CapEff"], 16) == 0
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert status["dumpable"] == 0


def test_resource_limits_reach_the_kernel(kernel, bait):
    limits = kernel.run_json(
        "import resource, json; print(json.dumps([resource.getrlimit(resource.RLIMIT_AS)[0], "
        "resource.getrlimit(resource.RLIMIT_CORE)[0], open('/proc/self/cgroup').read()]))"
    )
    name = f"ironcage-{kernel.spec.sandbox_name}"
    memory_dirs = [d for d in sandbox_cgroup_dirs(kernel.spec) if _memory_limit(d) is not None]
    in_memory_cgroup = any(name in line and "memory" in line.split(":")[1] for line in limits[2].splitlines())
    # Real memory is held by the memory cgroup where there is one; RLIMIT_AS is then only a backstop.
    assert limits[0] == address_space_mb(ResourceLimits(memory_mb=2048), memory_cgroup=bool(memory_dirs)) << 20
    assert limits[1] == 0
    if os.getuid() == 0:  # cgroups are created by the (root) wrapper here
        assert name in limits[2]
        assert in_memory_cgroup == bool(memory_dirs)
    for directory in memory_dirs:
        assert _memory_limit(directory) == 2048 << 20


def _memory_limit(directory) -> int | None:
    for limit_file in ("memory.max", "memory.limit_in_bytes"):
        try:
            return int((directory / limit_file).read_text())
        except (OSError, ValueError):
            continue
    return None


def test_shutdown_leaves_no_process_behind(bait, tmp_path):
    kernel = SandboxedKernel(bait.spec())
    pid = kernel.km.provisioner.process.pid
    kernel.run("import subprocess; p = subprocess.Popen(['sleep', '300'])")
    assert len(_sandboxed_processes(kernel.spec.sandbox_name)) >= 2  # the kernel and its sleep
    kernel.shutdown()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert _sandboxed_processes(kernel.spec.sandbox_name) == []


def _sandboxed_processes(name: str) -> list[int]:
    """Host pids whose environment marks them as part of the named sandbox."""
    found = []
    marker = f"IRONCAGE_SANDBOX={name}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                env = handle.read()
        except OSError:
            continue
        if marker in env.split(b"\0"):
            found.append(int(entry))
    return found


def test_loopback_port_for_the_egress_bridge_stays_private(bait):
    """An allowed loopback TCP port (the tool egress bridge) works on the sandbox's own loopback only:
    the host's server on that very port stays unreachable, other ports and UDP stay refused."""
    port = bait.targets()["http_port"]
    kernel = SandboxedKernel(bait.spec(isolation=IsolationSettings(loopback_ports=[port])))
    try:
        result = kernel.run_json(
            f"""
import json, socket
out = {{}}
srv = socket.create_server(('127.0.0.1', {port}))
c = socket.create_connection(('127.0.0.1', {port}), 2); c.sendall(b'ping')
conn, _ = srv.accept(); out['own_loopback'] = conn.recv(4).decode()
srv.close(); c.close(); conn.close()
def attempt(key, fn):
    try:
        fn(); out[key] = 'ESCAPED'
    except OSError as exc:
        out[key] = type(exc).__name__
attempt('host_server_same_port', lambda: socket.create_connection(('127.0.0.1', {port}), 2).sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'))
attempt('other_port', lambda: socket.create_connection(('127.0.0.1', {port} + 1 if {port} < 65535 else 1024), 2))
attempt('udp', lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
attempt('ipv6', lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM))
print(json.dumps(out))
"""
        )
    finally:
        kernel.shutdown()
    assert result["own_loopback"] == "ping"
    assert "ESCAPED" not in result.values(), result
    assert bait.hits == []
