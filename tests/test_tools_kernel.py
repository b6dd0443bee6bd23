"""Tools through a real wrapper kernel driven by jupyter_client: from a cell (sandbox client module and
egress through the proxy), from a comm client (`ironcage.tools`), and from the magics."""

from __future__ import annotations

import json
import socket
import sys
import uuid

import pytest
from tools_support import REPO, start_echo_server

from ironcage_jupyter.pipeline import CellRequest
from ironcage_jupyter.tools.hooks import MemoryAudit
from ironcage_jupyter.tools.kernel_glue import CellBudgetStage
from ironcage_jupyter.tools.session import ToolSession
from ironcage_jupyter.tools.settings import BudgetSettings
from kernel_helpers import comm_request, execute

KERNEL_NAME = "ironcage-tools-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def kernel(ironcage_jupyter_path, tmp_path_factory):
    from jupyter_client.manager import KernelManager

    spec_dir = ironcage_jupyter_path / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, f"{REPO}/tests/tools_kernel.py", "-f", "{connection_file}"],
        "display_name": "Iron Cage (tools test)", "language": "python", "interrupt_mode": "message",
        "env": {"PYTHONPATH": REPO},
    }))
    ws = tmp_path_factory.mktemp("kernel-ws")
    (ws / "data.txt").write_text("cell data")
    allowed, denied = start_echo_server("allowed"), start_echo_server("denied")
    config = {"tools": {"allow": ["fs.*"], "escalate": ["fs.write"]}, "egress_allowlist": [f"127.0.0.1:{allowed.port}"],
              "bridge_port": free_port()}
    km = KernelManager(kernel_name=KERNEL_NAME)
    import os

    env = {**os.environ, "IRONCAGE_WORKSPACE": str(ws), "IRONCAGE_TOOLS_TEST_CONFIG": json.dumps(config)}
    km.start_kernel(cwd=str(ws), env=env)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    yield kc, allowed, denied
    kc.stop_channels()
    km.shutdown_kernel(now=False)
    allowed.close()
    denied.close()


@pytest.fixture(scope="module")
def plain_kernel(ironcage_jupyter_path, tmp_path_factory):
    """The product kernel itself (kernelspec `ironcage`), no test subclass: under a policy without tool
    rules, every tool is denied by default."""
    from kernel_helpers import start_kernel, stop_kernel

    ws = tmp_path_factory.mktemp("plain-ws")
    (ws / "data.txt").write_text("cell data")
    policy = ws.parent / "no-tool-rules.yaml"
    policy.write_text("name: no-tool-rules\nrules:\n  - {id: cells, subject: cell, effect: allow}\n"
                      "  - {id: findings, subject: cell, effect: allow, match: {severities: [low, medium, high]}}\n")
    km, kc = start_kernel(ws, env={"IRONCAGE_POLICY": str(policy)})
    yield kc
    stop_kernel(km, kc)


def test_product_kernel_wires_tools(plain_kernel):
    kc = plain_kernel
    code = ("import os\nfrom ironcage_jupyter.sandbox import tools\n"
            "print(os.environ['IRONCAGE_TOOLS_SOCKET'])\n"
            "print(sorted(t['name'] for t in tools.list()))\n"
            "try:\n    tools.call('fs.read', path='data.txt')\nexcept tools.ToolRefused as e:\n    print(e.rule)\n")
    ex = execute(kc, code)
    assert ex.status == "ok", ex.text
    socket_path, names, rule = ex.stdout.strip().split("\n")
    assert socket_path.endswith("/tools.sock") and "ironcage-" in socket_path  # inside the child's runtime dir
    assert names == "['fs.list', 'fs.read', 'fs.write', 'http.request']"
    assert rule == "default.deny"
    ex = execute(kc, "%ironcage tools")
    assert ex.status == "ok" and "default.deny" in ex.text
    ex = execute(kc, "%ironcage status --json")
    info = ex.of_type("display_data")[0]["content"]["data"]["application/json"]
    assert info["tools"]["tools"] == 4 and info["tools"]["egress"] is False
    comm_id = uuid.uuid4().hex
    kc.shell_channel.send(kc.session.msg("comm_open", {"comm_id": comm_id, "target_name": "ironcage.tools",
                                                       "data": {}}))
    reply = comm_request(kc, comm_id, {"op": "call", "name": "fs.read", "arguments": {"path": "data.txt"}}, timeout=30)
    assert not reply["ok"] and reply["refusal"]["rule"] == "default.deny"


def test_tool_call_from_a_cell(kernel):
    kc, _allowed, _denied = kernel
    ex = execute(kc, "from ironcage_jupyter.sandbox import tools\nprint(tools.call('fs.read', path='data.txt')['content'])")
    assert ex.status == "ok", ex.text
    assert ex.stdout.strip() == "cell data"
    ex = execute(kc, "tools.call('fs.read', path='/etc/shadow')")
    assert ex.status == "error" and ex.error["ename"] == "ToolRefused"
    assert "fs.outside_roots" in ex.error["evalue"]


def test_escalated_tool_call_asks_the_human(kernel):
    kc, _allowed, _denied = kernel
    code = ("from ironcage_jupyter.sandbox import tools\n"
            "try:\n    print(tools.call('fs.write', path='approved.txt', content='yes')['bytes_written'])\n"
            "except tools.ToolRefused as e:\n    print(e.rule)\n")
    ex = execute(kc, code, stdin_answers=["y"])
    assert ex.status == "ok" and ex.stdout.strip() == "3", ex.text
    ex = execute(kc, code.replace("approved", "rejected"), stdin_answers=["n"])
    assert "escalation.rejected" in ex.stdout
    ex = execute(kc, code.replace("approved", "nostdin"))  # the request does not allow stdin: no one to ask
    assert "escalation.rejected" in ex.stdout


def test_egress_from_a_cell_goes_through_the_proxy(kernel):
    kc, allowed, denied = kernel
    code = (
        "import urllib.request, urllib.error, os\n"
        f"r = urllib.request.urlopen('http://127.0.0.1:{allowed.port}/from-cell', timeout=20)\n"
        "print(r.status, os.environ['HTTP_PROXY'])\n"
        "try:\n"
        f"    urllib.request.urlopen('http://127.0.0.1:{denied.port}/', timeout=20)\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code, e.headers['X-Ironcage-Rule'])\n"
    )
    before = len(denied.seen)
    ex = execute(kc, code)
    assert ex.status == "ok", ex.text
    lines = ex.stdout.split("\n")
    assert lines[0].startswith("200 http://127.0.0.1:")
    assert lines[1] == "403 network.not_allowed"
    assert allowed.seen[-1]["path"] == "/from-cell" and len(denied.seen) == before


def test_tool_call_from_a_comm_client(kernel):
    kc, _allowed, _denied = kernel
    comm_id = uuid.uuid4().hex
    kc.shell_channel.send(kc.session.msg("comm_open", {"comm_id": comm_id, "target_name": "ironcage.tools",
                                                       "data": {}}))
    listing = comm_request(kc, comm_id, {"op": "list", "id": 1}, timeout=30)
    assert listing["ok"] and listing["id"] == 1 and "fs.read" in {t["name"] for t in listing["tools"]}
    reply = comm_request(kc, comm_id, {"op": "call", "name": "fs.read", "arguments": {"path": "data.txt"},
                                        "call_id": "agent-7", "id": 2}, timeout=30)
    assert reply["ok"] and reply["call_id"] == "agent-7" and reply["result"]["content"] == "cell data"
    refused = comm_request(kc, comm_id, {"op": "call", "name": "fs.write",
                                          "arguments": {"path": "x", "content": "y", "mode": 1}, "id": 3}, timeout=30)
    assert not refused["ok"] and refused["refusal"]["rule"] == "schema.mode"
    info = kc.comm_info(target_name="ironcage.tools", reply=True)
    assert comm_id in info["content"]["comms"]
    kc.shell_channel.send(kc.session.msg("comm_close", {"comm_id": comm_id, "data": {}}))


def test_magics(kernel):
    kc, _allowed, _denied = kernel
    ex = execute(kc, "%ironcage tools")
    assert ex.status == "ok" and "fs.read" in ex.text and "default.deny" in ex.text  # http.request: no allow rule
    ex = execute(kc, "%ironcage tool fs.read --args '{\"path\": \"data.txt\"}'")
    assert ex.status == "ok" and "cell data" in ex.text
    ex = execute(kc, "%ironcage tool http.request --args '{\"url\": \"http://example.com/\"}'")
    assert ex.status == "error" and "network.not_allowed" in ex.text


async def test_cell_budget_stage_blocks_with_the_rule():
    session = ToolSession(budgets=BudgetSettings(cells_per_minute=2), audit=MemoryAudit())
    stage = CellBudgetStage(session)
    cells = [CellRequest(code="1", silent=False, store_history=True, user_expressions={}, allow_stdin=False,
                         cell_id=str(i), metadata={}, execution_count=i) for i in range(3)]
    for cell in cells:
        await stage.run(cell)
    assert [c.block is None for c in cells] == [True, True, False]
    assert cells[2].block.rule == "budget.cells_per_minute"
    assert session.audit.events[-1]["event_type"] == "policy_decision"
    assert session.audit.events[-1]["rule"] == "budget.cells_per_minute"
    await session.close()
