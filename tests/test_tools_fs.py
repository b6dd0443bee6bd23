"""Attacks on fs.read / fs.write / fs.list: traversal, symlinks, prefix confusion, encodings, hard links,
protected paths, and a symlink-swap race that must leak nothing."""

from __future__ import annotations

import os
import threading

import pytest

from ironcage_jupyter.tools.broker import ToolBroker
from ironcage_jupyter.tools.builtin import register_builtins
from ironcage_jupyter.tools.errors import ToolExecutionError, ToolRefusal
from ironcage_jupyter.tools.fs import ConfinedFs, FsRoot
from ironcage_jupyter.tools.hooks import MemoryAudit, SettingsToolPolicy
from ironcage_jupyter.tools.models import ToolCall
from ironcage_jupyter.tools.settings import ToolSettings

SECRET = "TOP-SECRET-VALUE"


@pytest.fixture
def layout(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("hello")
    (ws / "sub").mkdir()
    (ws / "sub" / "inner.txt").write_text("inner")
    evil = tmp_path / "ws_evil"
    evil.mkdir()
    (evil / "loot.txt").write_text(SECRET)
    (tmp_path / "secret.txt").write_text(SECRET)
    protected = ws / ".ironcage"
    protected.mkdir()
    (protected / "policy.yaml").write_text(SECRET)
    ro = tmp_path / "data"
    ro.mkdir()
    (ro / "table.csv").write_text("a,b")
    fs = ConfinedFs([FsRoot(str(ws), True), FsRoot(str(ro), False)], protected=[str(protected)])
    return tmp_path, ws, fs


def refused(fn, *args, **kwargs) -> str:
    with pytest.raises(ToolRefusal) as info:
        fn(*args, **kwargs)
    return info.value.rule


def test_reads_inside_roots(layout):
    tmp, ws, fs = layout
    assert fs.read("notes.txt")["content"] == "hello"
    assert fs.read(str(ws / "sub" / "inner.txt"))["content"] == "inner"
    assert fs.read(f"file://{ws}/notes.txt")["content"] == "hello"
    assert fs.read(str(tmp / "data" / "table.csv"))["content"] == "a,b"
    assert [e["name"] for e in fs.list("sub")["entries"]] == ["inner.txt"]
    (ws / "a%20b.txt").write_text("literal")  # harmless escapes stay literal file names
    assert fs.read("a%20b.txt")["content"] == "literal"


@pytest.mark.parametrize(
    ("path_template", "rule"),
    [
        ("../secret.txt", "fs.traversal"),
        ("sub/../../secret.txt", "fs.traversal"),
        ("{tmp}/secret.txt", "fs.outside_roots"),
        ("{tmp}/ws_evil/loot.txt", "fs.outside_roots"),  # prefix confusion: /ws_evil is not in /ws
        ("{tmp}/ws/../secret.txt", "fs.traversal"),
        ("%2e%2e/secret.txt", "fs.encoded_path"),
        ("..%2fsecret.txt", "fs.encoded_path"),
        ("%252e%252e/secret.txt", "fs.encoded_path"),  # double encoding
        ("sub%2F..%2F..%2Fsecret.txt", "fs.encoded_path"),
        ("file://{tmp}/ws/%2e%2e/secret.txt", "fs.traversal"),
        ("file://{tmp}/secret.txt", "fs.outside_roots"),
        ("file://evil.example/{tmp}/ws/notes.txt", "fs.encoded_path"),
        ("notes.txt\x00.png", "fs.encoded_path"),
        ("~/.ssh/id_rsa", "fs.outside_roots"),
        ("/proc/self/root/{tmp}/secret.txt", "fs.outside_roots"),
        (".ironcage/policy.yaml", "invariant.protected_path"),
        ("{tmp}/ws/.ironcage/policy.yaml", "invariant.protected_path"),
    ],
)
def test_escapes_are_refused(layout, path_template, rule):
    tmp, _ws, fs = layout
    path = path_template.format(tmp=tmp)
    assert refused(fs.read, path) == rule


def test_symlinks_are_refused_even_inside(layout):
    tmp, ws, fs = layout
    os.symlink(tmp / "secret.txt", ws / "link_out")
    os.symlink(ws / "notes.txt", ws / "link_in")
    os.symlink(tmp, ws / "dirlink")
    os.symlink("/proc/self/root", ws / "magic")
    assert refused(fs.read, "link_out") == "fs.symlink"
    assert refused(fs.read, "link_in") == "fs.symlink"
    assert refused(fs.read, "dirlink/secret.txt") == "fs.symlink"
    assert refused(fs.list, "dirlink") == "fs.symlink"
    assert refused(fs.read, f"magic{tmp}/secret.txt") == "fs.symlink"
    # writing through a symlink must not create or change the target outside
    os.symlink(tmp / "created_outside.txt", ws / "dangling")
    assert refused(fs.write, "dangling", "pwned") == "fs.symlink"
    assert not (tmp / "created_outside.txt").exists()
    assert refused(fs.write, "dirlink/secret.txt", "pwned") == "fs.symlink"
    assert (tmp / "secret.txt").read_text() == SECRET


def test_hard_links_are_refused(layout):
    tmp, ws, fs = layout
    os.link(tmp / "secret.txt", ws / "hard.txt")
    assert refused(fs.read, "hard.txt") == "fs.hard_link"
    assert refused(fs.write, "hard.txt", "overwrite") == "fs.hard_link"
    assert (tmp / "secret.txt").read_text() == SECRET  # not truncated, not changed


def test_writes(layout):
    tmp, ws, fs = layout
    fs.write("new.txt", "one")
    fs.write("new.txt", "two", append=True)
    assert (ws / "new.txt").read_text() == "onetwo"
    fs.write("new.txt", "x")
    assert (ws / "new.txt").read_text() == "x"
    assert refused(fs.write, str(tmp / "data" / "table.csv"), "x") == "fs.read_only_root"
    assert refused(fs.write, "../escape.txt", "x") == "fs.traversal"
    with pytest.raises(ToolExecutionError):
        fs.write("missing_dir/x.txt", "x")


def test_nested_read_only_root_stays_read_only(tmp_path):
    ws = tmp_path / "ws"
    (ws / "reference").mkdir(parents=True)
    (ws / "reference" / "ref.txt").write_text("original")
    fs = ConfinedFs([FsRoot(str(ws), True), FsRoot(str(ws / "reference"), False)])
    assert refused(fs.write, str(ws / "reference" / "ref.txt"), "changed") == "fs.read_only_root"
    assert refused(fs.write, "reference/ref.txt", "changed") == "fs.read_only_root"
    assert (ws / "reference" / "ref.txt").read_text() == "original"
    fs.write(str(ws / "other.txt"), "fine")
    assert fs.read("reference/ref.txt")["content"] == "original"


def test_special_files_do_not_block(layout):
    _tmp, ws, fs = layout
    os.mkfifo(ws / "pipe")
    with pytest.raises(ToolExecutionError, match="not a regular file"):
        fs.read("pipe")  # O_NONBLOCK: a FIFO with no writer must not hang the wrapper


def test_symlink_swap_race_leaks_nothing(layout):
    """A thread flips `ws/race` between a regular file and a symlink to the secret while we read it."""
    tmp, ws, fs = layout
    target = ws / "race"
    stop = threading.Event()

    def flipper() -> None:
        scratch_file = ws / "race.file"
        scratch_link = ws / "race.link"
        while not stop.is_set():
            scratch_file.write_text("harmless")
            os.replace(scratch_file, target)
            if scratch_link.is_symlink():
                scratch_link.unlink()
            os.symlink(tmp / "secret.txt", scratch_link)
            os.replace(scratch_link, target)

    thread = threading.Thread(target=flipper)
    thread.start()
    leaks = reads = refusals = 0
    try:
        for _ in range(3000):
            try:
                content = fs.read("race")["content"]
            except (ToolRefusal, ToolExecutionError):
                refusals += 1
                continue
            reads += 1
            leaks += SECRET in content
    finally:
        stop.set()
        thread.join()
    assert leaks == 0
    assert reads > 0 and refusals > 0  # both states were really hit


async def test_fs_through_the_broker_audits_refusals(layout):
    tmp, ws, fs = layout
    audit = MemoryAudit()
    broker = ToolBroker(policy=SettingsToolPolicy(ToolSettings(allow=["fs.*"])), audit=audit)
    register_builtins(broker, enabled=["fs.read", "fs.write", "fs.list"], fs=fs, http=None)
    ok = await broker.call(ToolCall(name="fs.read", arguments={"path": "notes.txt"}))
    assert ok.ok and ok.result["content"] == "hello"
    bad = await broker.call(ToolCall(name="fs.read", arguments={"path": f"{tmp}/ws_evil/loot.txt"}))
    assert bad.refusal.rule == "fs.outside_roots" and bad.refusal.stage == "roles"
    os.symlink(tmp / "secret.txt", ws / "s")
    sym = await broker.call(ToolCall(name="fs.read", arguments={"path": "s"}))
    assert sym.refusal.rule == "fs.symlink" and sym.refusal.stage == "execution"
    assert SECRET not in repr(audit.events)
    calls = [e for e in audit.events if e["event_type"] == "tool_call"]
    assert [(e["decision"], e["detail"]["status"]) for e in calls] == [(None, "ok"), ("deny", "denied"),
                                                                      ("deny", "denied")]
