"""The wheel carries the kernelspec as shared data and the built-in policies, so `pip install` is enough."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    from hatchling.builders.wheel import WheelBuilder

    out = tmp_path_factory.mktemp("dist")
    builder = WheelBuilder(str(REPO))
    path = next(iter(builder.build(directory=str(out), versions=["standard"])))
    return zipfile.ZipFile(path)


def test_wheel_installs_the_kernelspec_as_shared_data(wheel):
    names = wheel.namelist()
    data = [n for n in names if "/data/share/jupyter/kernels/ironcage/" in n]
    assert any(n.endswith("kernel.json") for n in data)
    assert any(n.endswith("logo-64x64.png") for n in data)
    spec = json.loads(wheel.read(next(n for n in data if n.endswith("kernel.json"))))
    assert spec["argv"] == ["python", "-m", "ironcage_jupyter", "-f", "{connection_file}"]
    assert spec["display_name"] == "Iron Cage Python"
    assert spec["interrupt_mode"] == "message"


def test_wheel_has_the_console_script_and_policies(wheel):
    names = wheel.namelist()
    entry_points = wheel.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "ironcage-jupyter = ironcage_jupyter.cli:main" in entry_points
    assert any(n.startswith("ironcage_jupyter/policies/") and n.endswith(".yaml") for n in names)
