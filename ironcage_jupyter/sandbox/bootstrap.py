"""In-sandbox bootstrap: apply limits, drop privileges, Landlock and seccomp, then start the kernel.

    python -m ironcage_jupyter.sandbox.bootstrap [--cgroup <cgroup.procs> ...] --config <json> -- <kernel argv>

Runs as the first process inside bubblewrap (or directly under the wrapper where user namespaces are
refused). Imports stay minimal: this is on the start-up path of every child kernel. Any failure to
apply a mechanism the config marks as required exits with status 121 and a message on stderr (fail
closed): the kernel never starts half-protected.

Joining the cgroups (writing our pid to each ``cgroup.procs``) makes the kernel wait for an RCU grace
period (``cgroup_threadgroup_rwsem``; 8-12 ms measured here, for the pids controller). That wait
needs no CPU, so it runs on a thread started before anything else and overlaps this module's imports
and the other mechanisms; the thread is joined, and its outcome checked, before the kernel (the first
code that is not ours) starts.
"""

from __future__ import annotations

import _thread
import os
import sys


class _CgroupJoin:
    """Writes our pid into each cgroup.procs file on a thread; ``wait()`` returns the error, if any."""

    def __init__(self, procs_files: list[str]) -> None:
        self.files = procs_files
        self.error: BaseException | None = None
        self._done = _thread.allocate_lock()
        self._done.acquire()
        _thread.start_new_thread(self._run, ())

    def _run(self) -> None:
        try:
            pid = str(os.getpid())
            for path in self.files:
                with open(path, "w") as handle:
                    handle.write(pid)
        except BaseException as exc:  # reported by wait(); a thread must not die silently
            self.error = exc
        finally:
            self._done.release()

    def wait(self) -> BaseException | None:
        self._done.acquire()
        self._done.release()
        return self.error


def _early_cgroup_join(argv: list[str]) -> _CgroupJoin | None:
    files = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--cgroup"]
    return _CgroupJoin(files) if files else None


# Started before the imports below (see the module docstring).
_CGROUP_JOIN = _early_cgroup_join(sys.argv) if __name__ == "__main__" else None

import binascii  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import runpy  # noqa: E402

EXIT_SETUP_FAILED = 121
APPLIED_ENV = "IRONCAGE_SANDBOX_APPLIED"

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_SIGKILL = 9

_libc = ctypes.CDLL(None, use_errno=True)


class SetupError(RuntimeError):
    pass


def _prctl(option: int, arg2: int = 0) -> None:
    if _libc.prctl(option, ctypes.c_ulong(arg2), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise SetupError(f"prctl({option}) failed: {os.strerror(err)}")


def _join_cgroups(procs_files: list[str]) -> None:
    for path in procs_files:
        with open(path, "w") as handle:
            handle.write(str(os.getpid()))


def _wait_cgroups(join: _CgroupJoin) -> None:
    error = join.wait()
    if error is not None:
        raise error


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _load_bpf(program: bytes) -> None:
    """Load a seccomp BPF program compiled by the wrapper (``_seccomp.export_filter``)."""
    if not program or len(program) % 8 or len(program) // 8 > 4096:
        raise SetupError(f"malformed seccomp program ({len(program)} bytes)")
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)  # as libseccomp's own loader does
    zero = ctypes.c_ulong(0)
    if _libc.prctl(_PR_SET_SECCOMP, ctypes.c_ulong(_SECCOMP_MODE_FILTER), ctypes.byref(fprog), zero, zero) != 0:
        raise SetupError(f"loading the seccomp filter failed: {os.strerror(ctypes.get_errno())}")


def _apply_rlimits(limits: dict[str, int]) -> None:
    names = {
        "as": resource.RLIMIT_AS,
        "nproc": resource.RLIMIT_NPROC,
        "cpu": resource.RLIMIT_CPU,
        "core": resource.RLIMIT_CORE,
        "fsize": resource.RLIMIT_FSIZE,
        "nofile": resource.RLIMIT_NOFILE,
    }
    for key, value in limits.items():
        which = names[key]
        _soft, hard = resource.getrlimit(which)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _drop_capabilities() -> None:
    """Leave no capability in any set (matters in the degraded path when the wrapper runs as root)."""
    status = _read_status()
    if int(status.get("CapBnd", "0"), 16):
        with open("/proc/sys/kernel/cap_last_cap") as handle:
            last = int(handle.read())
        if int(status.get("CapEff", "0"), 16):
            for cap in range(last + 1):
                _prctl(_PR_CAPBSET_DROP, cap)
    _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _CapHeader(version=0x20080522, pid=0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise SetupError(f"capset failed: {os.strerror(ctypes.get_errno())}")
    if int(_read_status().get("CapEff", "1"), 16):
        raise SetupError("capabilities are still effective after dropping them")


def _read_status() -> dict[str, str]:
    out: dict[str, str] = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def apply(config: dict, cgroup_join: _CgroupJoin | None = None) -> list[str]:
    """Apply every mechanism in ``config``; return the names applied. Raises SetupError on a
    required one. ``cgroup_join``: the cgroups being joined on a thread (waited for last)."""
    required = set(config.get("require", ()))
    applied: list[str] = []
    failures: list[str] = []

    def attempt(name: str, func, *args) -> None:  # type: ignore[no-untyped-def]
        try:
            func(*args)
        except Exception as exc:  # any failure is reported; required ones stop the start-up
            failures.append(f"{name}: {exc}")
            if name in required:
                raise SetupError(f"required sandbox mechanism '{name}' could not be applied: {exc}") from exc
        else:
            applied.append(name)

    if config.get("cgroup_procs") and cgroup_join is None:
        attempt("cgroups", _join_cgroups, config["cgroup_procs"])
    if config.get("rlimits"):
        attempt("rlimits", _apply_rlimits, config["rlimits"])
    if config.get("own_session"):
        # Without bubblewrap nobody else gives us a new session or death with the parent.
        attempt("session", os.setsid)
        attempt("die_with_parent", _prctl, _PR_SET_PDEATHSIG, _SIGKILL)
    attempt("drop_caps", _drop_capabilities)
    attempt("no_new_privs", _prctl, _PR_SET_NO_NEW_PRIVS, 1)
    attempt("not_dumpable", _prctl, _PR_SET_DUMPABLE, 0)
    landlock = config.get("landlock")
    if landlock:
        from ironcage_jupyter.sandbox import _landlock

        tcp_ports = config.get("tcp_ports", [])
        attempt(
            "landlock",
            lambda: _landlock.restrict_self(
                landlock["read_only"], landlock["read_write"], tcp_ports=tcp_ports
            ),
        )
    if config.get("seccomp") and config.get("seccomp_bpf"):
        attempt("seccomp", lambda: _load_bpf(binascii.a2b_base64(config["seccomp_bpf"])))
    elif config.get("seccomp"):
        from ironcage_jupyter.sandbox import _seccomp

        rules = _seccomp.sandbox_rules(allow_tcp=bool(config.get("tcp_ports")))
        attempt("seccomp", _seccomp.install_filter, rules)
    if cgroup_join is not None:
        attempt("cgroups", _wait_cgroups, cgroup_join)
    if (config.get("cgroup_procs") or cgroup_join is not None) and "cgroups" not in applied:
        # Not in the cgroups: no memory cgroup holds the child, so RLIMIT_AS falls back to the memory limit.
        if config.get("rlimits_without_cgroups"):
            attempt("rlimits", _apply_rlimits, config["rlimits_without_cgroups"])
    if failures:
        sys.stderr.write("ironcage sandbox: not applied: " + "; ".join(failures) + "\n")
    return applied


def _start(argv: list[str], config: dict) -> None:
    env_drop = config.get("env_drop", [])
    for key in env_drop:
        os.environ.pop(key, None)
    os.environ.update(config.get("env_restore", {}))
    # `python -m module ...` with our own interpreter runs in this process: it saves an interpreter
    # start-up and keeps PR_SET_DUMPABLE=0, which execve would reset.
    if len(argv) >= 3 and argv[1] == "-m" and os.path.realpath(argv[0]) == os.path.realpath(sys.executable):
        module = argv[2]
        sys.argv = [argv[0], *argv[3:]]
        if config.get("pythonpath_entry") in sys.path:
            sys.path.remove(config["pythonpath_entry"])
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        sys.exit(0)
    os.execvp(argv[0], argv)  # noqa: S606 - replacing this process with the kernel is the point


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    cgroup_join = _CGROUP_JOIN if argv is None else _early_cgroup_join(["", *args])
    while len(args) >= 2 and args[0] == "--cgroup":
        args = args[2:]
    try:
        if len(args) < 4 or args[0] != "--config" or args[2] != "--":
            raise SetupError(
                "usage: python -m ironcage_jupyter.sandbox.bootstrap [--cgroup <file> ...] --config <json> -- <argv>"
            )
        config = json.loads(args[1])
        kernel_argv = args[3:]
        applied = apply(config, cgroup_join)
    except (SetupError, ValueError) as exc:
        sys.stderr.write(f"ironcage sandbox: refusing to start the kernel: {exc}\n")
        return EXIT_SETUP_FAILED
    os.environ[APPLIED_ENV] = ",".join([*config.get("outer", []), *applied])
    _start(kernel_argv, config)
    return 0  # pragma: no cover - _start never returns


if __name__ == "__main__":
    sys.exit(main())
