"""End-to-end behaviour of the wrapper kernel with real clients and a real child ipykernel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from kernel_helpers import execute, process_alive, start_kernel, status, stop_kernel, wait_gone

pytestmark = pytest.mark.usefixtures("ironcage_jupyter_path")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("workspace")


@pytest.fixture(scope="module")
def kernel(workspace: Path) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    km, kc = start_kernel(workspace, env={"IRONCAGE_TEST_WRAPPER_SECRET": "wrapper-only-value-8d1f"}, warm=True)
    yield km, kc
    stop_kernel(km, kc)


def test_wrapper_environment_is_not_visible_in_the_child(kernel):
    _, kc = kernel
    ex = execute(kc, "import os; print(sorted(os.environ)); print(os.environ.get('IRONCAGE_TEST_WRAPPER_SECRET'))")
    assert ex.status == "ok"
    assert "IRONCAGE_TEST_WRAPPER_SECRET" not in ex.stdout
    assert "wrapper-only-value-8d1f" not in ex.stdout
    assert ex.stdout.strip().endswith("None")


def test_code_runs_in_a_child_process_not_the_wrapper(kernel):
    km, kc = kernel
    info = status(kc)
    ex = execute(kc, "import os; print(os.getpid())")
    child_pid = int(ex.stdout.strip())
    assert child_pid != info["wrapper_pid"]
    assert info["transport"] == "ipc"
    runtime = Path(info["runtime_dir"])
    assert runtime.stat().st_mode & 0o777 == 0o700
    conn = json.loads((runtime / "connection.json").read_text())
    assert conn["transport"] == "ipc"


def test_one_busy_idle_pair_and_no_child_status(kernel):
    _, kc = kernel
    ex = execute(kc, "print('a'); 40 + 2")
    states = [m["content"]["execution_state"] for m in ex.of_type("status")]
    assert states == ["busy", "idle"]
    inputs = ex.of_type("execute_input")
    assert len(inputs) == 1
    count = ex.reply["content"]["execution_count"]
    assert inputs[0]["content"]["execution_count"] == count
    assert ex.of_type("execute_result")[0]["content"]["execution_count"] == count
    assert ex.result == "42"


def test_execution_count_is_renumbered_across_magics(kernel):
    _, kc = kernel
    first = execute(kc, "1").reply["content"]["execution_count"]
    execute(kc, "%ironcage status")
    third = execute(kc, "3")
    assert third.reply["content"]["execution_count"] == first + 2
    assert third.of_type("execute_result")[0]["content"]["execution_count"] == first + 2


def test_rich_outputs_update_and_clear(kernel):
    _, kc = kernel
    ex = execute(
        kc,
        "from IPython.display import display, clear_output\n"
        "h = display({'text/plain': 'one'}, raw=True, display_id=True)\n"
        "h.update({'text/plain': 'two'}, raw=True)\n"
        "clear_output(wait=True)\n"
        "import sys; sys.stderr.write('warn\\n')\n",
    )
    assert ex.status == "ok"
    assert ex.of_type("display_data") and ex.of_type("update_display_data") and ex.of_type("clear_output")
    assert ex.stderr == "warn\n"


def test_error_reply_carries_the_traceback(kernel):
    _, kc = kernel
    ex = execute(kc, "def f():\n    raise KeyError('cage')\nf()")
    assert ex.status == "error"
    assert ex.reply["content"]["ename"] == "KeyError"
    assert ex.error["ename"] == "KeyError"


def test_kernel_info_advertises_neither_debugger_nor_subshells(kernel):
    _, kc = kernel
    reply = kc.kernel_info(reply=True, timeout=10)
    content = reply["content"]
    assert content["implementation"] == "ironcage"
    assert content["language_info"]["name"] == "python"
    assert "debugger" not in content.get("supported_features", [])
    assert "kernel subshells" not in content.get("supported_features", [])
    assert content.get("debugger") in (None, False)


def test_completion_inspection_and_is_complete_come_from_the_child(kernel):
    _, kc = kernel
    execute(kc, "cage_variable_xyz = 5")
    reply = kc.complete("cage_var", reply=True, timeout=10)
    assert "cage_variable_xyz" in reply["content"]["matches"]
    reply = kc.inspect("cage_variable_xyz", reply=True, timeout=10)
    assert reply["content"]["found"]
    msg_id = kc.is_complete("for i in range(3):")
    reply = kc.get_shell_msg(timeout=10)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["status"] == "incomplete"


def test_stdin_input_and_getpass_reach_the_frontend(kernel):
    _, kc = kernel
    ex = execute(kc, "name = input('who? '); print('hello', name)", stdin_answers=["ada"])
    assert ex.status == "ok", ex.text
    assert "hello ada" in ex.stdout
    ex = execute(kc, "import getpass; pw = getpass.getpass('pw: '); print(len(pw))", stdin_answers=["hunter2"])
    assert ex.stdout.strip() == "7"


def test_stdin_disallowed_fails_clearly_instead_of_hanging(kernel):
    _, kc = kernel
    ex = execute(kc, "input('x')", timeout=20)
    assert ex.status == "error"
    assert ex.reply["content"]["ename"] == "StdinNotImplementedError"


def test_widgets_sync_both_ways(kernel):
    _, kc = kernel
    ex = execute(kc, "import ipywidgets as w\ns = w.IntSlider(value=3)\ndisplay(s)")
    assert ex.status == "ok", ex.text
    opens = [m for m in ex.of_type("comm_open") if m["content"]["target_name"] == "jupyter.widget"]
    assert opens
    model = next(m for m in opens if m["content"]["data"]["state"].get("_model_name") == "IntSliderModel")
    comm_id = model["content"]["comm_id"]
    # frontend -> kernel: the user drags the slider
    msg = kc.session.msg("comm_msg", {"comm_id": comm_id, "data": {"method": "update", "state": {"value": 7},
                                                                   "buffer_paths": []}})
    kc.shell_channel.send(msg)
    deadline = time.monotonic() + 10
    value = None
    while time.monotonic() < deadline:
        value = execute(kc, "s.value").result
        if value == "7":
            break
        time.sleep(0.1)
    assert value == "7"
    # kernel -> frontend: the model changes in code and an update comm_msg is published
    ex = execute(kc, "s.value = 9")
    updates = [m for m in ex.of_type("comm_msg") if m["content"]["comm_id"] == comm_id]
    assert any(m["content"]["data"].get("state", {}).get("value") == 9 for m in updates)
    reply = kc.comm_info(target_name="jupyter.widget", reply=True, timeout=10)
    assert comm_id in reply["content"]["comms"]


def test_malformed_requests_get_error_replies(kernel):
    _, kc = kernel
    for msg_type, content in (
        ("execute_request", {"silent": False}),
        ("complete_request", {"code": 5}),
        ("inspect_request", {}),
    ):
        msg = kc.session.msg(msg_type, content)
        kc.shell_channel.send(msg)
        reply = kc.get_shell_msg(timeout=20)
        while reply["parent_header"].get("msg_id") != msg["header"]["msg_id"]:
            reply = kc.get_shell_msg(timeout=20)
        assert reply["content"]["status"] == "error", (msg_type, reply["content"])
    assert execute(kc, "'still alive'").result == "'still alive'"


def test_ironcage_help_and_bad_subcommand(kernel):
    _, kc = kernel
    ex = execute(kc, "%ironcage?")
    assert "status" in ex.text
    ex = execute(kc, "%ironcage nonsense")
    assert ex.status == "error" and "unknown %ironcage subcommand" in ex.text


def test_interrupt_through_a_real_kernel_manager(workspace):
    km, kc = start_kernel(workspace, warm=True)
    try:
        msg_id = kc.execute("while True: pass", stop_on_error=False)
        time.sleep(0.5)
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=15)
        while reply["parent_header"].get("msg_id") != msg_id:  # e.g. a late kernel_info reply
            reply = kc.get_shell_msg(timeout=15)
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert execute(kc, "'next cell works'").result == "'next cell works'"
    finally:
        stop_kernel(km, kc)


def test_child_killed_mid_cell_then_a_fresh_child_runs_the_next_cell(workspace):
    km, kc = start_kernel(workspace, warm=True)
    try:
        execute(kc, "state = 'kept'")
        child_pid = status(kc)["child_pid"]
        msg_id = kc.execute("import time; time.sleep(60)", stop_on_error=False)
        time.sleep(0.5)
        os.kill(child_pid, signal.SIGKILL)
        reply = kc.get_shell_msg(timeout=20)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = kc.get_shell_msg(timeout=20)
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KernelStateLost"
        assert "state was lost" in reply["content"]["evalue"]
        ex = execute(kc, "print('state' in globals())")
        assert ex.status == "ok" and ex.stdout.strip() == "False"
        new = status(kc)
        assert new["child_pid"] != child_pid and new["restarts"] == 1
        assert wait_gone(child_pid)
    finally:
        stop_kernel(km, kc)


def test_input_right_after_a_child_restart_reaches_the_frontend(workspace):
    """A fresh child's stdin ROUTER drops an input_request for a peer whose connection is not yet
    complete; the wrapper connects stdin before the child counts as ready, so a cell asking for
    input as the very first thing after a crash is answered, never left waiting."""
    km, kc = start_kernel(workspace, warm=True)
    try:
        for attempt in range(2):
            crashed = execute(kc, "import os; os.kill(os.getpid(), 9)")
            assert crashed.status == "error" and crashed.reply["content"]["ename"] == "KernelStateLost"
            ex = execute(kc, "print('got', input('again? '))", stdin_answers=[f"yes {attempt}"], timeout=60)
            assert ex.status == "ok" and ex.stdout.strip() == f"got yes {attempt}", ex.text
    finally:
        stop_kernel(km, kc)


def test_a_child_that_could_not_start_is_started_again_for_the_next_cell(workspace, tmp_path):
    """A launch that failed for a reason other than missing isolation (here: the child's runtime
    directory cannot be created) fails the cell with the reason, and the next cell tries again
    instead of leaving the kernel unusable until a restart."""
    base = tmp_path / "runtime-base"
    base.write_text("a file where the runtime directories should go")
    km, kc = start_kernel(workspace, extra_arguments=[f"--ChildKernel.runtime_base={base}"])
    try:
        failed = execute(kc, "print('first')")
        assert failed.status == "error" and "could not start" in failed.text, failed.text
        base.unlink()
        base.mkdir()
        ex = execute(kc, "print('second')")
        assert ex.status == "ok" and ex.stdout == "second\n", ex.text
        assert status(kc)["child_state"] == "running"
    finally:
        stop_kernel(km, kc)


def test_watchdog_kills_a_cell_that_ignores_interrupts(workspace):
    km, kc = start_kernel(workspace, extra_arguments=["--IronCageKernel.cell_timeout=2",
                                                      "--IronCageKernel.interrupt_grace=1"])
    try:
        ex = execute(kc, "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass",
                     timeout=30)
        assert ex.status == "error"
        assert ex.reply["content"]["ename"] == "CellTimeout"
        assert "restarted" in ex.reply["content"]["evalue"]
        ex = execute(kc, "import time; time.sleep(5)", timeout=30)
        assert ex.reply["content"]["ename"] == "CellTimeout"
        assert "interrupted" in ex.reply["content"]["evalue"]
        assert execute(kc, "1 + 1").result == "2"
    finally:
        stop_kernel(km, kc)


def test_shutdown_leaves_no_process_behind(workspace):
    km, kc = start_kernel(workspace, warm=True)
    info = status(kc)
    execute(kc, "import subprocess; p = subprocess.Popen(['sleep', '300']); print(p.pid)")
    wrapper_pid, child_pid = info["wrapper_pid"], info["child_pid"]
    runtime = Path(info["runtime_dir"])
    stop_kernel(km, kc)
    assert wait_gone(wrapper_pid)
    assert wait_gone(child_pid)
    assert not runtime.exists()


def test_restart_replaces_wrapper_and_child(workspace):
    km, kc = start_kernel(workspace, warm=True)
    try:
        old = status(kc)
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        new = status(kc)
        assert new["wrapper_pid"] != old["wrapper_pid"]
        assert wait_gone(old["child_pid"])
        assert execute(kc, "2 * 21").result == "42"
    finally:
        stop_kernel(km, kc)


def test_nbclient_executes_a_notebook(workspace):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import pandas as pd\ndf = pd.DataFrame({'x': [1, 2, 3]})\nint(df.x.sum())"),
        nbformat.v4.new_code_cell("print('done')"),
    ]
    nb.metadata["kernelspec"] = {"name": "ironcage", "display_name": "Iron Cage Python", "language": "python"}
    client = NotebookClient(nb, kernel_name="ironcage", timeout=120, resources={"metadata": {"path": str(workspace)}})
    client.execute()
    assert nb.cells[0].outputs[0]["data"]["text/plain"] == "6"
    assert nb.cells[1].outputs[0]["text"] == "done\n"


def test_jupyter_run_with_the_ironcage_kernel(workspace):
    script = workspace / "hello_run.py"
    script.write_text("print('from jupyter run', 6 * 7)\n")
    out = subprocess.run(
        [sys.executable, "-m", "jupyter_client.runapp", "--kernel=ironcage", str(script)],
        capture_output=True, text=True, timeout=120, cwd=workspace,
    )
    assert out.returncode == 0, out.stderr
    assert "from jupyter run 42" in out.stdout


def test_kernelspec_install_cli(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "ironcage_jupyter.cli", "install", "--prefix", str(tmp_path),
         "--name", "cage-test", "--display-name", "Cage Test"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    spec = json.loads((tmp_path / "share/jupyter/kernels/cage-test/kernel.json").read_text())
    assert spec["display_name"] == "Cage Test"
    assert spec["interrupt_mode"] == "message"
    assert spec["language"] == "python"
    assert spec["argv"][1:3] == ["-m", "ironcage_jupyter"]
    assert (tmp_path / "share/jupyter/kernels/cage-test/logo-64x64.png").exists()
    assert process_alive(os.getpid())


def test_configuration_from_jupyter_config_file_and_command_line(workspace, tmp_path):
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "jupyter_ironcage_config.json").write_text(
        json.dumps({"IronCageKernel": {"cell_timeout": 123.0, "request_timeout": 9.0}})
    )
    km, kc = start_kernel(workspace, env={"JUPYTER_CONFIG_DIR": str(config_dir)},
                          extra_arguments=["--IronCageKernel.request_timeout=11"])
    try:
        info = status(kc)
        assert info["cell_timeout_s"] == 123.0
        assert info["request_timeout_s"] == 11.0  # the command line wins over the file
    finally:
        stop_kernel(km, kc)
