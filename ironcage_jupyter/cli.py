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
#: Which module registers which top-level command: a command line naming one imports only that
#: module (the policy package alone took ~0.27 s to import, paid by every `audit verify`).
COMMAND_MODULES = {
    "policy": "ironcage_jupyter.policy.cli",
    "check": "ironcage_jupyter.policy.cli",
    "audit": "ironcage_jupyter.audit.cli",
    "selftest": "ironcage_jupyter.sandbox.cli",
    "tools": "ironcage_jupyter.tools.cli",
    "install": None,
}


def _install(args: argparse.Namespace) -> int:
    from .kernelspec import install

    prefix = args.prefix
    if args.sys_prefix:
        prefix = sys.prefix
    path = install(user=args.user, prefix=prefix, kernel_name=args.name, display_name=args.display_name)
    print(f"Installed kernelspec {args.name} in {path}")
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI's parser; with ``command`` (a key of `COMMAND_MODULES`), only that command's
    module is imported and registered."""
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

    modules: tuple[str, ...] = SUBCOMMAND_MODULES
    if command in COMMAND_MODULES:
        wanted = COMMAND_MODULES[command]
        modules = tuple(m for m in SUBCOMMAND_MODULES if m == wanted)
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in arguments if not a.startswith("-")), None)
    parser = build_parser(first if first in COMMAND_MODULES else None)
    args = parser.parse_args(arguments)
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
