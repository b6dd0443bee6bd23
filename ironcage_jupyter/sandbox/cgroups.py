"""Per-kernel pids/memory cgroups, created by the trusted wrapper and joined by the bootstrap.

cgroup v2 when the unified hierarchy offers the controller, else the v1 controller hierarchy. Where
neither can be created (no permission, no controller) the sandbox falls back to rlimits and the
selftest says so. RLIMIT_NPROC does not bind a process whose real uid is host root, so for root the
pids cgroup is the only process cap.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CgroupSet:
    name: str
    directories: tuple[Path, ...]
    controllers: tuple[str, ...]
    note: str = ""

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.directories]


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, fstype, super options) of every cgroup mount."""
    out = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if rfields and rfields[0] in ("cgroup", "cgroup2"):
                out.append((fields[4], rfields[0], rfields[2] if len(rfields) > 2 else ""))
    return out


def _own_paths() -> dict[str, str]:
    """controller (or '' for v2) -> this process's cgroup path."""
    paths: dict[str, str] = {}
    with open("/proc/self/cgroup") as handle:
        for line in handle:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path
    return paths


def _base_dir(controller: str) -> Path | None:
    own = _own_paths()
    for mount_point, fstype, options in _mounts():
        if fstype == "cgroup2" and "" in own:
            base = Path(mount_point) / own[""].lstrip("/")
            # v2 forbids processes in inner nodes: only usable where our parent delegates the controller.
            try:
                if controller in (base.parent / "cgroup.subtree_control").read_text().split():
                    return base.parent
            except OSError:
                continue
        elif fstype == "cgroup" and controller in options.split(",") and controller in own:
            return Path(mount_point) / own[controller].lstrip("/")
    return None


def create(name: str, *, max_processes: int | None, memory_bytes: int | None) -> CgroupSet:
    """Create ``ironcage-<name>`` under our own cgroup for pids and memory; best effort per controller."""
    dirs: list[Path] = []
    controllers: list[str] = []
    notes: list[str] = []
    wanted = {"pids": ("pids.max", max_processes), "memory": (None, memory_bytes)}
    seen: set[Path] = set()
    for controller, (limit_file, value) in wanted.items():
        if value is None:
            continue
        base = _base_dir(controller)
        if base is None:
            notes.append(f"no writable {controller} cgroup hierarchy")
            continue
        _collect_stale(base)
        directory = base / f"ironcage-{name}"
        try:
            directory.mkdir(exist_ok=True)
            if controller == "memory":
                v2 = (directory / "memory.max").exists()
                limit_file = "memory.max" if v2 else "memory.limit_in_bytes"
                if not v2:
                    # Count swap too where the kernel supports it, otherwise the limit just swaps.
                    swap = directory / "memory.memsw.limit_in_bytes"
                    (directory / limit_file).write_text(str(value))
                    if swap.exists():
                        swap.write_text(str(value))
                    limit_file = None
            if limit_file:
                (directory / limit_file).write_text(str(value))
        except OSError as exc:
            notes.append(f"{controller} cgroup not usable: {exc.strerror or exc}")
            _remove(directory)
            continue
        controllers.append(controller)
        if directory not in seen:
            seen.add(directory)
            dirs.append(directory)
    return CgroupSet(name, tuple(dirs), tuple(controllers), "; ".join(notes))


def _collect_stale(base: Path, min_age_s: float = 120.0) -> None:
    """Remove empty ``ironcage-*`` cgroups left by wrappers that died without cleaning up (SIGKILL).
    Only old ones: a fresh empty cgroup may belong to a sandbox whose bootstrap has not joined yet."""
    now = time.time()
    try:
        entries = list(base.glob("ironcage-*"))
    except OSError:
        return
    for directory in entries:
        try:
            if (
                now - directory.stat().st_mtime > min_age_s
                and not (directory / "cgroup.procs").read_text().strip()
            ):
                directory.rmdir()
        except OSError:
            continue


#: The counter files of limit hits (cgroup v2 and v1 names) and the field counting the hits.
HIT_FILES = (("pids.events", "max"), ("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill"))


def hit_files(directory: Path) -> tuple[tuple[str, str], ...]:
    """The entries of `HIT_FILES` present in this cgroup (a controller's directory has only its own)."""
    return tuple((name, key) for name, key in HIT_FILES if (directory / name).is_file())


def hits(directory: Path, files: tuple[tuple[str, str], ...] = HIT_FILES) -> dict[str, int]:
    """How often this cgroup's limits were hit: {"processes": fork failures, "oom_kills": kills}.
    `files`: the counter files to read (default: all of `HIT_FILES`, skipping absent ones)."""
    out: dict[str, int] = {}
    for name, key in files:
        try:
            _add_hits(out, name, key, (directory / name).read_text())
        except OSError:
            continue
    return out


def _add_hits(out: dict[str, int], name: str, key: str, text: str) -> None:
    """Add the count under `key` in the counter file `name`'s `text` to `out` (unreadable: nothing)."""
    for line in text.splitlines():
        field, _, value = line.partition(" ")
        if field == key:
            label = "processes" if name == "pids.events" else "oom_kills"
            try:
                out[label] = out.get(label, 0) + int(value)
            except ValueError:
                return


class HitCounters:
    """One cgroup's limit counter files, held open: the per-cell check is one ``pread`` per file
    (about 1 µs) instead of an open/read/close through pathlib (about 20 µs)."""

    def __init__(self, directory: Path, files: tuple[tuple[str, str], ...] = HIT_FILES) -> None:
        self.directory = directory
        # close() may run on another thread (release_all): never pread an fd number being reused.
        self._lock = threading.Lock()
        self._files: list[tuple[int, str, str]] = []
        for name, key in files:
            try:
                fd = os.open(directory / name, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            self._files.append((fd, name, key))

    def read(self) -> dict[str, int]:
        """Same result as `hits` on this directory."""
        out: dict[str, int] = {}
        with self._lock:
            texts = []
            for fd, name, key in self._files:
                try:
                    texts.append((os.pread(fd, 4096, 0).decode("ascii", "replace"), name, key))
                except OSError:
                    continue
        for text, name, key in texts:
            _add_hits(out, name, key, text)
        return out

    def close(self) -> None:
        with self._lock:
            files, self._files = self._files, []
        for fd, _name, _key in files:
            try:
                os.close(fd)
            except OSError:
                pass


def _remove(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:
        pass


def release(cgroups: CgroupSet) -> int:
    """Kill whatever is still inside (no process left behind) and remove the cgroups.

    Returns the number of processes killed.
    """
    killed = 0
    for directory in cgroups.directories:
        for _ in range(50):  # processes can fork while we kill; the pids cap bounds the rounds
            try:
                pids = [int(p) for p in (directory / "cgroup.procs").read_text().split()]
            except OSError:
                break
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
            _wait_gone(pids)
        _remove(directory)
    return killed


def _wait_gone(pids: list[int]) -> None:
    # SIGKILL is asynchronous; a pidfd wakes us exactly when each process is gone (no polling).
    import select

    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            select.select([fd], [], [], 2.0)
        finally:
            os.close(fd)
