"""A small ctypes layer over libseccomp (``libseccomp.so.2``) and the sandbox's syscall deny list.

libseccomp compiles the rules to BPF for the running architecture; we only describe them. Default
action is ALLOW with a deny list (a notebook needs a very wide syscall surface: numpy, threads, ZMQ),
refused calls fail with EPERM so user code sees "Operation not permitted" rather than dying. Syscalls
from a foreign architecture (32-bit ``int 0x80`` on x86_64) hit libseccomp's bad-arch action: killed.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence
from typing import NamedTuple

SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_ACT_ERRNO = 0x00050000
_SCMP_CMP_NE = 1
_SCMP_CMP_EQ = 4
_SCMP_CMP_GE = 5
_SCMP_CMP_MASKED_EQ = 7


def act_errno(code: int) -> int:
    return _SCMP_ACT_ERRNO | (code & 0xFFFF)


class SeccompError(OSError):
    """libseccomp is missing or refused the filter."""


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class Rule(NamedTuple):
    """Refuse ``syscall`` (with ``errno_code``) when every ``(arg, op, a, b)`` comparison holds.

    (A NamedTuple, not a dataclass: importing dataclasses costs milliseconds on every kernel start.)
    """

    syscall: str
    comparisons: tuple[tuple[int, int, int, int], ...] = ()
    errno_code: int = errno.EPERM


# Calls a notebook never needs and that open a way out of (or around) the sandbox.
DENIED_SYSCALLS: tuple[str, ...] = (
    # debugging / memory of other processes
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "process_madvise",
    # mounts and filesystem namespaces
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "mount_setattr",
    # namespaces after setup
    "unshare",
    "setns",
    # kernel attack surface
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "keyctl",
    "add_key",
    "request_key",
    "lookup_dcookie",
    "fanotify_init",
    # modules, kexec, machine control
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "syslog",
    "vhangup",
    "iopl",
    "ioperm",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "nfsservctl",
    "uselib",
    "_sysctl",
    # file handles bypass path-based checks
    "open_by_handle_at",
    "name_to_handle_at",
)

_CLONE_NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
    0x00000080,  # CLONE_NEWTIME
)
_TIOCSTI = 0x5412
_AF_MAX = 46  # one past the highest address family Linux defines (AF_MCTP = 45)
_NETLINK_ROUTE = 0
_AF_UNIX = 1
_AF_INET = 2
_AF_NETLINK = 16
_PERSONALITY_QUERY = 0xFFFFFFFF


def sandbox_rules(*, deny_network_sockets: bool = True, allow_tcp: bool = False) -> list[Rule]:
    """The deny list. ``allow_tcp`` keeps ``socket(AF_INET, SOCK_STREAM)`` (only for a private
    network namespace whose loopback hosts the tool egress bridge; Landlock narrows it to ports)."""
    rules = [Rule(name) for name in DENIED_SYSCALLS]
    # clone(2) with any namespace flag; clone3 passes flags in memory BPF cannot read, so it reports
    # ENOSYS and glibc falls back to clone(2), which is checked.
    rules += [Rule("clone", ((0, _SCMP_CMP_MASKED_EQ, flag, flag),)) for flag in _CLONE_NAMESPACE_FLAGS]
    rules.append(Rule("clone3", errno_code=errno.ENOSYS))
    # Changing the execution domain (e.g. ADDR_NO_RANDOMIZE); querying it stays allowed.
    rules.append(Rule("personality", ((0, _SCMP_CMP_NE, _PERSONALITY_QUERY, 0),)))
    # Pushing characters into the controlling terminal's input.
    rules.append(Rule("ioctl", ((1, _SCMP_CMP_EQ, _TIOCSTI, 0),)))
    if deny_network_sockets:
        # Only AF_UNIX (the kernel's ZMQ ipc sockets, asyncio's socketpair) and NETLINK_ROUTE, which
        # glibc's getifaddrs() needs: libzmq aborts the kernel if getifaddrs fails with EPERM. A route
        # socket without CAP_NET_ADMIN can only list interfaces. Landlock (ABI <= 7) does not cover
        # UDP, raw or packet sockets; this does, for every other family.
        for call in ("socket", "socketpair"):
            for family in range(_AF_MAX):
                if family in (_AF_UNIX, _AF_NETLINK) or (
                    allow_tcp and call == "socket" and family == _AF_INET
                ):
                    continue
                rules.append(Rule(call, ((0, _SCMP_CMP_EQ, family, 0),)))
            rules.append(Rule(call, ((0, _SCMP_CMP_GE, _AF_MAX, 0),)))
        rules.append(
            Rule("socket", ((0, _SCMP_CMP_EQ, _AF_NETLINK, 0), (2, _SCMP_CMP_NE, _NETLINK_ROUTE, 0)))
        )
        rules.append(Rule("socketpair", ((0, _SCMP_CMP_EQ, _AF_NETLINK, 0),)))
        if allow_tcp:
            # AF_INET, but no datagram, raw or packet types (the low 4 bits of the type argument).
            for kind in (2, 3, 4, 5, 6, 10):
                rules.append(
                    Rule("socket", ((0, _SCMP_CMP_EQ, _AF_INET, 0), (1, _SCMP_CMP_MASKED_EQ, 0xF, kind)))
                )
    return rules


def _load_libseccomp() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        # find_library spawns ldconfig (~90 ms): only when the soname is not found directly.
        from ctypes.util import find_library

        name = find_library("seccomp")
        try:
            lib = ctypes.CDLL(name or "libseccomp.so.2", use_errno=True)
        except OSError as exc:
            raise SeccompError(0, f"libseccomp is not available ({exc})") from exc
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    return lib


def _build(lib: ctypes.CDLL, rules: Sequence[Rule]) -> tuple[int, list[str]]:
    """A libseccomp context holding ``rules`` (caller releases it) and the syscalls unknown here."""
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise SeccompError(0, "seccomp_init failed")
    unknown: list[str] = []
    try:
        for rule in rules:
            number = lib.seccomp_syscall_resolve_name(rule.syscall.encode())
            if number < 0:
                unknown.append(rule.syscall)
                continue
            cmps = (_ArgCmp * max(1, len(rule.comparisons)))(*[_ArgCmp(*c) for c in rule.comparisons])
            rc = lib.seccomp_rule_add_array(
                ctx, act_errno(rule.errno_code), number, len(rule.comparisons), cmps
            )
            if rc < 0:
                raise SeccompError(
                    -rc, f"seccomp rule for {rule.syscall} refused: {errno.errorcode.get(-rc, rc)}"
                )
    except BaseException:
        lib.seccomp_release(ctx)
        raise
    return ctx, unknown


def install_filter(rules: Sequence[Rule]) -> dict[str, object]:
    """Load the filter into this process; it is inherited by every child and survives execve.

    libseccomp sets no_new_privs itself when loading. Syscalls unknown to this architecture are
    skipped (reported). Raises SeccompError if the filter cannot be built or loaded.
    """
    lib = _load_libseccomp()
    ctx, unknown = _build(lib, rules)
    try:
        rc = lib.seccomp_load(ctx)
        if rc < 0:
            raise SeccompError(-rc, f"seccomp_load failed: {errno.errorcode.get(-rc, rc)}")
    finally:
        lib.seccomp_release(ctx)
    return {"rules": len(rules) - len(unknown), "unknown": unknown}


def export_filter(rules: Sequence[Rule]) -> bytes:
    """The BPF program libseccomp compiles for ``rules`` on this machine's architecture (the same
    program ``install_filter`` would load: libseccomp's own architecture check included), as raw
    ``struct sock_filter`` records. The trusted wrapper compiles it once per rule set; the in-sandbox
    bootstrap only loads it (``bootstrap._load_bpf``), which saves loading libseccomp and compiling
    ~150 rules on every child start."""
    lib = _load_libseccomp()
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    ctx, _unknown = _build(lib, rules)
    fd = os.memfd_create("ironcage-seccomp")
    try:
        rc = lib.seccomp_export_bpf(ctx, fd)
        if rc < 0:
            raise SeccompError(-rc, f"seccomp_export_bpf failed: {errno.errorcode.get(-rc, rc)}")
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
        lib.seccomp_release(ctx)
    program = b"".join(chunks)
    if not program or len(program) % 8:
        raise SeccompError(0, f"seccomp_export_bpf produced {len(program)} bytes, not whole instructions")
    return program
