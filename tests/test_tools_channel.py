"""Channels into the broker: the Unix socket used by `ironcage_jupyter.sandbox.tools` in a real child
process, the comm request handler, the magics and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile

from tools_support import REPO

from ironcage_jupyter.tools.hooks import MemoryAudit
from ironcage_jupyter.tools.session import ToolSession
from ironcage_jupyter.tools.settings import BudgetSettings, ToolSettings

CHILD = r"""
import json, sys
from ironcage_jupyter.sandbox import tools
out = {"names": [t["name"] for t in tools.list()]}
out["read"] = tools.call("fs.read", path="data.txt")["content"]
try:
    tools.call("fs.read", path="../outside.txt")
except tools.ToolRefused as exc:
    out["refused"] = [exc.rule, exc.reason]
try:
    tools.call("fs.read", path="data.txt", bogus=1)
except tools.ToolRefused as exc:
    out["schema"] = exc.rule
try:
    tools.call("nope.tool")
except tools.ToolRefused as exc:
    out["unknown"] = exc.rule
print(json.dumps(out))
"""


async def make_session(tmp_path, **kwargs):
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    (ws / "data.txt").write_text("cell data")
    (tmp_path / "outside.txt").write_text("outside")
    audit = MemoryAudit()
    settings = kwargs.pop("settings", None) or ToolSettings(allow=["fs.*"])
    session = ToolSession(settings, kwargs.pop("budgets", None), audit=audit, workspace=str(ws), **kwargs)
    socket_dir = tempfile.mkdtemp(prefix="ironcage-ipc-")
    await session.start(socket_dir, egress=False)
    return session, audit, ws


async def test_sandbox_client_in_a_real_child_process(tmp_path):
    session, audit, ws = await make_session(tmp_path)
    try:
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO, **session.child_environment()}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, cwd=str(ws), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, stderr.decode()
        out = json.loads(stdout)
        assert out["names"] == ["fs.list", "fs.read", "fs.write", "http.request"]
        assert out["read"] == "cell data"
        assert out["refused"][0] == "fs.traversal"
        assert out["schema"] == "schema.bogus"
        assert out["unknown"] == "invariant.unknown_tool"
        kinds = {(e["event_type"], e["decision"]) for e in audit.events}
        assert ("policy_decision", "allow") in kinds and ("tool_call", None) in kinds and ("tool_call", "deny") in kinds
    finally:
        await session.close()


async def test_socket_survives_malformed_input(tmp_path):
    session, _audit, _ws = await make_session(tmp_path)
    try:
        reader, writer = await asyncio.open_unix_connection(session.channel.path)
        replies = []
        for line in (b"not json\n", b"[1,2]\n", b'{"op": "explode"}\n', b'{"name": 5}\n',
                     b'{"op": "call", "name": "fs.read", "arguments": {"path": "data.txt"}, "id": 7}\n'):
            writer.write(line)
            await writer.drain()
            replies.append(json.loads(await reader.readline()))
        writer.close()
        assert [r["ok"] for r in replies] == [False, False, False, False, True]
        assert "malformed JSON" in replies[0]["refusal"]["reason"]
        assert replies[4]["id"] == 7 and replies[4]["result"]["content"] == "cell data"
    finally:
        await session.close()


async def test_comm_requests(tmp_path):
    session, audit, _ws = await make_session(tmp_path)
    try:
        listing = await session.handle_comm_request({"op": "list"})
        assert listing["ok"] and {t["name"] for t in listing["tools"]} >= {"fs.read"}
        reply = await session.handle_comm_request(
            {"op": "call", "name": "fs.read", "arguments": {"path": "data.txt"}, "call_id": "agent-1"})
        assert reply["ok"] and reply["call_id"] == "agent-1" and reply["result"]["content"] == "cell data"
        denied = await session.handle_comm_request({"name": "http.request", "arguments": {"url": "http://x/"}})
        assert not denied["ok"] and denied["refusal"]["rule"] == "network.not_allowed"
        bad = await session.handle_comm_request("not a dict")
        assert not bad["ok"]
        assert audit.events[-1]["detail"]["gen_ai.tool.name"] == "?"  # the malformed request, refused
    finally:
        await session.close()


async def test_magics_and_table(tmp_path):
    session, _audit, _ws = await make_session(
        tmp_path, settings=ToolSettings(allow=["fs.read"], escalate=["fs.write"]),
        budgets=BudgetSettings(total_tool_calls=2))
    try:
        table = await session.run_magic("tools")
        text = table["data"]["text/plain"]
        assert "fs.read" in text and "allow" in text and "escalate" in text and "default.deny" in text
        assert table["data"]["text/html"].startswith("<table")
        ok = await session.run_magic('tool fs.read --args \'{"path": "data.txt"}\'')
        assert ok["ok"] and "cell data" in ok["data"]["text/plain"]
        refused = await session.run_magic('tool fs.write --args \'{"path": "x", "content": "y"}\'')
        assert not refused["ok"] and "escalation.no_handler" in refused["data"]["text/plain"]
        usage = await session.run_magic("tool fs.read --args '[1]'")
        assert not usage["ok"] and "usage" in usage["data"]["text/plain"]
        over = await session.run_magic('tool fs.read --args \'{"path": "data.txt"}\'')
        assert "budget.total_tool_calls" in over["data"]["text/plain"]
    finally:
        await session.close()


def test_cli_list_and_call(tmp_path):
    (tmp_path / "f.txt").write_text("from cli")
    config = tmp_path / "policy.yaml"
    config.write_text("tools:\n  allow: ['fs.*']\nnetwork:\n  allow: ['example.com']\n")
    env = {**os.environ, "PYTHONPATH": REPO}
    base = [sys.executable, "-m", "ironcage_jupyter.tools.cli", "tools"]
    listing = subprocess.run([*base, "list", "--config", str(config), "--json"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    rows = {r["name"]: r["policy"]["effect"] for r in json.loads(listing.stdout)}
    assert rows["fs.read"] == "allow" and rows["http.request"] == "deny"
    ok = subprocess.run([*base, "call", "fs.read", "--args", '{"path": "f.txt"}', "--config", str(config)],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and json.loads(ok.stdout)["result"]["content"] == "from cli"
    no = subprocess.run([*base, "call", "http.request", "--args", '{"url": "http://127.0.0.1/"}', "--config",
                         str(config)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert no.returncode == 1 and json.loads(no.stdout)["refusal"]["rule"] == "network.not_allowed"
    bad = subprocess.run([*base, "call", "fs.read", "--args", "{oops", "--config", str(config)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr
