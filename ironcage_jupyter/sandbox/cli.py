"""``ironcage-jupyter selftest [--json]``: prove each isolation layer on this machine."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from ironcage_jupyter.sandbox.launcher import SandboxSpec
from ironcage_jupyter.sandbox.selftest import run_selftest, status_lines
from ironcage_jupyter.sandbox.settings import IsolationSettings, ResourceLimits


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "selftest",
        help="Start a sandbox like the kernel's and show each isolation layer as active / degraded / missing.",
    )
    parser.add_argument("--json", action="store_true", help="Print the report as JSON.")
    parser.add_argument(
        "--workspace", type=Path, default=None, help="Workspace to test (default: a temp dir)."
    )
    parser.add_argument(
        "--policy", default=None, help="Policy name or file whose isolation/limits sections apply."
    )
    parser.set_defaults(func=run)


def _settings(policy_name: str | None) -> tuple[IsolationSettings, ResourceLimits]:
    if policy_name is None:
        return IsolationSettings(), ResourceLimits()
    from ironcage_jupyter.policy import load_policy  # type: ignore[attr-defined]

    policy = load_policy(policy_name)
    return policy.isolation, policy.limits


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every required layer holds (possibly degraded), 1 when one is missing, 2 on error."""
    try:
        isolation, limits = _settings(args.policy)
    except Exception as exc:  # a malformed policy: say where, never a traceback
        print(f"error: cannot load policy {args.policy!r}: {exc}", file=sys.stderr)
        return 2
    socket_dir = Path(tempfile.mkdtemp(prefix="ironcage-selftest-sock-"))
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="ironcage-selftest-ws-"))
    try:
        report = run_selftest(SandboxSpec(workspace, socket_dir, isolation, limits))
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)
        if args.workspace is None:
            shutil.rmtree(workspace, ignore_errors=True)
    ok, reasons = report.ok_for(isolation.required_layers)
    if args.json:
        data = report.to_dict()
        data.pop("probe", None)
        data["ok"] = ok
        data["reasons"] = reasons
        print(json.dumps(data, indent=2))
    else:
        print("\n".join(status_lines(report)))
        for reason in reasons:
            print(f"  - {reason}")
        print("cells may run" if ok else "cells would be REFUSED: a required layer is missing")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ironcage-jupyter")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
