"""Repro (not a test) for the lead: JupyterLab's ipywidgets manager sends comm_info_request, comm_open
and comm_msg right after the kernel starts. About 1 run in 3, the wrapper forwards comm_info_request to
the child, the child handles it (busy/idle on iopub) but its comm_info_reply never reaches the relay,
so the wrapper's shell queue stalls for request_timeout (30 s) and the first cell waits.

    PYTHONPATH=. python tests/ui_fixtures/repro_widget_comm_stall.py   # prints "reply in time: True/False"
"""

from __future__ import annotations

import os
import queue
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main(runs: int = 6) -> None:
    from jupyter_client import KernelManager

    from ironcage_jupyter.kernelspec import write_kernel_spec

    tmp = Path(tempfile.mkdtemp(prefix="repro-stall-"))
    write_kernel_spec(tmp / "kernels" / "ironcage", python=sys.executable, env={"PYTHONPATH": str(REPO)})
    os.environ["JUPYTER_PATH"] = str(tmp)
    for _ in range(runs):
        km = KernelManager(kernel_name="ironcage")
        km.start_kernel(cwd=str(tmp))
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        for msg_type, content in (
            ("comm_info_request", {"target_name": "jupyter.widget"}),
            ("comm_open", {"comm_id": "w1", "target_name": "jupyter.widget.control", "data": {}}),
            ("comm_msg", {"comm_id": "w1", "data": {"method": "request_states"}}),
        ):
            kc.shell_channel.send(kc.session.msg(msg_type, content))
        msg_id = kc.execute("print('total', 45)")
        deadline = time.monotonic() + 10
        in_time = False
        while time.monotonic() < deadline and not in_time:
            try:
                reply = kc.get_shell_msg(timeout=0.5)
            except queue.Empty:
                continue
            in_time = reply["parent_header"].get("msg_id") == msg_id
        print("reply in time:", in_time)
        kc.stop_channels()
        km.shutdown_kernel(now=True)


if __name__ == "__main__":
    main()
