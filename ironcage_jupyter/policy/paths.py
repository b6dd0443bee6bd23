"""Path canonicalisation and containment, done before any rule sees a path.

`~` and `${home}` expand, relative paths are taken against the workspace, symlinks are resolved (dangling
final components follow their target; paths that do not exist yet resolve their deepest existing
ancestor), `..` is applied after symlink resolution, and containment is decided on a `/` boundary. This
reads filesystem metadata (lstat/readlink) and is therefore a preparation step before the pure decision.
It is not a race-free boundary (a symlink can be swapped after the check): the sandbox is.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass


class PathError(ValueError):
    """A path that cannot be canonicalised (NUL bytes, not a string, too long)."""


MAX_PATH = 4096


def expand(path: str, workspace: str, home: str | None = None) -> str:
    if not isinstance(path, str):
        raise PathError(f"path must be a string, not {type(path).__name__}")
    if "\x00" in path:
        raise PathError("path contains a NUL byte")
    if len(path) > MAX_PATH:
        raise PathError("path is too long")
    home = home or os.path.expanduser("~")
    path = path.replace("${workspace}", workspace).replace("${home}", home)
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    elif path.startswith("~"):
        path = os.path.expanduser(path)
    if not os.path.isabs(path):
        path = os.path.join(workspace, path)
    return path


def canonicalize(path: str, workspace: str, home: str | None = None) -> str:
    """Absolute, symlink-free, normalised form of `path`. Idempotent for an unchanged filesystem."""
    expanded = expand(path, workspace, home)
    try:
        resolved = os.path.realpath(expanded)
    except (OSError, ValueError) as exc:
        raise PathError(f"cannot resolve {path!r}: {exc}") from None
    return resolved


def is_within(path: str, root: str) -> bool:
    """`path` equals `root` or lies under it, compared on a separator boundary (no /work/rootevil)."""
    if root == "/":
        return path.startswith("/")
    root = root.rstrip("/")
    return path == root or path.startswith(root + "/")


def within_any(path: str, roots: list[str] | tuple[str, ...]) -> bool:
    return any(is_within(path, root) for root in roots)


@dataclass(frozen=True, slots=True)
class CanonicalPath:
    raw: str
    path: str
    exists: bool
    hardlinked: bool  # a regular file with more than one link: it may be the same file as one elsewhere


def inspect_path(raw: str, workspace: str, home: str | None = None) -> CanonicalPath:
    path = canonicalize(raw, workspace, home)
    try:
        st = os.lstat(path)
    except OSError:
        return CanonicalPath(raw, path, False, False)
    return CanonicalPath(raw, path, True, stat.S_ISREG(st.st_mode) and st.st_nlink > 1)
