"""Helpers for tests that drive a real ironcage kernel through jupyter_client."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager


@dataclass
class Execution:
    reply: dict[str, Any]
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.reply["content"]["status"]

    def of_type(self, msg_type: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["header"]["msg_type"] == msg_type]

    @property
    def stdout(self) -> str:
        return "".join(m["content"]["text"] for m in self.of_type("stream") if m["content"]["name"] == "stdout")

    @property
    def stderr(self) -> str:
        return "".join(m["content"]["text"] for m in self.of_type("stream") if m["content"]["name"] == "stderr")

    @property
    def result(self) -> str | None:
        results = self.of_type("execute_result")
        return results[-1]["content"]["data"].get("text/plain") if results else None

    @property
    def error(self) -> dict[str, Any] | None:
        errors = self.of_type("error")
        return errors[-1]["content"] if errors else None

    @property
    def text(self) -> str:
        """Everything the user sees, as text: streams, results, displays and error tracebacks."""
        parts: list[str] = []
        for m in self.messages:
            c = m["content"]
            t = m["header"]["msg_type"]
            if t == "stream":
                parts.append(c["text"])
            elif t in ("execute_result", "display_data", "update_display_data"):
                parts.extend(str(v) for v in c.get("data", {}).values())
            elif t == "error":
                parts.append(c["ename"] + ": " + c["evalue"])
                parts.extend(c.get("traceback", []))
        return "\n".join(parts)


def execute(
    kc: BlockingKernelClient,
    code: str,
    *,
    timeout: float = 60,
    stdin_answers: list[str] | None = None,
    **kwargs: Any,
) -> Execution:
    """Run one cell and collect every iopub message of it until its idle status, plus the reply."""
    allow_stdin = stdin_answers is not None
    # Tests send cells back to back; with stop_on_error ipykernel may abort the next request when
    # it arrives before its internal "stop aborting" marker (plain ipykernel does the same).
    kwargs.setdefault("stop_on_error", False)
    msg_id = kc.execute(code, allow_stdin=allow_stdin, **kwargs)
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    answers = list(stdin_answers or [])
    idle = False
    while not idle:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no idle for {code!r}")
        if allow_stdin:
            try:
                req = kc.get_stdin_msg(timeout=0.05)
            except Exception:
                req = None
            if req is not None and req["parent_header"].get("msg_id") == msg_id:
                kc.input(answers.pop(0) if answers else "")
        try:
            msg = kc.get_iopub_msg(timeout=min(remaining, 0.1 if allow_stdin else remaining))
        except Exception:
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        messages.append(msg)
        if msg["header"]["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            idle = True
    reply = kc.get_shell_msg(timeout=max(deadline - time.monotonic(), 1))
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=max(deadline - time.monotonic(), 1))
    return Execution(reply=reply, messages=messages)


def start_kernel(
    workspace: Path,
    *,
    env: dict[str, str] | None = None,
    extra_arguments: list[str] | None = None,
    warm: bool = False,
) -> tuple[KernelManager, BlockingKernelClient]:
    """Start an ironcage kernel. With warm, also run one empty cell, so the child kernel and the
    components (which start after the first kernel_info reply) are up when this returns."""
    km = KernelManager(kernel_name="ironcage")
    full_env = dict(os.environ)
    full_env["IRONCAGE_WORKSPACE"] = str(workspace)
    full_env.update(env or {})
    km.start_kernel(cwd=str(workspace), env=full_env, extra_arguments=extra_arguments or [])
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    if warm:
        execute(kc, "", timeout=120)
    return km, kc


def stop_kernel(km: KernelManager, kc: BlockingKernelClient) -> None:
    kc.stop_channels()
    km.shutdown_kernel(now=False)


def status(kc: BlockingKernelClient) -> dict[str, Any]:
    ex = execute(kc, "%ironcage status --json")
    data = ex.of_type("display_data")[0]["content"]["data"]
    return data["application/json"]


def process_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        time.sleep(0.05)
    return not process_alive(pid)


def comm_request(kc: BlockingKernelClient, comm_id: str, data: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    """Send one comm_msg on ``comm_id`` and return the data of the kernel's next comm_msg on it."""
    kc.shell_channel.send(kc.session.msg("comm_msg", {"comm_id": comm_id, "data": data}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=deadline - time.monotonic())
        if msg["header"]["msg_type"] == "comm_msg" and msg["content"]["comm_id"] == comm_id:
            return msg["content"]["data"]
    raise TimeoutError("no comm reply")
