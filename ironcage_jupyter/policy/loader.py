"""Load a policy file (or a built-in by name), resolve `extends`, and report errors with file, line,
column and field path."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .models import Policy

MAX_POLICY_BYTES = 1_000_000
MAX_EXTENDS_DEPTH = 16
_BUILTIN_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class PolicyIssue:
    file: str
    line: int | None
    column: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        field = f" [{self.field}]" if self.field else ""
        return f"{where}:{field} {self.message}"


class PolicyError(Exception):
    """A policy that cannot be used. `issues` lists every problem found (file, line, column, field)."""

    def __init__(self, issues: list[PolicyIssue]) -> None:
        self.issues = issues
        first = issues[0]
        self.file, self.line, self.column, self.field = first.file, first.line, first.column, first.field
        super().__init__("\n".join(str(i) for i in issues))


def builtin_dirs() -> list[Path]:
    here = Path(__file__).resolve().parent
    # installed wheel: ironcage_jupyter/policies; source checkout: <repo>/policies
    return [here.parent / "policies", here.parent.parent / "policies"]


def builtin_names() -> list[str]:
    names: set[str] = set()
    for directory in builtin_dirs():
        if directory.is_dir():
            names.update(p.stem for p in directory.glob("*.yaml"))
    return sorted(names)


def resolve_policy_path(name_or_path: str, relative_to: Path | None = None) -> Path:
    """A built-in name (`default`) or a path (relative to `relative_to` when given)."""
    text = str(name_or_path)
    if _BUILTIN_NAME.match(text) and not text.endswith((".yaml", ".yml")):
        for directory in builtin_dirs():
            candidate = directory / f"{text}.yaml"
            if candidate.is_file():
                return candidate
        raise PolicyError([PolicyIssue(text, None, None, "", f"no built-in policy named {text!r} "
                                       f"(built-ins: {', '.join(builtin_names()) or 'none found'})")])
    path = Path(text).expanduser()
    if not path.is_absolute() and relative_to is not None:
        path = relative_to / path
    return path.resolve()


# ------------------------------------------------------------------ YAML with positions
def _node_for(root: yaml.Node | None, loc: tuple[Any, ...]) -> tuple[yaml.Node | None, bool]:
    """Walk the composed YAML to the node at `loc`. Returns (node, exact) where exact says whether the
    whole path was found (otherwise the deepest node found is returned)."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(part):
                    node = value_node
                    break
            else:
                return node, False
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
        else:
            return node, False
    return node, True


def _key_node(root: yaml.Node | None, loc: tuple[Any, ...]) -> yaml.Node | None:
    parent, exact = _node_for(root, loc[:-1])
    if exact and isinstance(parent, yaml.MappingNode):
        for key_node, _ in parent.value:
            if key_node.value == str(loc[-1]):
                return key_node
    return None


def _check_duplicate_keys(node: yaml.Node | None, file: str, path: str, issues: list[PolicyIssue]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                issues.append(PolicyIssue(file, key_node.start_mark.line + 1, key_node.start_mark.column + 1,
                                          f"{path}.{key}".lstrip("."), f"duplicate key {key!r}"))
            seen.add(key)
            _check_duplicate_keys(value_node, file, f"{path}.{key}", issues)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_duplicate_keys(item, file, f"{path}[{index}]", issues)


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_policy_text(text: str, file: str = "<policy>") -> tuple[dict[str, Any], yaml.Node | None]:
    """Parse YAML safely; return the raw mapping and the composed node tree (for line numbers)."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_POLICY_BYTES:
        raise PolicyError([PolicyIssue(file, None, None, "", f"policy file larger than {MAX_POLICY_BYTES} bytes")])
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        column = mark.column + 1 if mark is not None else None
        raise PolicyError([PolicyIssue(file, line, column, "", f"YAML syntax error: {exc.problem or exc}")]) from None
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        raise PolicyError([PolicyIssue(file, None, None, "", f"YAML error: {type(exc).__name__}: {exc}")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        line = root.start_mark.line + 1 if root is not None else 1
        raise PolicyError([PolicyIssue(file, line, 1, "", f"a policy must be a mapping, not {type(data).__name__}")])
    issues: list[PolicyIssue] = []
    _check_duplicate_keys(root, file, "", issues)
    if issues:
        raise PolicyError(issues)
    return data, root


def validate_document(data: dict[str, Any], root: yaml.Node | None, file: str) -> Policy:
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        issues = []
        for error in exc.errors(include_url=False):
            loc = tuple(error.get("loc", ()))
            node: yaml.Node | None
            if error.get("type") == "extra_forbidden":
                node = _key_node(root, loc) or _node_for(root, loc[:-1])[0]
            else:
                node, _ = _node_for(root, loc)
            line = node.start_mark.line + 1 if node is not None else None
            column = node.start_mark.column + 1 if node is not None else None
            message = error.get("msg", "invalid value")
            if error.get("type") == "extra_forbidden":
                message = f"unknown key {loc[-1]!r}" if loc else "unknown key"
            issues.append(PolicyIssue(file, line, column, _field_path(loc), message))
        raise PolicyError(issues) from None


# ------------------------------------------------------------------ extends
def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in child.items():
        if key == "rules":
            by_id = {r["id"]: r for r in merged.get("rules", [])}
            order = [r["id"] for r in merged.get("rules", [])]
            for rule in value:
                if rule["id"] not in by_id:
                    order.append(rule["id"])
                by_id[rule["id"]] = rule
            merged["rules"] = [by_id[i] for i in order]
        elif isinstance(value, dict) and isinstance(merged.get(key), dict) and key not in ("grants",):
            merged[key] = _merge_sections(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _merge_sections(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_sections(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _load_chain(path: Path, stack: tuple[Path, ...]) -> dict[str, Any]:
    file = str(path)
    if path in stack:
        cycle = " -> ".join(str(p) for p in (*stack, path))
        raise PolicyError([PolicyIssue(file, None, None, "extends", f"cyclic extends: {cycle}")])
    if len(stack) >= MAX_EXTENDS_DEPTH:
        raise PolicyError([PolicyIssue(file, None, None, "extends", "extends chain too deep")])
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError([PolicyIssue(file, None, None, "", "policy file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError([PolicyIssue(file, None, None, "", f"cannot read policy file: {exc}")]) from None
    data, root = parse_policy_text(text, file)
    policy = validate_document(data, root, file)  # each file is valid on its own: errors point into it
    document = policy.model_dump(mode="json", exclude_unset=True)
    parent_name = policy.extends
    if parent_name is None:
        return document
    try:
        parent_path = resolve_policy_path(parent_name, relative_to=path.parent)
    except PolicyError as exc:
        node, _ = _node_for(root, ("extends",))
        line = node.start_mark.line + 1 if node is not None else None
        raise PolicyError([PolicyIssue(file, line, None, "extends", exc.issues[0].message)]) from None
    if parent_path in (*stack, path):
        node, _ = _node_for(root, ("extends",))
        line = node.start_mark.line + 1 if node is not None else None
        cycle = " -> ".join(str(p) for p in (*stack, path, parent_path))
        raise PolicyError([PolicyIssue(file, line, None, "extends", f"cyclic extends: {cycle}")])
    parent = _load_chain(parent_path, (*stack, path))
    return _merge(parent, document)


def load_policy(name_or_path: str | Path) -> Policy:
    """Load a built-in policy by name (`default`, `strict`, `observe`) or a YAML file by path."""
    path = resolve_policy_path(str(name_or_path))
    merged = _load_chain(path, ())
    merged["extends"] = None
    try:
        return Policy.model_validate(merged)
    except ValidationError as exc:  # only combinations of individually valid files get here
        raise PolicyError([PolicyIssue(str(path), None, None, _field_path(tuple(e.get("loc", ()))), e.get("msg", ""))
                           for e in exc.errors(include_url=False)]) from None


def load_policy_text(text: str, file: str = "<policy>") -> Policy:
    """Validate policy text that does not extend anything (used by tests and editors)."""
    data, root = parse_policy_text(text, file)
    return validate_document(data, root, file)
