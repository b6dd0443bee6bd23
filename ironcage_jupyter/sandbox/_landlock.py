"""A small ctypes layer over the Linux Landlock syscalls (no CPython binding exists).

Only what the sandbox bootstrap needs: read-only trees, read-write trees, TCP bind/connect denied
(ABI >= 4) and signal / abstract-unix-socket scoping (ABI >= 6). Kept free of heavy imports because
it runs in every sandboxed child before the kernel starts.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterable

# Syscall numbers are the same on every architecture (generic syscall table).
_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446

_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_RULE_NET_PORT = 2

ACCESS_FS_EXECUTE = 1 << 0
ACCESS_FS_WRITE_FILE = 1 << 1
ACCESS_FS_READ_FILE = 1 << 2
ACCESS_FS_READ_DIR = 1 << 3
ACCESS_FS_REMOVE_DIR = 1 << 4
ACCESS_FS_REMOVE_FILE = 1 << 5
ACCESS_FS_MAKE_CHAR = 1 << 6
ACCESS_FS_MAKE_DIR = 1 << 7
ACCESS_FS_MAKE_REG = 1 << 8
ACCESS_FS_MAKE_SOCK = 1 << 9
ACCESS_FS_MAKE_FIFO = 1 << 10
ACCESS_FS_MAKE_BLOCK = 1 << 11
ACCESS_FS_MAKE_SYM = 1 << 12
ACCESS_FS_REFER = 1 << 13  # ABI 2
ACCESS_FS_TRUNCATE = 1 << 14  # ABI 3
ACCESS_FS_IOCTL_DEV = 1 << 15  # ABI 5

ACCESS_NET_BIND_TCP = 1 << 0  # ABI 4
ACCESS_NET_CONNECT_TCP = 1 << 1

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

# Rights that make sense on a regular file (adding directory rights to a file rule is EINVAL).
_FILE_RIGHTS = (
    ACCESS_FS_EXECUTE | ACCESS_FS_WRITE_FILE | ACCESS_FS_READ_FILE | ACCESS_FS_TRUNCATE | ACCESS_FS_IOCTL_DEV
)


class LandlockError(OSError):
    """Landlock is unavailable or refused a rule."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(number: int, *args: object) -> int:
    result = _libc.syscall(ctypes.c_long(number), *args)
    if result < 0:
        err = ctypes.get_errno()
        raise LandlockError(err, os.strerror(err))
    return int(result)


def abi_version() -> int:
    """The Landlock ABI the running kernel offers; 0 when Landlock is absent or disabled."""
    try:
        return _syscall(
            _SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION)
        )
    except LandlockError:
        return 0


def fs_rights_for_abi(abi: int) -> int:
    rights = (1 << 13) - 1  # EXECUTE .. MAKE_SYM (ABI 1)
    if abi >= 2:
        rights |= ACCESS_FS_REFER
    if abi >= 3:
        rights |= ACCESS_FS_TRUNCATE
    if abi >= 5:
        rights |= ACCESS_FS_IOCTL_DEV
    return rights


READ_RIGHTS = ACCESS_FS_EXECUTE | ACCESS_FS_READ_FILE | ACCESS_FS_READ_DIR


def restrict_self(
    read_only: Iterable[str],
    read_write: Iterable[str],
    *,
    deny_tcp: bool = True,
    scope_signals: bool = True,
    tcp_ports: Iterable[int] = (),
) -> dict[str, object]:
    """Confine this process (and every future child) to the given trees.

    Reads/executes are allowed under ``read_only`` and ``read_write``; every kind of write only under
    ``read_write``. With ``deny_tcp`` (ABI >= 4) every TCP bind and connect is refused. With
    ``scope_signals`` (ABI >= 6) signals to processes outside this Landlock domain are refused and
    abstract unix sockets outside it cannot be reached. Paths that do not exist are skipped. The caller
    must have set no_new_privs. ``tcp_ports`` stay allowed for bind and connect (only meaningful in a
    private network namespace: Landlock cannot restrict the address). Returns what was enforced.
    """
    abi = abi_version()
    if abi <= 0:
        raise LandlockError(0, "Landlock is not supported or disabled by this kernel")
    handled_fs = fs_rights_for_abi(abi)
    attr = _RulesetAttr(handled_access_fs=handled_fs)
    size = 8
    net_enforced = scope_enforced = False
    if deny_tcp and abi >= 4:
        attr.handled_access_net = ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP
        size = 16
        net_enforced = True
    if scope_signals and abi >= 6:
        attr.scoped = SCOPE_SIGNAL | SCOPE_ABSTRACT_UNIX_SOCKET
        size = 24
        scope_enforced = True
    ruleset_fd = _syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    added = 0
    try:
        for paths, rights in ((read_only, READ_RIGHTS), (read_write, handled_fs)):
            for path in paths:
                added += _add_path_rule(ruleset_fd, path, rights)
        if net_enforced:
            for port in tcp_ports:
                rule = _NetPortAttr(
                    allowed_access=ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP, port=int(port)
                )
                _syscall(
                    _SYS_ADD_RULE,
                    ctypes.c_int(ruleset_fd),
                    ctypes.c_int(_RULE_NET_PORT),
                    ctypes.byref(rule),
                    ctypes.c_uint32(0),
                )
                added += 1
        _syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset_fd), ctypes.c_uint32(0))
    finally:
        os.close(ruleset_fd)
    return {"abi": abi, "rules": added, "net": net_enforced, "scoped": scope_enforced}


def _add_path_rule(ruleset_fd: int, path: str, rights: int) -> int:
    # Never follow a symlink: one planted in the workspace would otherwise turn a rule for the
    # workspace's contents into a rule for whatever it points at.
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISLNK(mode):
            return 0
        if not stat.S_ISDIR(mode):
            rights &= _FILE_RIGHTS
        rule = _PathBeneathAttr(allowed_access=rights, parent_fd=fd)
        try:
            _syscall(
                _SYS_ADD_RULE,
                ctypes.c_int(ruleset_fd),
                ctypes.c_int(_RULE_PATH_BENEATH),
                ctypes.byref(rule),
                ctypes.c_uint32(0),
            )
        except LandlockError as exc:
            # Kernel-internal filesystems (a pipe behind /dev/stdout) take no rules; skipping an
            # allow rule only ever restricts more.
            if exc.errno != errno.EBADFD:
                raise
            return 0
    finally:
        os.close(fd)
    return 1
