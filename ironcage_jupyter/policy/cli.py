"""`ironcage-jupyter policy validate|schema|show` and `ironcage-jupyter check`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .engine import PolicyEngine
from .loader import PolicyError, load_policy
from .models import policy_json_schema
from .report import policy_show
from .subjects import PolicyContext

EXIT_OK, EXIT_BLOCKED, EXIT_USAGE = 0, 1, 2


def register(subparsers: Any) -> None:
    policy = subparsers.add_parser("policy", help="Validate, show and export policies.")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    validate = policy_sub.add_parser("validate", help="Validate a policy file (exit 2 on errors).")
    validate.add_argument("path", help="Policy YAML file or built-in name.")
    validate.set_defaults(func=cmd_validate)
    schema = policy_sub.add_parser("schema", help="Print the policy JSON Schema (for editors).")
    schema.set_defaults(func=cmd_schema)
    show = policy_sub.add_parser("show", help="Show the effective policy (after extends).")
    show.add_argument("name", help="Built-in name or path.")
    show.add_argument("--yaml", action="store_true", help="Print the effective policy as YAML.")
    show.set_defaults(func=cmd_show)

    check = subparsers.add_parser("check", help="Screen and decide every cell of a notebook without running it.")
    check.add_argument("target", help="NOTEBOOK.ipynb, FILE.py (cells split at `# %%`) or - for stdin.")
    check.add_argument("--policy", default="default", help="Policy name or path (default: default).")
    check.add_argument("--json", action="store_true", help="One JSON object per cell.")
    check.add_argument("--workspace", default=None, help="Workspace for relative paths (default: the target's folder).")
    check.set_defaults(func=cmd_check)


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.path)
    except PolicyError as exc:
        _err(f"invalid policy:\n{exc}")
        return EXIT_USAGE
    print(f"{args.path}: valid ({policy.name}, {len(policy.rules)} rules, mode {policy.mode})")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(policy_json_schema(), indent=2, sort_keys=True))
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.name)
    except PolicyError as exc:
        _err(f"invalid policy:\n{exc}")
        return EXIT_USAGE
    print(policy_show(policy, yaml=args.yaml))
    return EXIT_OK


def read_cells(text: str, name: str) -> list[str]:
    """Code cells of a notebook (JSON) or a .py file split at `# %%` markers."""
    stripped = text.lstrip()
    if name.endswith(".ipynb") or (name == "-" and stripped.startswith("{")):
        notebook = json.loads(text)
        if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
            raise ValueError("not a notebook: no cells list")
        cells: list[str] = []
        for cell in notebook["cells"]:
            if isinstance(cell, dict) and cell.get("cell_type") == "code":
                source = cell.get("source", "")
                cells.append("".join(source) if isinstance(source, list) else str(source))
        return cells
    cells = []
    current: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.startswith("# %%") and current:
            cells.append("".join(current))
            current = []
        current.append(line)
    if current or not cells:
        cells.append("".join(current))
    return cells


def cmd_check(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        _err(f"invalid policy:\n{exc}")
        return EXIT_USAGE
    try:
        if args.target == "-":
            text = sys.stdin.read()
            workspace = args.workspace or os.getcwd()
        else:
            path = Path(args.target)
            text = path.read_text(encoding="utf-8")
            workspace = args.workspace or str(path.resolve().parent)
        cells = read_cells(text, args.target)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        _err(f"cannot read {args.target}: {exc}")
        return EXIT_USAGE
    engine = PolicyEngine(policy, PolicyContext.create(workspace))
    blocked = False
    for index, code in enumerate(cells):
        decision = engine.decide_cell(code)
        blocked = blocked or decision.effect != "allow"
        if args.json:
            print(json.dumps({"cell": index, "decision": decision.effect, "rules": decision.rules,
                              "findings": [f.to_dict() for f in decision.findings]}))
        else:
            print(f"cell {index}: {decision.effect.upper()} [{', '.join(decision.rules)}] {decision.reason}")
            for finding in decision.findings:
                print(f"    line {finding.line}: {finding.id} [{finding.category}/{finding.severity}] {finding.message}")
    return EXIT_BLOCKED if blocked else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m ironcage_jupyter.policy.cli`) until the top-level CLI wires register()."""
    parser = argparse.ArgumentParser(prog="ironcage-jupyter")
    register(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) and EXIT_USAGE
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
