"""Tool-call data crossing the trust boundary: calls, schemas with argument roles, outcomes.

Schema validation happens here, before anything else looks at a call: unknown arguments, missing
required ones and type mismatches are refused with the argument named.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .settings import ArgumentRole

Origin = Literal["cell", "comm", "magic", "cli"]
JsonType = Literal["string", "integer", "number", "boolean", "object", "array", "null"]
Effect = Literal["allow", "deny", "escalate"]

PATH_ROLES = ("read-path", "write-path", "delete-path")


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


class ToolCall(BaseModel):
    """One request to run a tool, as received from an untrusted channel."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    arguments: dict[str, Any] = Field(default_factory=dict)
    call_id: str = Field(default_factory=new_call_id, min_length=1, max_length=200)
    origin: Origin = "cell"
    cell_id: str | None = None


class ArgumentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    types: tuple[JsonType, ...] = ("string",)
    role: ArgumentRole = "opaque"
    required: bool = False
    items: JsonType | None = Field(default=None, description="Element type of an array argument.")
    enum: tuple[Any, ...] | None = None
    description: str = ""


class ToolSchema(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    arguments: dict[str, ArgumentSpec] = Field(default_factory=dict)
    source: Literal["builtin", "mcp"] = "builtin"
    server: str | None = None


class SchemaError(ValueError):
    """A call that does not match its tool's schema; `argument` names the culprit."""

    def __init__(self, argument: str | None, message: str) -> None:
        super().__init__(message)
        self.argument = argument


def _json_type_of(value: Any) -> JsonType | None:
    # bool is an int subclass in Python: check it first so True never passes as an integer.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return None


def _matches(value: Any, allowed: tuple[JsonType, ...]) -> bool:
    actual = _json_type_of(value)
    if actual is None:
        return False
    if actual in allowed:
        return True
    return actual == "integer" and "number" in allowed


def validate_arguments(schema: ToolSchema, arguments: dict[str, Any]) -> dict[str, Any]:
    """Return the arguments if they fit the schema exactly, else raise SchemaError."""
    if not isinstance(arguments, dict):
        raise SchemaError(None, "arguments must be a JSON object")
    unknown = sorted(set(arguments) - set(schema.arguments))
    if unknown:
        raise SchemaError(unknown[0], f"unknown argument(s) for {schema.name}: {', '.join(unknown)}")
    for name, spec in schema.arguments.items():
        if name not in arguments:
            if spec.required:
                raise SchemaError(name, f"missing required argument {name!r} for {schema.name}")
            continue
        value = arguments[name]
        if not _matches(value, spec.types):
            raise SchemaError(
                name,
                f"argument {name!r} of {schema.name} must be {' or '.join(spec.types)}, "
                f"got {_json_type_of(value) or type(value).__name__}",
            )
        if spec.items is not None and isinstance(value, list):
            for index, element in enumerate(value):
                if not _matches(element, (spec.items,)):
                    raise SchemaError(name, f"argument {name!r}[{index}] of {schema.name} must be {spec.items}")
        if spec.enum is not None and value not in spec.enum:
            raise SchemaError(name, f"argument {name!r} of {schema.name} must be one of {list(spec.enum)}")
    return arguments


_JSON_TYPES: tuple[JsonType, ...] = ("string", "integer", "number", "boolean", "object", "array", "null")


def _types_from_json_schema(prop: dict[str, Any]) -> tuple[JsonType, ...]:
    declared = prop.get("type")
    if isinstance(declared, str) and declared in _JSON_TYPES:
        return (declared,)  # type: ignore[return-value]
    if isinstance(declared, list):
        kept = tuple(t for t in declared if t in _JSON_TYPES)
        if kept:
            return kept  # type: ignore[return-value]
    for key in ("anyOf", "oneOf"):
        if isinstance(prop.get(key), list):
            found: list[JsonType] = []
            for option in prop[key]:
                if isinstance(option, dict):
                    found.extend(t for t in _types_from_json_schema(option) if t not in found)
            if found:
                return tuple(found)
    # No usable type: accept any JSON value; the server validates further.
    return _JSON_TYPES


_PATH_LIKE_NAMES = ("path", "paths", "source", "destination", "file", "filename", "dir", "directory", "root")


def guess_role(argument: str) -> ArgumentRole:
    """Role of an MCP argument nobody annotated: path-like names are paths (strictest useful reading)."""
    lowered = argument.lower()
    if lowered in _PATH_LIKE_NAMES or lowered.endswith(("_path", "path", "_dir", "_file")):
        return "read-path"
    if lowered in ("url", "uri") or lowered.endswith("_url"):
        return "url"
    return "opaque"


def schema_from_mcp(
    server: str, tool_name: str, description: str | None, input_schema: dict[str, Any], roles: dict[str, ArgumentRole]
) -> ToolSchema:
    properties = input_schema.get("properties") or {}
    required = set(input_schema.get("required") or [])
    arguments: dict[str, ArgumentSpec] = {}
    for arg_name, prop in properties.items():
        prop = prop if isinstance(prop, dict) else {}
        items = prop.get("items") if isinstance(prop.get("items"), dict) else None
        item_types = _types_from_json_schema(items) if items else None
        arguments[arg_name] = ArgumentSpec(
            name=arg_name,
            types=_types_from_json_schema(prop),
            role=roles.get(arg_name) or guess_role(arg_name),
            required=arg_name in required,
            items=item_types[0] if item_types and len(item_types) == 1 else None,
            enum=tuple(prop["enum"]) if isinstance(prop.get("enum"), list) else None,
            description=str(prop.get("description") or ""),
        )
    return ToolSchema(
        name=f"{server}.{tool_name}", description=description or "", arguments=arguments, source="mcp", server=server
    )


class RoledValue(BaseModel):
    """One argument value as the policy sees it: its role and canonical form."""

    model_config = ConfigDict(extra="forbid")

    argument: str
    role: ArgumentRole
    value: str
    canonical: str


class Refusal(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule: str
    reason: str
    stage: str


class ToolOutcome(BaseModel):
    """What the caller gets back: a result, or a refusal naming the rule and the reason."""

    model_config = ConfigDict(extra="forbid")

    call_id: str
    name: str
    ok: bool
    result: Any = None
    is_error: bool = False
    refusal: Refusal | None = None
    warnings: list[str] = Field(default_factory=list)
    redactions: list[dict[str, Any]] = Field(default_factory=list)

    def to_reply(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)
