"""The ironcage.ui comm through the REAL wrapper kernel (jupyter_client, real child kernel)."""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from jupyter_client import BlockingKernelClient, KernelManager

from tests.kernel_helpers import start_kernel, stop_kernel

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    workspace = tmp_path_factory.mktemp("ws")
    km, kc = start_kernel(workspace, env={"IRONCAGE_POLICY": "observe",
                                          "IRONCAGE_AUDIT_DIR": str(workspace.parent / "audit")})
    yield km, kc
    stop_kernel(km, kc)


def _send(kc: BlockingKernelClient, msg_type: str, content: dict[str, Any], metadata: dict[str, Any] | None = None) -> str:
    msg = kc.session.msg(msg_type, content, metadata=metadata or {})
    kc.shell_channel.send(msg)
    return str(msg["header"]["msg_id"])


def _comm_msgs(kc: BlockingKernelClient, comm_id: str, until: Any, timeout: float = 30) -> list[dict[str, Any]]:
    """Collect this comm's messages from iopub until `until(data)` holds for one of them."""
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if msg["msg_type"] == "comm_msg" and msg["content"]["comm_id"] == comm_id:
            found.append(msg["content"]["data"])
            if until(msg["content"]["data"]):
                return found
    raise AssertionError(f"no matching comm message; got {found}")


def _open(kc: BlockingKernelClient) -> tuple[str, dict[str, Any]]:
    comm_id = uuid.uuid4().hex
    _send(kc, "comm_open", {"comm_id": comm_id, "target_name": "ironcage.ui",
                            "data": {"type": "hello", "protocol": 1}})
    status = _comm_msgs(kc, comm_id, lambda d: d["type"] == "status")[-1]
    return comm_id, status


def test_hello_status_and_cell_events(kernel: tuple[KernelManager, BlockingKernelClient]) -> None:
    _, kc = kernel
    comm_id, status = _open(kc)
    assert status["policy"] == "observe"
    assert status["isolation"] in ("all", "degraded", "unsafe")
    assert set(status["counts"]) == {"denied", "escalated", "redacted"}

    cell_id = "cell-" + uuid.uuid4().hex[:8]
    msg_id = _send(kc, "execute_request", {"code": "print(6 * 7)", "silent": False, "store_history": True,
                                           "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
                   metadata={"cellId": cell_id})
    received = _comm_msgs(kc, comm_id, lambda d: d["type"] == "cell_event")
    (event,) = [d for d in received if d["type"] == "cell_event"]
    assert event["cell_id"] == cell_id and event["msg_id"] == msg_id
    assert event["decision"] == "allow" and event["redacted"] == 0
    reply = kc.get_shell_msg(timeout=30)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=30)
    assert reply["content"]["status"] == "ok"

    # comm_info lists the UI comm; a malformed message gets an error, not a dead kernel.
    _send(kc, "comm_msg", {"comm_id": comm_id, "data": {"type": "launch"}})
    (error,) = [d for d in _comm_msgs(kc, comm_id, lambda d: d["type"] == "error") if d["type"] == "error"]
    assert error["code"] == "unknown_type"
    _send(kc, "comm_msg", {"comm_id": comm_id, "data": {"type": "escalation_answer", "id": "esc-x",
                                                        "answer": "once"}})
    assert _comm_msgs(kc, comm_id, lambda d: d["type"] == "error")[-1]["code"] == "unknown_escalation"
    kc.comm_info(target_name="ironcage.ui")
    info = kc.get_shell_msg(timeout=30)
    while info["msg_type"] != "comm_info_reply":
        info = kc.get_shell_msg(timeout=30)
    assert comm_id in info["content"]["comms"]

    _send(kc, "comm_close", {"comm_id": comm_id, "data": {}})
    ex_id = kc.execute("1 + 1")
    reply = kc.get_shell_msg(timeout=30)
    while reply["parent_header"].get("msg_id") != ex_id:
        reply = kc.get_shell_msg(timeout=30)
    assert reply["content"]["status"] == "ok"


def test_audit_request_answers_even_without_store(kernel: tuple[KernelManager, BlockingKernelClient]) -> None:
    _, kc = kernel
    comm_id, _ = _open(kc)
    _send(kc, "comm_msg", {"comm_id": comm_id, "data": {"type": "audit_request", "request_id": "r1", "limit": 5}})
    reply = _comm_msgs(kc, comm_id, lambda d: d.get("request_id") == "r1")[-1]
    # Either the audit store answers, or the panel is told plainly that it is unavailable.
    assert reply["type"] in ("audit_events", "error")
    if reply["type"] == "error":
        assert reply["code"] == "audit_unavailable"
    else:
        assert isinstance(reply["events"], list)



def test_refused_magic_cell_gets_a_denied_marker(kernel: tuple[KernelManager, BlockingKernelClient]) -> None:
    """A read-only violation in %%ironcage sql is a refusal by a check: the cell is marked like a
    denied code cell, with the rule and reason; a plain usage mistake is not marked as denied."""
    _, kc = kernel
    comm_id, _ = _open(kc)
    cell_id = "cell-" + uuid.uuid4().hex[:8]
    msg_id = _send(kc, "execute_request", {"code": "%%ironcage sql\nDELETE FROM events", "silent": False,
                                           "store_history": True, "user_expressions": {},
                                           "allow_stdin": False, "stop_on_error": True},
                   metadata={"cellId": cell_id})
    received = _comm_msgs(kc, comm_id, lambda d: d["type"] == "cell_event")
    (event,) = [d for d in received if d["type"] == "cell_event"]
    assert event["cell_id"] == cell_id and event["msg_id"] == msg_id
    assert event["decision"] == "deny" and event["rules"] == ["%ironcage sql"]
    assert event["reason"]
    reply = kc.get_shell_msg(timeout=30)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=30)
    assert reply["content"]["status"] == "error"

    usage_id = _send(kc, "execute_request", {"code": "%ironcage no-such-subcommand", "silent": False,
                                             "store_history": True, "user_expressions": {},
                                             "allow_stdin": False, "stop_on_error": True})
    reply = kc.get_shell_msg(timeout=30)
    while reply["parent_header"].get("msg_id") != usage_id:
        reply = kc.get_shell_msg(timeout=30)
    assert reply["content"]["ename"] == "UsageError"
    events = []
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except queue.Empty:
            break
        if msg["msg_type"] == "comm_msg" and msg["content"]["data"].get("type") == "cell_event":
            events.append(msg["content"]["data"])
    assert not events
    _send(kc, "comm_close", {"comm_id": comm_id, "data": {}})
