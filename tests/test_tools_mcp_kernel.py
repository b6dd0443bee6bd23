"""An MCP server with its own network allowlist, end to end through the product kernel (`ironcage`
kernelspec, jupyter_client): the policy file names a real FastMCP server with ``allowed_hosts``, a
client calls it over the kernel's ``ironcage.tools`` comm, the sandboxed server reaches the allowed
HTTP server on 127.0.0.1 through its own egress proxy and is refused another one, and both decisions
are in the session's DuckDB audit log with the server's name."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest
from tools_support import MCP_DIR, start_echo_server

from ironcage_jupyter.audit import AuditQuery
from kernel_helpers import comm_request, execute, start_kernel, status, stop_kernel

pytestmark = pytest.mark.timeout(240)

POLICY = """
name: mcp-kernel-test
rules:
  - {id: cells, subject: cell, effect: allow}
  - {id: findings, subject: cell, effect: allow, match: {severities: [low, medium, high]}}
  - id: allow-net-server
    subject: tool
    effect: allow
    match: {tools: ["net.*"]}
tools:
  mcp_servers:
    net:
      command: {python}
      args: [{server}]
      read_paths: [{mcp_dir}]
      tools: [fetch]
      roles: {fetch: {url: opaque}}
      allowed_hosts: ["127.0.0.1:{allowed}"]
"""


def _text(reply: dict) -> str:
    assert reply["ok"], reply
    return "".join(block.get("text", "") for block in reply["result"]["content"])


def test_mcp_server_hosts_through_the_kernels_tool_comm(tmp_path):
    allowed, other = start_echo_server("allowed"), start_echo_server("other")
    workspace, audit_dir = tmp_path / "ws", tmp_path / "audit"
    workspace.mkdir()
    policy = tmp_path / "mcp-kernel-test.yaml"
    policy.write_text(
        POLICY.replace("{python}", sys.executable)
        .replace("{server}", os.path.join(MCP_DIR, "fastmcp_server.py"))
        .replace("{mcp_dir}", MCP_DIR)
        .replace("{allowed}", str(allowed.port))
    )
    km, kc = start_kernel(workspace, env={"IRONCAGE_POLICY": str(policy), "IRONCAGE_AUDIT_DIR": str(audit_dir)},
                          warm=True)
    try:
        info = status(kc)
        assert info["policy"] == "mcp-kernel-test" and info["tools"]["mcp_failures"] == {}, info["tools"]
        session = info["audit"]["session_id"]
        comm_id = uuid.uuid4().hex
        kc.shell_channel.send(kc.session.msg("comm_open", {"comm_id": comm_id, "target_name": "ironcage.tools",
                                                           "data": {}}))
        listing = comm_request(kc, comm_id, {"op": "list", "id": 1}, timeout=120)
        assert listing["ok"] and "net.fetch" in {t["name"] for t in listing["tools"]}, listing
        reached = _text(comm_request(kc, comm_id, {"op": "call", "name": "net.fetch", "id": 2, "call_id": "ok-1",
                                                 "arguments": {"url": f"http://127.0.0.1:{allowed.port}/hello"}}, timeout=120))
        assert reached.startswith("200 ") and '"server": "allowed"' in reached and '"path": "/hello"' in reached
        assert [seen["path"] for seen in allowed.seen] == ["/hello"]
        refused = _text(comm_request(kc, comm_id, {"op": "call", "name": "net.fetch", "id": 3, "call_id": "no-1",
                                                 "arguments": {"url": f"http://127.0.0.1:{other.port}/steal"}}, timeout=120))
        assert refused == "refused 403 invariant.restricted-address", refused
        assert other.seen == []  # nothing reached the server the policy does not name
        assert execute(kc, "print('kernel still answers')").stdout == "kernel still answers\n"
    finally:
        stop_kernel(km, kc)
        allowed.close()
        other.close()
    with AuditQuery(Path(audit_dir)) as query:
        network = query.run_trusted(
            "SELECT decision, detail->>'target', detail->>'server', reason FROM decisions "
            "WHERE session_id = ? AND detail->>'subject' = 'network' ORDER BY seq", [session]).rows
        calls = query.run_trusted(
            "SELECT name, decision FROM events WHERE session_id = ? AND event_type = 'tool_call' ORDER BY seq",
            [session]).rows
    assert ("allow", f"127.0.0.1:{allowed.port}", "net") in [r[:3] for r in network], network
    assert ("deny", f"127.0.0.1:{other.port}", "net") in [r[:3] for r in network], network
    assert all("MCP server net" in r[3] for r in network), network
    assert [name for name, _ in calls].count("net.fetch") >= 2, calls
