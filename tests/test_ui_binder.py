"""binder/ files: well-formed, and they build and install what the repository needs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BINDER = REPO / "binder"


def test_environment_is_valid_conda_yaml() -> None:
    env = yaml.safe_load((BINDER / "environment.yml").read_text())
    deps = env["dependencies"]
    names = [d.split("=")[0].split(">")[0].split("<")[0] for d in deps if isinstance(d, str)]
    assert "python" in names and "nodejs" in names and "pip" in names
    pip_deps = next(d["pip"] for d in deps if isinstance(d, dict))
    assert any(p.startswith("jupyter-builder") for p in pip_deps)


def test_post_build_builds_extension_installs_and_registers_kernel() -> None:
    post_build = BINDER / "postBuild"
    assert os.access(post_build, os.X_OK)
    subprocess.run(["bash", "-n", str(post_build)], check=True)
    script = post_build.read_text()
    for step in ("npm ci", "npm run build", "pip install", "ironcage-jupyter install --sys-prefix",
                 "jupyter labextension list"):
        assert step in script, step
    assert "bubblewrap" in (BINDER / "apt.txt").read_text().split()


def test_start_script_is_valid_bash() -> None:
    start = BINDER / "start"
    assert os.access(start, os.X_OK)
    subprocess.run(["bash", "-n", str(start)], check=True)
    assert 'exec "$@"' in start.read_text()
