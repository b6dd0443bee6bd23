"""Tool calls from code inside the sandbox: `from ironcage_jupyter.sandbox import tools`.

    tools.list()                              -> the tools available, with roles and the policy's view
    tools.call("fs.read", path="data.csv")   -> the tool's result, or raises ToolRefused(rule, reason)

Talks JSON lines to the wrapper over the Unix socket named by $IRONCAGE_TOOLS_SOCKET (its directory
is bound into the sandbox). Standard library only: this module runs in the untrusted child, which
decides nothing; the wrapper validates, decides, executes and audits every call.
"""

from __future__ import annotations

import builtins
import json
import os
import socket
import uuid
from typing import Any

SOCKET_ENV = "IRONCAGE_TOOLS_SOCKET"
DEFAULT_TIMEOUT_S = 330.0  # above the wrapper's escalation timeout: a human may be asked


class ToolRefused(Exception):
    """The wrapper refused the call (policy, schema, budget, ...); `rule` and `reason` say why."""

    def __init__(self, rule: str, reason: str, stage: str = "") -> None:
        super().__init__(f"{reason} (rule {rule})")
        self.rule = rule
        self.reason = reason
        self.stage = stage


class ToolChannelUnavailable(ConnectionError):
    """No tool channel: not running under Iron Cage, or the wrapper is gone."""


def _request(payload: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    path = os.environ.get(SOCKET_ENV)
    if not path:
        raise ToolChannelUnavailable(f"${SOCKET_ENV} is not set: tools are only available under Iron Cage")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            raise ToolChannelUnavailable(f"cannot reach the tool channel at {path}: {exc}") from None
        sock.sendall(json.dumps(payload).encode() + b"\n")
        chunks = []
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            if chunk.endswith(b"\n"):
                break
    data = b"".join(chunks)
    if not data:
        raise ToolChannelUnavailable("the tool channel closed without a reply")
    return json.loads(data)


def call(name: str, /, *, timeout: float | None = DEFAULT_TIMEOUT_S, **arguments: Any) -> Any:
    """Run tool `name` with keyword arguments through the wrapper; returns its result."""
    call_id = "call_" + uuid.uuid4().hex[:24]
    reply = _request({"op": "call", "name": name, "arguments": arguments, "call_id": call_id}, timeout)
    if not reply.get("ok"):
        refusal = reply.get("refusal") or {}
        raise ToolRefused(
            refusal.get("rule", "unknown"), refusal.get("reason", "refused"), refusal.get("stage", "")
        )
    for warning in reply.get("warnings") or ():
        import warnings

        warnings.warn(f"Iron Cage: {warning}", RuntimeWarning, stacklevel=2)
    return reply.get("result")


def list(timeout: float | None = 30.0) -> builtins.list[dict[str, Any]]:  # noqa: A001 - the API the issue names
    """The tools available to this session and what the policy would do with each."""
    reply = _request({"op": "list"}, timeout)
    if not reply.get("ok"):
        refusal = reply.get("refusal") or {}
        raise ToolRefused(refusal.get("rule", "unknown"), refusal.get("reason", "refused"))
    return reply["tools"]
