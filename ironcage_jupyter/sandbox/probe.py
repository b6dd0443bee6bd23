"""Attack probe run inside the sandbox by the selftest: each check tries one escape and reports.

    python -m ironcage_jupyter.sandbox.probe '<json targets>'

Prints one JSON object: {"checks": {name: {"blocked": bool, "detail": str}}, "facts": {...}}.
``blocked`` is judged from inside only where that is possible; the selftest completes the verdict for
network checks from the host side (did anything arrive?). Stdlib only, fast: runs on every start.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import sys

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _err(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


def check_read(path: str, secret: str) -> dict:
    try:
        with open(path) as handle:
            data = handle.read()
    except OSError as exc:
        return {"blocked": True, "detail": _err(exc)}
    if secret and secret in data:
        return {"blocked": False, "detail": f"read {path}"}
    return {"blocked": True, "detail": "file replaced by an empty placeholder"}


def check_write(directory: str) -> dict:
    path = os.path.join(directory, f"ironcage-probe-{os.getpid()}")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        return {"blocked": True, "detail": _err(exc)}
    os.close(fd)
    os.unlink(path)
    return {"blocked": False, "detail": f"created a file in {directory}"}


def check_workspace_write(directory: str) -> dict:
    result = check_write(directory)
    # Inverted: the workspace must stay writable, otherwise the sandbox is broken, not safe.
    return {"ok": not result["blocked"], "detail": result["detail"]}


def check_connect(family: int, kind: int, address: tuple, payload: bytes) -> dict:
    try:
        sock = socket.socket(family, kind)
    except OSError as exc:
        return {"blocked": True, "socket_refused": True, "detail": "socket(): " + _err(exc)}
    try:
        sock.settimeout(1.0)
        if kind == socket.SOCK_STREAM:
            sock.connect(address)
            sock.sendall(payload)
            return {"blocked": False, "detail": f"connected to {address[0]}:{address[1]}"}
        sock.sendto(payload, address)
        # Not judged here: a datagram to 127.0.0.1 inside a network namespace "succeeds" locally.
        return {"blocked": None, "detail": "sendto() returned"}
    except OSError as exc:
        return {"blocked": True, "detail": _err(exc)}
    finally:
        sock.close()


def _syscall_refused(number: int, *args: int) -> tuple[bool, str]:
    result = _libc.syscall(ctypes.c_long(number), *[ctypes.c_long(a) for a in args])
    if result >= 0:
        return False, "succeeded"
    err = ctypes.get_errno()
    return err == errno.EPERM, errno.errorcode.get(err, str(err))


# x86_64 / aarch64 syscall numbers for calls whose arguments make them harmless no-ops or errors
# without a filter, and EPERM only when a filter refuses them.
_NUMBERS = {
    "x86_64": {"unshare": 272, "ptrace": 101, "keyctl": 250, "process_vm_readv": 310, "bpf": 321},
    "aarch64": {"unshare": 97, "ptrace": 117, "keyctl": 219, "process_vm_readv": 270, "bpf": 280},
}


def check_syscalls() -> dict:
    table = _NUMBERS.get(os.uname().machine)
    if table is None:
        return {"blocked": None, "detail": f"no syscall table for {os.uname().machine}"}
    results = {
        "unshare(0)": _syscall_refused(table["unshare"], 0),
        "ptrace(-1)": _syscall_refused(table["ptrace"], -1, 0, 0, 0),
        "keyctl(-1)": _syscall_refused(table["keyctl"], -1, 0, 0, 0),
        "process_vm_readv(self, 0 iov)": _syscall_refused(
            table["process_vm_readv"], os.getpid(), 0, 0, 0, 0, 0
        ),
    }
    refused = [name for name, (ok, _) in results.items() if ok]
    allowed = [f"{name}: {how}" for name, (ok, how) in results.items() if not ok]
    return {
        "blocked": not allowed,
        "detail": "refused: " + ", ".join(refused) + ("; allowed: " + ", ".join(allowed) if allowed else ""),
    }


def check_signal(pid: int) -> dict:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return {"blocked": True, "detail": _err(exc)}
    return {"blocked": False, "detail": f"can signal host pid {pid}"}


def check_host_proc(pid: int, marker: str) -> dict:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            data = handle.read()
    except OSError as exc:
        return {"blocked": True, "detail": _err(exc)}
    if marker.encode() in data:
        return {"blocked": False, "detail": f"read /proc/{pid}/environ of the host process"}
    return {"blocked": True, "detail": f"/proc/{pid} is another process in this pid namespace"}


def facts() -> dict:
    status: dict[str, str] = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            status[key] = value.strip()
    dumpable = _libc.prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE
    try:
        with open("/proc/1/cmdline", "rb") as handle:
            init = handle.read().split(b"\0")[0].decode(errors="replace")
    except OSError as exc:
        init = _err(exc)
    return {
        "applied": [m for m in os.environ.get("IRONCAGE_SANDBOX_APPLIED", "").split(",") if m],
        "uid": os.getuid(),
        "pid": os.getpid(),
        "no_new_privs": status.get("NoNewPrivs") == "1",
        "seccomp_mode": status.get("Seccomp"),
        "cap_eff": int(status.get("CapEff", "0"), 16),
        "dumpable": dumpable,
        "sid_is_self": os.getsid(0) == os.getpid() or os.getsid(0) != os.getsid(os.getppid()),
        "init": init,
    }


def run(targets: dict) -> dict:
    checks: dict[str, dict] = {
        "read_canary": check_read(targets["canary_file"], targets["canary_secret"]),
        "write_outside": check_write(targets["outside_dir"]),
        "write_site_packages": check_write(targets["system_dir"]),
        "workspace_write": check_workspace_write(targets["workspace"]),
        "tcp_host": check_connect(
            socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", targets["tcp_port"]), b"x"
        ),
        "udp_host": check_connect(
            socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", targets["udp_port"]), b"ironcage-udp"
        ),
        "syscalls": check_syscalls(),
        "signal_host": check_signal(targets["host_pid"]),
        "host_environ": check_host_proc(targets["host_pid"], targets["environ_marker"]),
    }
    if targets.get("tcp6_port"):
        checks["tcp6_host"] = check_connect(
            socket.AF_INET6, socket.SOCK_STREAM, ("::1", targets["tcp6_port"]), b"x"
        )
    return {"checks": checks, "facts": facts()}


def main() -> int:
    targets = json.loads(sys.argv[1])
    sys.stdout.write(json.dumps(run(targets)) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
