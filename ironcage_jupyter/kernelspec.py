"""Install the ``ironcage`` kernelspec, mirroring ``python -m ipykernel install``."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from importlib.resources import files
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager

KERNEL_NAME = "ironcage"
DISPLAY_NAME = "Iron Cage Python"


def write_kernel_spec(
    path: Path,
    *,
    display_name: str = DISPLAY_NAME,
    python: str | None = None,
    env: dict[str, str] | None = None,
) -> Path:
    """Write kernel.json and the logos into ``path``; argv uses ``python`` (default: this interpreter)."""
    path.mkdir(parents=True, exist_ok=True)
    resources = files("ironcage_jupyter") / "resources" / "kernelspec"
    for name in ("logo-32x32.png", "logo-64x64.png", "logo-svg.svg"):
        (path / name).write_bytes((resources / name).read_bytes())
    spec = json.loads((resources / "kernel.json").read_text())
    spec["argv"][0] = python or sys.executable
    spec["display_name"] = display_name
    if env:
        spec["env"] = env
    (path / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n")
    return path


def install(
    *,
    user: bool = False,
    prefix: str | None = None,
    kernel_name: str = KERNEL_NAME,
    display_name: str = DISPLAY_NAME,
    env: dict[str, str] | None = None,
) -> str:
    """Install the kernelspec like ``ipykernel install``; returns the installed directory."""
    with tempfile.TemporaryDirectory() as tmp:
        source = write_kernel_spec(Path(tmp) / kernel_name, display_name=display_name, env=env)
        return KernelSpecManager().install_kernel_spec(
            str(source), kernel_name=kernel_name, user=user, prefix=prefix, replace=True
        )


def uninstall(kernel_name: str = KERNEL_NAME) -> None:
    ksm = KernelSpecManager()
    path = ksm.get_kernel_spec(kernel_name).resource_dir
    shutil.rmtree(path)
