"""Entry points of the input firewall: `screen_cell` and `screen_arguments`."""

from __future__ import annotations

import ast
import fnmatch
import functools
import re
import threading
import warnings
from collections.abc import Mapping
from typing import Any

from .analyzer import Analyzer
from .bandit_runner import run_bandit
from .decode import nfkc
from .findings import Finding, MagicUse, PathUse, ScreenResult
from .settings import FirewallSettings
from .shellparse import shell_commands
from .tables import INVISIBLE_CHARS, PROMPT_INJECTION, SENSITIVE_PATHS

_DEFAULT_SETTINGS = FirewallSettings()
_local = threading.local()
_MAX_ARG_STRINGS = 1000
# IPython's transformer only changes code with escapes (! % ? , ; / at a line start), `x = !cmd`,
# `x = %magic`, help `obj?`, pasted prompts (>>> ... In [n]:) or leading whitespace. Cells without any of
# these are plain Python and skip it (the transformer costs ~50 us per line). Conservative: false matches
# only cost time. tests/test_firewall_screen.py checks the equivalence on the benign corpus.
_NEEDS_TRANSFORM = re.compile(r"(?m)^[^\S\n]*(?:[!%?,;/]|>>>|\.\.\.|In \[)|=[^\S\n]*[!%]|\?[^\S\n]*(?:#.*)?$|\A\s")
_CODE_ARG_NAMES = {"code", "source", "script", "cell", "python"}
_SHELL_ARG_NAMES = {"command", "cmd", "shell", "commandline", "command_line"}


def _transformer() -> Any:
    manager = getattr(_local, "manager", None)
    if manager is None:
        from IPython.core.inputtransformer2 import TransformerManager

        manager = TransformerManager()
        _local.manager = manager
    return manager


@functools.lru_cache(maxsize=32)
def _compiled(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, re.IGNORECASE | re.MULTILINE) for p in patterns)


# Every alternative of PROMPT_INJECTION contains one of these words; plain-ASCII text without any of
# them cannot match, and a substring test is ~6x cheaper than the regex. Non-ASCII text always gets
# the regex (Unicode case folding has corner cases a substring test would miss).
_INJECTION_KEYWORDS = ("ignore", "disregard", "forget", "now", "instruction", "<|", "inst]", "<<sys", "system",
                       "prompt", "user", "human", "operator", "safety", "security", "guardrail", "polic", "firewall",
                       "cage", "sandbox", "jailbreak", "must", "always", "secret", "credential", "token", "api")


def _may_inject(text: str) -> bool:
    if not text.isascii():
        return True
    lower = text.lower()
    return any(k in lower for k in _INJECTION_KEYWORDS)


def _text_findings(text: str, settings: FirewallSettings, line_hint: int | None = None) -> list[Finding]:
    """Prompt-injection markers and invisible characters, over the whole text (strings and comments)."""
    findings: list[Finding] = []
    normal = nfkc(text)
    match = PROMPT_INJECTION.search(normal) if _may_inject(text) else None
    if match is not None:
        line = line_hint if line_hint is not None else normal.count("\n", 0, match.start()) + 1
        findings.append(Finding("IC-INJ-001", "prompt_injection", "low", line,
                                f"prompt-injection marker {match.group(0)[:60]!r} (advisory)"))
    for pattern in _compiled(tuple(settings.extra_injection_patterns)):
        extra = pattern.search(normal)
        if extra is not None:
            line = line_hint if line_hint is not None else normal.count("\n", 0, extra.start()) + 1
            findings.append(Finding("IC-INJ-002", "prompt_injection", "low", line,
                                    f"matches configured injection pattern {pattern.pattern!r} (advisory)"))
    invisible = INVISIBLE_CHARS.search(text)
    if invisible is not None:
        line = line_hint if line_hint is not None else text.count("\n", 0, invisible.start()) + 1
        findings.append(Finding("IC-INJ-003", "prompt_injection", "medium", line,
                                f"invisible or bidirectional control character U+{ord(invisible.group(0)):04X}"))
    return findings


def needs_transform(code: str) -> bool:
    return _NEEDS_TRANSFORM.search(code) is not None


class _Screener:
    def __init__(self, settings: FirewallSettings) -> None:
        self.settings = settings

    def python(self, code: str, *, depth: int, transform: bool, line_offset: int = 0,
               fixed_line: int | None = None) -> tuple[str, list[Finding], list[MagicUse], list[PathUse], bool]:
        """Transform (optionally), parse and analyse. Returns (transformed, findings, magics, paths, parsed)."""

        def line(n: int) -> int:
            return fixed_line if fixed_line is not None else n + line_offset

        transformed = code
        if transform and needs_transform(code):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    transformed = _transformer().transform_cell(code)
            except Exception as exc:  # noqa: BLE001 - any transformer failure is a finding, never a crash
                return code, [Finding("IC-PARSE-001", "parse_error", "medium", line(1),
                                      f"IPython could not transform the cell: {type(exc).__name__}: {exc}")], [], [], False
        try:
            with warnings.catch_warnings():
                # invalid escapes etc. warn at compile time; under `-W error` they would turn into
                # SyntaxErrors and make screening depend on the process's warning filters
                warnings.simplefilter("ignore")
                tree = ast.parse(transformed)
        except SyntaxError as exc:
            return transformed, [Finding("IC-PARSE-001", "parse_error", "medium", line(exc.lineno or 1),
                                         f"does not parse: {exc.msg}")], [], [], False
        except (ValueError, RecursionError, MemoryError) as exc:
            return transformed, [Finding("IC-PARSE-002", "parse_error", "high", line(1),
                                         f"cannot be parsed for screening: {type(exc).__name__}")], [], [], False

        def nested(sub: str, at: int, sub_transform: bool, fixed: bool) -> tuple[list[Finding], list[MagicUse], list[PathUse]]:
            _, f, m, p, _ = self.python(sub, depth=depth + 1, transform=sub_transform,
                                        line_offset=at, fixed_line=at if fixed else None)
            return f, m, p

        analyzer = Analyzer(nested, line_offset=line_offset, fixed_line=fixed_line,
                            max_decode_depth=self.settings.max_decode_depth, depth=depth, source=transformed)
        try:
            analyzer.visit(tree)
        except RecursionError:
            analyzer.state.findings.append(Finding("IC-PARSE-002", "parse_error", "high", line(1),
                                                   "too deeply nested to screen"))
        findings = analyzer.state.findings
        if depth == 0 and self.settings.bandit:
            try:
                findings.extend(
                    f if fixed_line is None and not line_offset else
                    Finding(f.id, f.category, f.severity, line(f.line), f.message)
                    for f in run_bandit(tree, transformed, tuple(self.settings.bandit_skip))
                )
            except RecursionError:
                findings.append(Finding("IC-PARSE-002", "parse_error", "high", line(1), "too deeply nested for bandit"))
            except Exception as exc:  # noqa: BLE001 - bandit is advisory; its failure is reported, not fatal
                findings.append(Finding("BANDIT-ERROR", "bandit", "low", line(1), f"bandit failed: {type(exc).__name__}"))
        if self.settings.extra_sensitive_paths:
            patterns = _compiled(tuple(self.settings.extra_sensitive_paths))
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) < 4096:
                    text = nfkc(node.value)
                    if any(p.search(text) for p in patterns):
                        findings.append(Finding("IC-PATH-100", "sensitive_path", "high", line(getattr(node, "lineno", 1)),
                                                f"configured sensitive path: {text[:80]!r}"))
        return transformed, findings, analyzer.state.magics, analyzer.state.paths, True


def _filter(findings: list[Finding], settings: FirewallSettings) -> list[Finding]:
    if settings.disabled_checks:
        findings = [f for f in findings if not any(fnmatch.fnmatchcase(f.id, p) for p in settings.disabled_checks)]
    unique: dict[tuple[str, int, str], Finding] = {}
    for finding in findings:
        unique.setdefault((finding.id, finding.line, finding.message), finding)
    return sorted(unique.values(), key=lambda f: (f.line, f.id, f.message))


def screen_cell(raw_code: str, settings: FirewallSettings | None = None) -> ScreenResult:
    """Screen one cell: IPython input transformation, then AST rules, payload decoding, bandit.

    Never raises for any input string: problems become findings (parse errors included).
    """
    settings = settings or _DEFAULT_SETTINGS
    if not isinstance(raw_code, str):
        raise TypeError("screen_cell expects the cell source as str")
    findings: list[Finding] = []
    if len(raw_code.encode("utf-8", "surrogatepass")) > settings.max_cell_bytes:
        findings.append(Finding("IC-SIZE-001", "oversize", "high", 1,
                                f"cell is larger than {settings.max_cell_bytes} bytes"))
    findings.extend(_text_findings(raw_code, settings))
    screener = _Screener(settings)
    transformed, found, magics, paths, parsed = screener.python(raw_code, depth=0, transform=True)
    findings.extend(found)
    return ScreenResult(raw=raw_code, transformed=transformed, findings=_filter(findings, settings),
                        magics=magics, paths=paths, parsed=parsed)


def _strings(value: Any, prefix: str, out: list[tuple[str, str]], depth: int = 0) -> None:
    if len(out) >= _MAX_ARG_STRINGS or depth > 20:
        return
    if isinstance(value, str):
        out.append((prefix, value))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _strings(str(key), f"{prefix}.<key>", out, depth + 1)
            _strings(item, f"{prefix}.{key}", out, depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _strings(item, f"{prefix}[{index}]", out, depth + 1)


def screen_arguments(tool_name: str, args: Mapping[str, Any], settings: FirewallSettings | None = None) -> list[Finding]:
    """Screen the arguments of a tool call: injection markers, invisible characters, sensitive paths in
    every string; arguments named like code (`code`, `source` ...) are screened as a cell, arguments named
    like commands (`command`, `cmd` ...) as shell commands. Findings carry line 0 and name the argument."""
    settings = settings or _DEFAULT_SETTINGS
    strings: list[tuple[str, str]] = []
    for name, value in args.items():
        _strings(value, str(name), strings)
    findings: list[Finding] = []
    for where, text in strings:
        for finding in _text_findings(text, settings, line_hint=0):
            findings.append(Finding(finding.id, finding.category, finding.severity, 0, f"{tool_name}({where}): {finding.message}"))
        normal = nfkc(text)
        if len(normal) < 4096:
            for pid, severity, message, rx in SENSITIVE_PATHS:
                if rx.search(normal):
                    findings.append(Finding(pid, "sensitive_path", severity, 0, f"{tool_name}({where}): {message}"))  # type: ignore[arg-type]
        top = where.split(".")[0].split("[")[0].lower()
        if top in _CODE_ARG_NAMES:
            for finding in screen_cell(text, settings).findings:
                findings.append(Finding(finding.id, finding.category, finding.severity, 0,
                                        f"{tool_name}({where}) line {finding.line}: {finding.message}"))
        elif top in _SHELL_ARG_NAMES:
            commands = ", ".join(shell_commands(text))
            findings.append(Finding("IC-SHELL-009", "shell", "high", 0, f"{tool_name}({where}) runs shell commands: {commands}"))
    return _filter(findings, settings)
