"""CLI subcommands through a small argparse harness calling register()."""

import argparse
import io
import json
import sys

import pytest

from ironcage_jupyter.policy import cli


def run(argv, stdin=None, capsys=None, monkeypatch=None):
    parser = argparse.ArgumentParser(prog="ironcage-jupyter")
    cli.register(parser.add_subparsers(dest="command", required=True))
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    args = parser.parse_args(argv)
    return args.func(args)


def notebook(*cells):
    return json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {},
                       "cells": [{"cell_type": "code", "source": c, "metadata": {}, "outputs": [],
                                  "execution_count": None} for c in cells]
                       + [{"cell_type": "markdown", "source": "# text", "metadata": {}}]})


def test_check_notebook_json(tmp_path, capsys, monkeypatch):
    nb = tmp_path / "n.ipynb"
    nb.write_text(notebook("import pandas as pd", "import ctypes", "!ls"))
    assert run(["check", "--json", str(nb)], capsys=capsys) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["decision"] for d in lines] == ["allow", "deny", "escalate"]
    assert lines[1]["findings"][0].keys() == {"id", "category", "severity", "line", "message"}
    assert lines[1]["cell"] == 1 and lines[1]["rules"]


def test_check_exit_codes(tmp_path, capsys, monkeypatch):
    ok = tmp_path / "ok.py"
    ok.write_text("# %%\nimport numpy as np\n# %%\nx = np.arange(3)\n")
    assert run(["check", str(ok)]) == 0
    assert run(["check", "-"], stdin="import os\nos.system('id')\n", monkeypatch=monkeypatch) == 1
    assert run(["check", "--policy", "no-such", str(ok)]) == 2
    assert run(["check", str(tmp_path / "missing.ipynb")]) == 2
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{not json")
    assert run(["check", str(bad)]) == 2


def test_policy_validate_schema_show(tmp_path, capsys):
    assert run(["policy", "validate", "default"]) == 0
    bad = tmp_path / "p.yaml"
    bad.write_text("rules:\n  - id: x\n    subject: cel\n    effect: allow\n")
    assert run(["policy", "validate", str(bad)]) == 2
    assert f"{bad}:3" in capsys.readouterr().err
    assert run(["policy", "schema"]) == 0
    assert "properties" in json.loads(capsys.readouterr().out)
    assert run(["policy", "show", "strict", "--yaml"]) == 0
    assert "rules:" in capsys.readouterr().out


def test_main_usage_error_is_2():
    with pytest.raises(SystemExit) as info:
        argparse.ArgumentParser().parse_args(["--nope"])
    assert info.value.code == 2
    assert cli.main(["check"]) == 2


def test_top_level_cli_wires_policy_commands(tmp_path, capsys):
    from ironcage_jupyter.cli import main

    script = tmp_path / "cells.py"
    script.write_text("import pandas as pd\n# %%\nimport ctypes\n")
    assert main(["check", "--json", str(script)]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["decision"] for d in lines] == ["allow", "deny"]
    assert main(["policy", "validate", "observe"]) == 0
