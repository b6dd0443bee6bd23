"""``%ironcage`` and ``%%ironcage``: handled by the wrapper itself, never forwarded to the child.

A cell is an Iron Cage magic cell when its first non-blank line starts with ``%ironcage`` or
``%%ironcage``. Arguments are parsed with IPython's ``magic_arguments`` so ``%ironcage?`` and
``%ironcage SUBCOMMAND --help`` read like any IPython magic.
"""

from __future__ import annotations

import html
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

if TYPE_CHECKING:
    from .kernel import IronCageKernel


@dataclass
class MagicResult:
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    error_name: str | None = None
    details: list[str] = field(default_factory=list)
    #: The execute_reply of a cell a subcommand ran through the pipeline (e.g. with-secret).
    reply: dict[str, Any] | None = None
    #: The pipeline's CellRequest when a subcommand ran a cell (its outcome is reported to the UI).
    cell: Any = None

    @classmethod
    def text(cls, text: str, markdown: str | None = None, html_text: str | None = None) -> MagicResult:
        data: dict[str, Any] = {"text/plain": text}
        if markdown is not None:
            data["text/markdown"] = markdown
        if html_text is not None:
            data["text/html"] = html_text
        return cls(data=data)

    @classmethod
    def fail(cls, message: str, name: str = "UsageError", details: list[str] | None = None) -> MagicResult:
        return cls(error=message, error_name=name, details=details or [])


#: name -> (handler(kernel, argstring, cell_body or None) -> MagicResult, one-line help)
Handler = Callable[["IronCageKernel", str, "str | None"], Awaitable[MagicResult]]
SUBCOMMANDS: dict[str, tuple[Handler, str]] = {}


def subcommand(name: str, summary: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        SUBCOMMANDS[name] = (handler, summary)
        return handler

    return register


def is_ironcage_magic(code: str) -> bool:
    for line in code.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        return stripped.startswith(("%ironcage", "%%ironcage")) and (
            stripped in ("%ironcage", "%%ironcage")
            or stripped[len("%%ironcage" if stripped.startswith("%%") else "%ironcage")] in " ?\t"
        )
    return False


def help_text() -> str:
    lines = [
        "%ironcage SUBCOMMAND [options]      (line magic)",
        "%%ironcage SUBCOMMAND [options]     (cell magic: the cell body is the subcommand's input)",
        "",
        "Handled by the trusted Iron Cage wrapper, never by the sandboxed kernel.",
        "",
        "Subcommands:",
    ]
    width = max((len(n) for n in SUBCOMMANDS), default=8)
    for name in sorted(SUBCOMMANDS):
        lines.append(f"  {name.ljust(width)}  {SUBCOMMANDS[name][1]}")
    lines.append("")
    lines.append("`%ironcage SUBCOMMAND --help` shows a subcommand's options.")
    return "\n".join(lines)


async def run_magic(kernel: IronCageKernel, code: str) -> MagicResult:
    lines = code.strip("\n").splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    first = lines[0].strip()
    is_cell = first.startswith("%%")
    body = "\n".join(lines[1:]) if is_cell else None
    if not is_cell and any(line.strip() for line in lines[1:]):
        return MagicResult.fail(
            "%ironcage must be alone in its cell (use %%ironcage for a cell magic): the rest of this "
            "cell was not run."
        )
    rest = first.lstrip("%")[len("ironcage"):].strip()
    if rest in ("", "?", "??") or rest in ("help", "--help", "-h"):
        return MagicResult.text(help_text())
    try:
        words = shlex.split(rest)
    except ValueError as exc:
        return MagicResult.fail(f"cannot parse the magic's arguments: {exc}")
    name, argstring = words[0], rest[len(rest.split(None, 1)[0]):].strip()
    entry = SUBCOMMANDS.get(name)
    if entry is None:
        return MagicResult.fail(f"unknown %ironcage subcommand {name!r}.\n\n{help_text()}")
    try:
        return await entry[0](kernel, argstring, body)
    except UsageError as exc:
        return MagicResult.fail(str(exc))
    except SystemExit:
        # argparse exits after printing --help; the text is already captured by the handler
        return MagicResult.fail("invalid arguments")


def _parse(func: Any, argstring: str) -> Any:
    """parse_argstring, with --help turned into a UsageError carrying the help text."""
    if argstring.strip() in ("-h", "--help"):
        raise UsageError(func.parser.format_help())
    return parse_argstring(func, argstring)


@magic_arguments()
@argument("--json", action="store_true", help="Show the status as JSON.")
def _status_args(line: str) -> None:
    """%ironcage status [--json]: version, child kernel, transport, policy, isolation, audit."""


@subcommand("status", "version, child kernel, transport, policy, isolation layers and audit location")
async def _status(kernel: IronCageKernel, argstring: str, body: str | None) -> MagicResult:
    args = _parse(_status_args, argstring)
    info = kernel.status_info()
    if args.json:
        import json

        return MagicResult(data={"application/json": info, "text/plain": json.dumps(info, indent=2)})
    width = max(len(k) for k in info)
    text_lines = []
    for key, value in info.items():
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value) if value else "-"
        elif isinstance(value, dict):
            value = "; ".join(f"{k}={v}" for k, v in value.items()) or "-"
        text_lines.append(f"{key.replace('_', ' ').ljust(width)}  {value}")
    rows = "".join(
        f"<tr><th style='text-align:left'>{html.escape(k.replace('_', ' '))}</th>"
        f"<td style='text-align:left'>{html.escape(line.split('  ', 1)[1].strip())}</td></tr>"
        for k, line in zip(info, text_lines, strict=True)
    )
    return MagicResult.text(
        "Iron Cage status\n" + "\n".join(text_lines),
        html_text=f"<b>Iron Cage status</b><table>{rows}</table>",
    )


# -- policy (ironcage_jupyter.policy) ---------------------------------------------------------------
async def _policy_magic(kernel: IronCageKernel, command: str, argstring: str, body: str | None) -> MagicResult:
    session = getattr(kernel, "policy_session", None)
    if session is None:
        return MagicResult.fail(f"no policy is active, no cell runs:\n{getattr(kernel, 'policy_error', '')}",
                                name="PolicyError")
    from .policy.session import KernelAsk

    # out.events (policy changes, failed loads) stay on the session for the audit log: session.drain_events()
    out = await session.magic(command, argstring, body, ask=KernelAsk(kernel),
                              allow_stdin=bool(getattr(kernel, "_magic_allow_stdin", False)))
    if out.error is not None:
        return MagicResult.fail(out.error, name="PolicyError")
    return MagicResult.text(out.text, markdown=out.markdown)


@subcommand("policy", "active policy; `show [--yaml]`, `load NAME|PATH`, `check NOTEBOOK|FILE`")
async def _policy(kernel: IronCageKernel, argstring: str, body: str | None) -> MagicResult:
    if argstring.strip() in ("-h", "--help"):
        return MagicResult.text("%ironcage policy                 summary of the active policy\n"
                                "%ironcage policy show [--yaml]   the effective policy (after extends)\n"
                                "%ironcage policy load NAME|PATH  switch policy (loosening asks a human; refused "
                                "when locked)\n"
                                "%ironcage policy check PATH      decide every cell of a notebook or .py file")
    return await _policy_magic(kernel, "policy", argstring, body)


@subcommand("explain", "%%ironcage explain: screen and decide the cell body without running it")
async def _explain(kernel: IronCageKernel, argstring: str, body: str | None) -> MagicResult:
    return await _policy_magic(kernel, "explain", argstring, body)
