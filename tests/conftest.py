"""Shared fixtures: the ironcage kernelspec installed into a private Jupyter path, pointing at this tree."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def ironcage_jupyter_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A JUPYTER_PATH holding the ironcage kernelspec for this source tree; set for the whole run so
    every real client (KernelManager, nbclient, jupyter run, jupyter_kernel_test) finds it."""
    from ironcage_jupyter.kernelspec import write_kernel_spec

    root = tmp_path_factory.mktemp("jupyter")
    env = {"PYTHONPATH": str(REPO)}
    write_kernel_spec(root / "kernels" / "ironcage", python=sys.executable, env=env)
    saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "PYTHONPATH", "JUPYTER_RUNTIME_DIR")}
    os.environ["JUPYTER_PATH"] = str(root)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), saved["PYTHONPATH"]) if p)
    runtime = tmp_path_factory.mktemp("runtime")
    os.environ["JUPYTER_RUNTIME_DIR"] = str(runtime)
    # Kernels started by tests record into a private audit dir, never the user's real one.
    saved["IRONCAGE_AUDIT_DIR"] = os.environ.get("IRONCAGE_AUDIT_DIR")
    os.environ["IRONCAGE_AUDIT_DIR"] = str(tmp_path_factory.mktemp("audit"))
    # Kernels in tests run under the `observe` policy unless a test sets IRONCAGE_POLICY itself: tests
    # about other subsystems need their cells to reach the child; the policy's own tests pick policies.
    saved["IRONCAGE_POLICY"] = os.environ.get("IRONCAGE_POLICY")
    os.environ.setdefault("IRONCAGE_POLICY", "observe")
    # Clients that start a kernel without a cwd (jupyter_kernel_test) would make the checkout its
    # workspace; where the venv lives inside the checkout the sandbox's self-test rightly refuses a
    # writable site-packages. Tests get a workspace of their own.
    saved["IRONCAGE_WORKSPACE"] = os.environ.get("IRONCAGE_WORKSPACE")
    os.environ["IRONCAGE_WORKSPACE"] = str(tmp_path_factory.mktemp("workspace"))
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
