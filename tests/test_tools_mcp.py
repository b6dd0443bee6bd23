"""MCP servers through the broker: the npm reference filesystem server and a FastMCP-style server, each
running in its own bubblewrap sandbox; path attacks on MCP path arguments; unknown tools denied."""

from __future__ import annotations

import os
import shutil
import sys

import pytest
import pytest_asyncio
from tools_support import MCP_DIR, NPM_FS_SERVER, REPO

from ironcage_jupyter.tools.broker import ToolBroker
from ironcage_jupyter.tools.hooks import MemoryAudit, SettingsToolPolicy
from ironcage_jupyter.tools.mcp_proxy import McpProxy
from ironcage_jupyter.tools.models import ToolCall
from ironcage_jupyter.tools.settings import McpServerSettings, ToolSettings

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(not os.path.exists(NPM_FS_SERVER), reason="run `npm ci` in tests/mcp first"),
]
SECRET = "MCP-SECRET-DO-NOT-LEAK"
FS_ROLES = {
    "write_file": {"path": "write-path"},
    "edit_file": {"path": "write-path"},
    "create_directory": {"path": "write-path"},
    "move_file": {"source": "delete-path", "destination": "write-path"},
}


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    base = tmp_path_factory.mktemp("mcp")
    ws = base / "ws"
    ws.mkdir()
    (ws / "hello.txt").write_text("hello from the workspace")
    evil = base / "ws_evil"
    evil.mkdir()
    (evil / "loot.txt").write_text(SECRET)
    (base / "secret.txt").write_text(SECRET)
    os.symlink(base / "secret.txt", ws / "link_to_secret")
    return base, ws


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def broker(layout):
    base, ws = layout
    node = shutil.which("node")
    servers = {
        "files": McpServerSettings(command=node, args=[NPM_FS_SERVER, str(ws)],
                                   read_paths=[os.path.join(MCP_DIR, "node_modules")], write_paths=[str(ws)],
                                   roles=FS_ROLES),
        "demo": McpServerSettings(command=sys.executable, args=[os.path.join(MCP_DIR, "fastmcp_server.py")],
                                  read_paths=[sys.prefix, MCP_DIR, os.path.join(REPO, "ironcage_jupyter")],
                                  tools=["add", "read_secret_file", "whoami"],
                                  # `path` declared opaque on purpose: the server's own sandbox must hold.
                                  roles={"read_secret_file": {"path": "opaque"}}),
    }
    settings = ToolSettings(allow=["files.*", "demo.*"], mcp_servers=servers)
    audit = MemoryAudit()
    tool_broker = ToolBroker(policy=SettingsToolPolicy(settings), audit=audit)
    proxy = McpProxy(servers)
    failures = await proxy.start(tool_broker)
    assert failures == {}
    yield tool_broker
    await proxy.stop()


async def call(broker, name, **arguments):
    return await broker.call(ToolCall(name=name, arguments=arguments))


def text_of(outcome) -> str:
    return "".join(block.get("text", "") for block in outcome.result["content"])


async def test_tools_appear_as_server_dot_tool(broker):
    names = {s.name for s in broker.schemas()}
    assert {"files.read_text_file", "files.write_file", "files.list_directory", "demo.add"} <= names
    assert "demo.echo" not in names  # not exposed by the configuration
    schema = next(s for s in broker.schemas() if s.name == "files.read_text_file")
    assert schema.arguments["path"].role == "read-path" and schema.source == "mcp"


async def test_npm_filesystem_server_allowed_paths(broker, layout):
    _base, ws = layout
    read = await call(broker, "files.read_text_file", path=str(ws / "hello.txt"))
    assert read.ok and text_of(read) == "hello from the workspace"
    written = await call(broker, "files.write_file", path=str(ws / "new.txt"), content="written via MCP")
    assert written.ok and not written.result["is_error"], written
    assert (ws / "new.txt").read_text() == "written via MCP"
    listing = await call(broker, "files.list_directory", path=str(ws))
    assert "hello.txt" in text_of(listing)


@pytest.mark.parametrize(
    ("tool", "arguments", "rule"),
    [
        ("files.read_text_file", {"path": "/etc/passwd"}, "mcp.path_outside_allowed"),
        ("files.read_text_file", {"path": "{ws}/../secret.txt"}, "fs.traversal"),
        ("files.read_text_file", {"path": "{base}/ws_evil/loot.txt"}, "mcp.path_outside_allowed"),
        ("files.read_text_file", {"path": "{ws}/link_to_secret"}, "mcp.path_outside_allowed"),
        ("files.read_text_file", {"path": "{ws}/%2e%2e/secret.txt"}, "fs.encoded_path"),
        ("files.read_text_file", {"path": "file://{base}/secret.txt"}, "mcp.path_outside_allowed"),
        ("files.read_multiple_files", {"paths": ["{ws}/hello.txt", "{base}/secret.txt"]}, "mcp.path_outside_allowed"),
        ("files.move_file", {"source": "{ws}/hello.txt", "destination": "{base}/stolen.txt"}, "mcp.path_outside_allowed"),
        ("files.write_file", {"path": "{base}/ws_evil/x.txt", "content": "x"}, "mcp.path_outside_allowed"),
        ("files.read_text_file", {"path": "{ws}/hello.txt", "evil": True}, "schema.evil"),
        ("files.read_text_file", {"path": 42}, "schema.path"),
        ("files.delete_everything", {}, "invariant.unknown_tool"),
        ("demo.echo", {"text": "x"}, "invariant.unknown_tool"),
        ("demo.add", {"a": "1", "b": 2}, "schema.a"),
    ],
)
async def test_denied_mcp_calls(broker, layout, tool, arguments, rule):
    base, ws = layout

    def fill(value):
        if isinstance(value, str):
            return value.format(ws=ws, base=base)
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    outcome = await call(broker, tool, **{k: fill(v) for k, v in arguments.items()})
    assert not outcome.ok and outcome.refusal.rule == rule, outcome
    assert SECRET not in repr(outcome)
    assert not (base / "stolen.txt").exists() and (ws / "hello.txt").exists()


async def test_fastmcp_server(broker):
    added = await call(broker, "demo.add", a=2, b=40)
    assert added.ok and added.result["structured_content"] == {"result": 42}
    who = await call(broker, "demo.whoami")
    assert "no network" in text_of(who)  # its own sandbox has no network namespace to speak of


async def test_mcp_server_sandbox_holds_when_the_broker_lets_a_path_through(broker, layout):
    base, _ws = layout
    outcome = await call(broker, "demo.read_secret_file", path=str(base / "secret.txt"))
    assert outcome.ok and "No such file" in text_of(outcome)
    assert SECRET not in repr(outcome.result)


async def test_servers_that_cannot_start_are_reported_and_their_tools_unknown(tmp_path):
    servers = {
        "missing": McpServerSettings(command="/nonexistent/mcp-server"),
        "dies": McpServerSettings(command=shutil.which("false") or "/bin/false", timeout_s=10),
    }
    tool_broker = ToolBroker(policy=SettingsToolPolicy(ToolSettings(allow=["*"], mcp_servers=servers)),
                             audit=MemoryAudit())
    proxy = McpProxy(servers)
    failures = await proxy.start(tool_broker)
    await proxy.stop()
    assert set(failures) == {"missing", "dies"} and "not found" in failures["missing"]
    outcome = await call(tool_broker, "dies.anything")
    assert outcome.refusal.rule == "invariant.unknown_tool"
