"""Writes docs/policy-reference.md from the policy JSON Schema (every field, type, default, description).

    python docs/gen_policy_reference.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ironcage_jupyter.policy import models  # noqa: E402
from ironcage_jupyter.policy.models import policy_json_schema  # noqa: E402

_DEFAULTS: dict[str, dict[str, Any]] = {"Policy": models.Policy().model_dump(mode="json")}
for _field in models.Policy.model_fields.values():
    _cls = _field.annotation
    if isinstance(_cls, type) and issubclass(_cls, models.BaseModel):
        _DEFAULTS[_cls.__name__] = _cls().model_dump(mode="json")
_DEFAULTS["Match"] = models.Match().model_dump(mode="json")


def _model_class(name: str) -> Any:
    import importlib

    for module in ("ironcage_jupyter.policy.models", "ironcage_jupyter.credentials.settings",
                   "ironcage_jupyter.sandbox.settings", "ironcage_jupyter.tools.settings",
                   "ironcage_jupyter.outputs.settings", "ironcage_jupyter.audit.settings",
                   "ironcage_jupyter.firewall.settings"):
        cls = getattr(importlib.import_module(module), name, None)
        if cls is not None:
            return cls
    return None


def _field_default(model: str, name: str) -> Any:
    cls = _model_class(model)
    field = getattr(cls, "model_fields", {}).get(name) if cls is not None else None
    if field is None or field.default_factory is None:
        raise KeyError(name)
    value = field.default_factory()
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def _type(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in prop:
        return f"[{prop['$ref'].rsplit('/', 1)[-1]}](#{prop['$ref'].rsplit('/', 1)[-1].lower()})"
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{prop['const']}`"
    if "anyOf" in prop:
        return " or ".join(_type(p, defs) for p in prop["anyOf"])
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list of {_type(prop.get('items', {}), defs)}"
    if kind == "object":
        extra = prop.get("additionalProperties")
        return f"map of string to {_type(extra, defs)}" if isinstance(extra, dict) else "object"
    return str(kind)


def _default(prop: dict[str, Any], model: str, name: str, required: list[str]) -> str:
    if name in required:
        return "required"
    if "default" in prop:
        value = prop["default"]
    elif name in _DEFAULTS.get(model, {}):
        value = _DEFAULTS[model][name]
        if isinstance(value, dict) and len(json.dumps(value)) > 80:
            return "section defaults"
    else:
        try:
            value = _field_default(model, name)
        except KeyError:
            return "see type"
        if isinstance(value, dict) and len(json.dumps(value)) > 80:
            return "section defaults"
    text = json.dumps(value)
    return f"`{text}`" if len(text) < 80 else f"`{text[:77]}...`"


def _table(title: str, schema: dict[str, Any], defs: dict[str, Any], model: str) -> list[str]:
    lines = [f"## {title}", ""]
    if schema.get("description"):
        lines += [schema["description"].strip(), ""]
    lines += ["| field | type | default | description |", "|---|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        desc = prop.get("description", "").replace("\n", " ").replace("|", "\\|")
        default = _default(prop, model, name, schema.get("required", []))
        lines.append(f"| `{name}` | {_type(prop, defs)} | {default} | {desc} |")
    return lines + [""]


def render() -> str:
    schema = policy_json_schema()
    defs = schema.get("$defs", {})
    out = ["# Policy reference", "",
           "Generated from the JSON Schema by `docs/gen_policy_reference.py` (do not edit by hand; "
           "`ironcage-jupyter policy schema` prints the schema itself). Unknown keys are errors everywhere.", ""]
    out += _table("Policy (top level)", schema, defs, "Policy")
    for name in sorted(defs):
        out += _table(name, defs[name], defs, name)
    return "\n".join(out)


if __name__ == "__main__":
    target = ROOT / "docs" / "policy-reference.md"
    target.write_text(render())
    print(f"wrote {target}")
