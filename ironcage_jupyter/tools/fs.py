"""fs.read / fs.write / fs.list confined to allowed roots by the kernel, not by string checks.

Every open goes through `openat2(root_fd, relative, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
RESOLVE_NO_MAGICLINKS)`: the kernel resolves the path beneath the root in one step and refuses `..`
escapes, any symlink and `/proc/.../root`-style magic links, so a symlink swapped in between a check and
the open cannot redirect it (there is no separate check). Hard-linked files (st_nlink > 1) are refused:
a hard link inside a root may name a file outside it, and no path check can tell.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import os
import re
import stat
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import ToolExecutionError, ToolRefusal
from .models import ArgumentSpec, ToolSchema

SYS_OPENAT2 = 437  # x86_64 and aarch64 (unified syscall table since 5.6)
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
CONFINED = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = CONFINED) -> int:
    """Raw openat2(2); raises OSError with the kernel's errno."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    encoded = os.fsencode(path)
    fd = _syscall(
        ctypes.c_long(SYS_OPENAT2),
        ctypes.c_int(dirfd),
        ctypes.c_char_p(encoded),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


_ENCODED = re.compile(r"%([0-9a-fA-F]{2})")
_DANGEROUS_DECODED = {"/", ".", "\\", "\x00", "%"}


def decode_path_argument(value: str) -> str:
    """Turn a path argument into a plain path; refuse encodings that could hide traversal.

    `file://` URLs are percent-decoded (once) like a URL client would. In a plain path, a percent
    escape standing for `/`, `.`, `\\`, NUL or `%` (double encoding) is refused: some layer downstream
    might decode it and read a different path than the one checked.
    """
    if "\x00" in value:
        raise ToolRefusal("fs.encoded_path", "path contains a NUL byte")
    if value[:5].lower() == "file:":
        parts = urllib.parse.urlsplit(value)
        if parts.netloc not in ("", "localhost"):
            raise ToolRefusal("fs.encoded_path", f"file URL names a remote host: {parts.netloc!r}")
        if parts.query or parts.fragment:
            raise ToolRefusal("fs.encoded_path", "file URL carries a query or fragment")
        decoded = urllib.parse.unquote(parts.path)
        if "\x00" in decoded or _ENCODED.search(decoded):
            raise ToolRefusal("fs.encoded_path", "file URL is encoded more than once")
        return decoded
    for match in _ENCODED.finditer(value):
        if chr(int(match.group(1), 16)) in _DANGEROUS_DECODED:
            raise ToolRefusal(
                "fs.encoded_path", f"percent-encoded {match.group(0)!r} in a path is refused (possible traversal)"
            )
    return value


def lexical_parts(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ToolRefusal("fs.traversal", "'..' components are refused in tool paths")
    return parts


def is_beneath(path: str, root: str) -> bool:
    """True if `path` is `root` or inside it, compared on a `/` boundary (so /ws_evil is not in /ws)."""
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root + "/") or root == "/"


@dataclass(frozen=True)
class FsRoot:
    path: str
    writable: bool


@dataclass(frozen=True)
class ResolvedPath:
    root: FsRoot
    relative: str  # "." for the root itself
    absolute: str


class ConfinedFs:
    """The roots fs.* may touch, and the protected paths refused even inside them."""

    def __init__(
        self, roots: Iterable[FsRoot], protected: Iterable[str] = (), max_read_bytes: int = 1_000_000
    ) -> None:
        # Roots come from trusted configuration; resolve their own symlinks once, here.
        self.roots = [FsRoot(os.path.realpath(r.path), r.writable) for r in roots]
        self.protected = [os.path.realpath(p) for p in protected]
        self.max_read_bytes = max_read_bytes

    @classmethod
    def from_settings(
        cls, workspace: str | None, fs_roots: Iterable[str], read_only_roots: Iterable[str], protected: Iterable[str],
        max_read_bytes: int = 1_000_000,
    ) -> ConfinedFs:
        roots = [FsRoot(workspace, True)] if workspace else []
        roots += [FsRoot(r, True) for r in fs_roots]
        roots += [FsRoot(r, False) for r in read_only_roots]
        return cls(roots, protected, max_read_bytes)

    def resolve(self, value: str, *, write: bool = False) -> ResolvedPath:
        if not self.roots:
            raise ToolRefusal("fs.no_roots", "no filesystem roots are configured for fs.* tools")
        plain = decode_path_argument(value)
        if plain.startswith("~"):
            raise ToolRefusal("fs.outside_roots", "'~' paths are not expanded; give a path inside an allowed root")
        parts = lexical_parts(plain)
        if plain.startswith("/"):
            absolute = "/" + "/".join(parts)
        else:  # relative paths are relative to the first root (the workspace)
            absolute = "/".join([self.roots[0].path.rstrip("/"), *parts]) or "/"
        # The most specific root decides: a read-only root nested in a writable one stays read-only.
        candidates = sorted(
            (r for r in self.roots if is_beneath(absolute, r.path)), key=lambda r: len(r.path), reverse=True
        )
        if not candidates:
            raise ToolRefusal("fs.outside_roots", f"{absolute} is outside the allowed roots")
        root = candidates[0]
        relative = absolute[len(root.path):].lstrip("/") or "."
        if write and not root.writable:
            raise ToolRefusal("fs.read_only_root", f"{root.path} is a read-only root")
        for protected in self.protected:
            if is_beneath(absolute, protected):
                raise ToolRefusal("invariant.protected_path", f"{absolute} is a protected Iron Cage path")
        return ResolvedPath(root, relative, absolute)

    def _open(self, resolved: ResolvedPath, flags: int, mode: int = 0) -> int:
        root_fd = os.open(resolved.root.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return openat2(root_fd, resolved.relative, flags, mode)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                raise ToolRefusal("fs.escape", f"{resolved.absolute} resolves outside its root") from None
            if exc.errno == errno.ELOOP:
                raise ToolRefusal("fs.symlink", f"{resolved.absolute} goes through a symlink (refused)") from None
            if exc.errno == errno.ENOSYS:
                raise ToolRefusal("fs.unsupported", "openat2 is unavailable on this kernel: fs.* refused") from None
            raise ToolExecutionError(f"{resolved.absolute}: {exc.strerror}") from None
        finally:
            os.close(root_fd)

    @staticmethod
    def _check_regular_single_link(fd: int, absolute: str) -> os.stat_result:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ToolExecutionError(f"{absolute} is not a regular file")
        if info.st_nlink > 1:
            raise ToolRefusal("fs.hard_link", f"{absolute} has {info.st_nlink} hard links (refused: may alias a file outside)")
        return info

    def read(self, path: str, max_bytes: int | None = None, encoding: str = "utf-8") -> dict[str, Any]:
        resolved = self.resolve(path)
        limit = min(max_bytes or self.max_read_bytes, self.max_read_bytes)
        fd = self._open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            info = self._check_regular_single_link(fd, resolved.absolute)
            chunks: list[bytes] = []
            remaining = limit
            while remaining > 0:
                chunk = os.read(fd, min(remaining, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if encoding == "base64":
            content = base64.b64encode(data).decode("ascii")
        else:
            try:
                content = data.decode("utf-8")
            except UnicodeDecodeError:
                raise ToolExecutionError(f"{resolved.absolute} is not UTF-8 text; use encoding='base64'") from None
        return {
            "path": resolved.absolute,
            "size": info.st_size,
            "encoding": encoding,
            "content": content,
            "truncated": info.st_size > len(data),
        }

    def write(self, path: str, content: str, encoding: str = "utf-8", append: bool = False) -> dict[str, Any]:
        resolved = self.resolve(path, write=True)
        if resolved.relative == ".":
            raise ToolExecutionError("cannot write to a root directory")
        data = base64.b64decode(content, validate=True) if encoding == "base64" else content.encode("utf-8")
        # No O_TRUNC here: the link count is checked before anything is changed.
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | (os.O_APPEND if append else 0)
        fd = self._open(resolved, flags, 0o644)
        try:
            self._check_regular_single_link(fd, resolved.absolute)
            if not append:
                os.ftruncate(fd, 0)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        finally:
            os.close(fd)
        return {"path": resolved.absolute, "bytes_written": len(data), "append": append}

    def list(self, path: str = ".", max_entries: int = 10_000) -> dict[str, Any]:
        resolved = self.resolve(path)
        fd = self._open(resolved, os.O_RDONLY | os.O_DIRECTORY)
        entries: list[dict[str, Any]] = []
        truncated = False
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    if len(entries) >= max_entries:
                        truncated = True
                        break
                    if entry.is_symlink():
                        kind = "symlink"
                    elif entry.is_dir(follow_symlinks=False):
                        kind = "directory"
                    elif entry.is_file(follow_symlinks=False):
                        kind = "file"
                    else:
                        kind = "other"
                    try:
                        size = entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        size = None
                    entries.append({"name": entry.name, "type": kind, "size": size})
        finally:
            os.close(fd)
        entries.sort(key=lambda e: e["name"])
        return {"path": resolved.absolute, "entries": entries, "truncated": truncated}


FS_SCHEMAS = {
    "fs.read": ToolSchema(
        name="fs.read",
        description="Read a file inside the allowed roots (no symlinks, no hard links).",
        arguments={
            "path": ArgumentSpec(name="path", role="read-path", required=True),
            "max_bytes": ArgumentSpec(name="max_bytes", types=("integer",)),
            "encoding": ArgumentSpec(name="encoding", enum=("utf-8", "base64")),
        },
    ),
    "fs.write": ToolSchema(
        name="fs.write",
        description="Create or overwrite (or append to) a file inside the writable roots.",
        arguments={
            "path": ArgumentSpec(name="path", role="write-path", required=True),
            "content": ArgumentSpec(name="content", required=True),
            "encoding": ArgumentSpec(name="encoding", enum=("utf-8", "base64")),
            "append": ArgumentSpec(name="append", types=("boolean",)),
        },
    ),
    "fs.list": ToolSchema(
        name="fs.list",
        description="List a directory inside the allowed roots.",
        arguments={"path": ArgumentSpec(name="path", role="read-path")},
    ),
}


def canonical_host_path(value: str, base: str | None = None) -> str:
    """Canonical form of a path argument handed to an MCP server (checked, not opened, here).

    Decoded like fs.* paths, made absolute, then resolved through existing symlinks (for a path that
    does not exist yet, its deepest existing ancestor is resolved). This is a trusted-side check only;
    the server's own sandbox, which binds nothing but its allowed paths, is the boundary.
    """
    plain = decode_path_argument(value)
    lexical_parts(plain)
    if plain.startswith("~"):
        raise ToolRefusal("fs.outside_roots", "'~' paths are not expanded")
    absolute = plain if plain.startswith("/") else os.path.join(base or "/", plain)
    absolute = os.path.normpath(absolute)
    head, tail = absolute, ""
    while head != "/" and not os.path.lexists(head):
        head, name = os.path.split(head)
        tail = name if not tail else f"{name}/{tail}"
    real = os.path.realpath(head)
    return os.path.normpath(os.path.join(real, tail)) if tail else real
