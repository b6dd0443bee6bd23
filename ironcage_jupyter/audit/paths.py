"""Where the audit log lives, and the one-file-per-session layout."""

from __future__ import annotations

import os
import re
from pathlib import Path

ENV_AUDIT_DIR = "IRONCAGE_AUDIT_DIR"
SESSIONS_SUBDIR = "sessions"
SNAPSHOTS_SUBDIR = "snapshots"
ANCHORS_FILE = "anchors.jsonl"
DB_SUFFIX = ".duckdb"

# Session ids become file names: keep them boring.
_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def default_audit_dir() -> Path:
    """`$IRONCAGE_AUDIT_DIR`, else `<jupyter data dir>/ironcage/audit`."""
    env = os.environ.get(ENV_AUDIT_DIR)
    if env:
        return Path(env).expanduser()
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "ironcage" / "audit"


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) with mode 0700 and force 0700 on it even if it existed."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def check_session_id(session_id: str) -> str:
    if not _SESSION_ID.match(session_id) or session_id.endswith(DB_SUFFIX):
        raise ValueError(f"invalid audit session id {session_id!r} (letters, digits, '_', '.', '-')")
    return session_id


def session_path(audit_dir: Path, session_id: str) -> Path:
    return Path(audit_dir) / SESSIONS_SUBDIR / f"{check_session_id(session_id)}{DB_SUFFIX}"


def session_files(audit_dir: Path) -> list[Path]:
    """Every session database file, oldest first (mtime order is only cosmetic)."""
    directory = Path(audit_dir) / SESSIONS_SUBDIR
    if not directory.is_dir():
        return []
    return sorted(directory.glob(f"*{DB_SUFFIX}"), key=lambda p: p.name)


def session_id_of(path: Path) -> str:
    return path.name[: -len(DB_SUFFIX)]
