"""bandit, run in-process on the already-parsed cell, with `# nosec` ignored.

The test set is built once per process (about 0.1 ms) and reused; each cell gets a fresh visitor.
bandit's results are mapped into firewall findings (id `BANDIT-Bxxx`).
"""

from __future__ import annotations

import ast
import functools
import io
import logging
import re
import unicodedata
import warnings
from typing import Any

from .findings import Finding

# Tests that say nothing about safety in a notebook (asserts, random, try/except/pass, request timeouts,
# /tmp use inside a private sandbox tmp).
DEFAULT_SKIP = ("B101", "B110", "B112", "B311", "B113", "B108")

# bandit costs ~30 us per AST node; only top-level statements whose text mentions something one of its
# tests reacts to are handed to it (same results on those statements, a fraction of the time).
_TRIGGER_WORDS = frozenset("""
exec eval chmod pwd flask tarfile extractall dill marshal shelve md5 sha1 mktemp mark_safe SafeString urlopen
urlretrieve telnetlib ftplib ssl etree minidom sax expat pulldom wsgiref CGIHandler pyghmi verify paramiko pysnmp
system subprocess shell Popen startfile yaml jinja2 mako Markup listen torch from_pretrained hf_hub_download
snapshot_download load_dataset django RawSQL tempfile getoutput check_output check_call os bind Crypto Cryptodome
""".split())
_TRIGGER_PARTS = re.compile(r"passw|token|secret|pickle|popen|spawn|exec[lv]|xml|cipher|urlopener", re.IGNORECASE)
_TRIGGER_OTHER = re.compile(
    r"0\.0\.0\.0|[\u202a-\u202e\u2066-\u2069]"
    r"|\b(?i:select|insert|update|delete|replace)\b.{0,200}\b(?i:from|into|set|where|values)\b"
)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _triggers(text: str, extra: frozenset[str] | set[str] = frozenset()) -> bool:
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)  # Python reads ｅｘｅｃ as exec
    words = set(_IDENT.findall(text))
    if words & _TRIGGER_WORDS or words & extra:
        return True
    if any(_TRIGGER_PARTS.search(w) for w in words):
        return True
    return _TRIGGER_OTHER.search(text) is not None


def _relevant(tree: ast.Module, source: str) -> ast.Module:
    lines = source.splitlines()
    # names bound by imports (`from os import system as s`) are what bandit resolves calls through
    # (only those bound to something bandit reacts to: `import numpy as np` does not make `np` relevant)
    imported: set[str] = set()
    for stmt in ast.walk(tree) if "import" in source else ():
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            module = stmt.module if isinstance(stmt, ast.ImportFrom) and stmt.module else ""
            for alias in stmt.names:
                if _triggers(f"{module} {alias.name}"):
                    imported.add(alias.asname or alias.name.split(".")[0])
    body = [
        stmt for stmt in tree.body
        # imports always go in: several tests depend on what the file imported
        if isinstance(stmt, ast.Import | ast.ImportFrom)
        or _triggers("\n".join(lines[stmt.lineno - 1: (stmt.end_lineno or stmt.lineno)]), imported)
    ]
    return ast.Module(body=body, type_ignores=[])


_CATEGORY_BY_TEST = {
    "B102": "dynamic_code", "B307": "dynamic_code",
    "B105": "secret_access", "B106": "secret_access", "B107": "secret_access",
    "B301": "deserialization", "B302": "deserialization", "B506": "deserialization", "B614": "deserialization",
    "B403": "deserialization",
    "B310": "network", "B104": "network", "B312": "network", "B321": "network", "B401": "network",
    "B402": "network", "B615": "network",
    "B404": "shell", "B601": "shell", "B602": "shell", "B603": "shell", "B604": "shell", "B605": "shell",
    "B606": "shell", "B607": "shell", "B609": "shell",
}
_SEVERITY = {"LOW": "low", "MEDIUM": "medium", "HIGH": "high"}
_DOWNGRADE = {"high": "medium", "medium": "low", "low": "low"}


@functools.lru_cache(maxsize=8)
def _test_set(skip: tuple[str, ...]) -> Any:
    from bandit.core import config as b_config
    from bandit.core import test_set as b_test_set

    # bandit warns for every snippet that has no module path; that is expected here.
    logging.getLogger("bandit").setLevel(logging.ERROR)
    return b_test_set.BanditTestSet(b_config.BanditConfig(), {"exclude": list(skip)})


def run_bandit(tree: ast.Module, source: str, skip: tuple[str, ...] = DEFAULT_SKIP) -> list[Finding]:
    with warnings.catch_warnings():
        # bandit touches deprecated ast names and APIs; its warnings are not ours to surface
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return _run_bandit(tree, source, skip)


def _run_bandit(tree: ast.Module, source: str, skip: tuple[str, ...]) -> list[Finding]:
    from bandit.core import meta_ast, metrics
    from bandit.core import node_visitor as b_node_visitor

    visitor = b_node_visitor.BanditNodeVisitor(
        "/cell.py", io.BytesIO(source.encode("utf-8", "surrogatepass")), meta_ast.BanditMetaAst(),
        _test_set(tuple(sorted(skip))), False, {}, metrics.Metrics(),
    )
    subset = _relevant(tree, source)
    if not subset.body:
        return []
    visitor.generic_visit(subset)
    findings = []
    for issue in visitor.tester.results:
        test_id = issue.test_id
        if test_id in skip:
            continue
        severity = _SEVERITY.get(str(issue.severity), "medium")
        if str(issue.confidence) == "LOW":
            severity = _DOWNGRADE[severity]
        findings.append(Finding(
            f"BANDIT-{test_id}", _CATEGORY_BY_TEST.get(test_id, "bandit"), severity,  # type: ignore[arg-type]
            int(issue.lineno or 1), f"bandit {test_id} ({issue.test}): {issue.text}",
        ))
    return findings
