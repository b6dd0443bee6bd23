"""``ironcage-jupyter``: the command line for everything in Iron Cage."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__

#: Subcommand modules, each exposing ``register(subparsers)``; those not present are skipped.
SUBCOMMAND_MODULES = (
    "ironcage_jupyter.policy.cli",
    "ironcage_jupyter.audit.cli",
    "ironcage_jupyter.sandbox.cli",
    "ironcage_jupyter.tools.cli",
)


def _install(args: argparse.Namespace) -> int:
    from .kernelspec import install

    prefix = args.prefix
    if args.sys_prefix:
        prefix = sys.prefix
    path = install(user=args.user, prefix=prefix, kernel_name=args.name, display_name=args.display_name)
    print(f"Installed kernelspec {args.name} in {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ironcage-jupyter",
        description="Iron Cage Python: a guardrail kernel for Jupyter.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")

    install = subparsers.add_parser("install", help="install the ironcage kernelspec")
    where = install.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user")
    where.add_argument("--sys-prefix", action="store_true", help="install into sys.prefix (venv/conda)")
    where.add_argument("--prefix", help="install into this prefix")
    install.add_argument("--name", default="ironcage", help="kernelspec name (default: ironcage)")
    install.add_argument("--display-name", default="Iron Cage Python", help="name shown in frontends")
    install.set_defaults(func=_install)

    for module_name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
