"""Cost of the lab extension's comm on the per-cell path, measured side by side in one run.

    python benchmarks/bench_ui.py [--cells 200] [--markdown]

Runs trivial cells on one real ``ironcage`` kernel, alternating blocks without and with an open
``ironcage.ui`` comm (the bridge then sends a ``cell_event`` and a ``status`` per cell), and reports the
median round trip of each and their ratio. Also times ``UiBridge.cell_finished`` alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _round_trip(kc, code: str) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    msg_id = kc.execute(code)
    while True:
        reply = kc.get_shell_msg(timeout=60)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    # wait for idle so the next cell starts clean (and the comm messages have been sent)
    while True:
        msg = kc.get_iopub_msg(timeout=60)
        if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"):
            break
    return time.perf_counter() - start


def bench_kernel(cells: int) -> dict[str, float]:
    from jupyter_client import KernelManager

    from ironcage_jupyter.kernelspec import write_kernel_spec

    tmp = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    write_kernel_spec(tmp / "jupyter" / "kernels" / "ironcage", python=sys.executable,
                      env={"PYTHONPATH": str(REPO)})
    os.environ["JUPYTER_PATH"] = str(tmp / "jupyter")
    km = KernelManager(kernel_name="ironcage")
    env = dict(os.environ, IRONCAGE_POLICY="observe", IRONCAGE_WORKSPACE=str(tmp),
               IRONCAGE_AUDIT_DIR=str(tmp / "audit"))
    km.start_kernel(cwd=str(tmp), env=env)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    try:
        for _ in range(10):
            _round_trip(kc, "pass")
        without: list[float] = []
        with_ui: list[float] = []
        comm_id = uuid.uuid4().hex
        block = 20
        for _block_start in range(0, cells, block):
            for _ in range(block):
                without.append(_round_trip(kc, "x = 1"))
            kc.shell_channel.send(kc.session.msg("comm_open", {"comm_id": comm_id, "target_name": "ironcage.ui",
                                                               "data": {"type": "hello"}}))
            for _ in range(block):
                with_ui.append(_round_trip(kc, "x = 1"))
            kc.shell_channel.send(kc.session.msg("comm_close", {"comm_id": comm_id, "data": {}}))
            comm_id = uuid.uuid4().hex
        return {"without_ms": statistics.median(without) * 1000, "with_ms": statistics.median(with_ui) * 1000}
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def bench_bridge(n: int = 20000) -> float:
    from ironcage_jupyter.ui import UiBridge

    bridge = UiBridge(lambda comm_id, data, parent: None, session_id="s")
    bridge.comm_ids.append("c")
    start = time.perf_counter()
    for i in range(n):
        bridge.cell_finished(cell_id="c", msg_id=str(i), decision="allow", rules=["cells"], reason="")
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=200)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    kernel = bench_kernel(args.cells)
    per_call_us = bench_bridge()
    ratio = kernel["with_ms"] / kernel["without_ms"]
    if args.markdown:
        print("| measure | value |\n|---|---|")
        print(f"| trivial cell, no UI comm (median) | {kernel['without_ms']:.2f} ms |")
        print(f"| trivial cell, UI comm open (median) | {kernel['with_ms']:.2f} ms |")
        print(f"| ratio with / without | {ratio:.3f} |")
        print(f"| `UiBridge.cell_finished` for an allowed cell (builds and sends one cell_event; send is a no-op) | {per_call_us:.1f} µs |")
    else:
        print(f"without UI comm: {kernel['without_ms']:.2f} ms  with: {kernel['with_ms']:.2f} ms  "
              f"ratio {ratio:.3f}  cell_finished {per_call_us:.1f} us")


if __name__ == "__main__":
    main()
