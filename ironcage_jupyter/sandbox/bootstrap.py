"""In-sandbox bootstrap: apply limits, drop privileges, Landlock and seccomp, then start the kernel.

    python -m ironcage_jupyter.sandbox.bootstrap --config <json> -- <kernel argv>

Runs as the first process inside bubblewrap (or directly under the wrapper where user namespaces are
refused). Imports stay minimal: this is on the start-up path of every child kernel. Any failure to
apply a mechanism the config marks as required exits with status 121 and a message on stderr (fail
closed): the kernel never starts half-protected.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import runpy
import sys

EXIT_SETUP_FAILED = 121
APPLIED_ENV = "IRONCAGE_SANDBOX_APPLIED"

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
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


def apply(config: dict) -> list[str]:
    """Apply every mechanism in ``config``; return the names applied. Raises SetupError on a
    required one."""
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

    if config.get("cgroup_procs"):
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
    if config.get("seccomp"):
        from ironcage_jupyter.sandbox import _seccomp

        rules = _seccomp.sandbox_rules(allow_tcp=bool(config.get("tcp_ports")))
        attempt("seccomp", _seccomp.install_filter, rules)
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
    try:
        if len(args) < 4 or args[0] != "--config" or args[2] != "--":
            raise SetupError("usage: python -m ironcage_jupyter.sandbox.bootstrap --config <json> -- <argv>")
        config = json.loads(args[1])
        kernel_argv = args[3:]
        applied = apply(config)
    except (SetupError, ValueError) as exc:
        sys.stderr.write(f"ironcage sandbox: refusing to start the kernel: {exc}\n")
        return EXIT_SETUP_FAILED
    os.environ[APPLIED_ENV] = ",".join([*config.get("outer", []), *applied])
    _start(kernel_argv, config)
    return 0  # pragma: no cover - _start never returns


if __name__ == "__main__":
    sys.exit(main())
