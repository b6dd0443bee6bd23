"""Plain ipykernel vs Iron Cage, side by side in one run, with the same client.

    python benchmarks/bench_kernel.py [--cells 300] [--starts 5] [--markdown] [--only stream,outputs]

Measures cold start to the first kernel_info_reply, the trivial-cell round trip (p50/p99), 10,000
small outputs in one cell (display_data messages) and a 50 MB stdout stream, and prints the ratios.
The stream is measured twice: written in 1 MB writes with one flush at the end (ipykernel sends it as
one 50 MB message) and flushed after every 1 MB write (50 messages of 1 MB).
Kernels alternate so that machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_kernelspecs(root: Path, policy: str | None) -> None:
    from ironcage_jupyter.kernelspec import write_kernel_spec

    env = {"PYTHONPATH": str(REPO), "IRONCAGE_AUDIT_DIR": str(root / "audit")}
    if policy:
        env["IRONCAGE_POLICY"] = policy
    write_kernel_spec(root / "kernels" / "ironcage", python=sys.executable, env=env)
    plain = root / "kernels" / "plain-python"
    plain.mkdir(parents=True)
    (plain / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "plain", "language": "python",
    }))


def start(name: str, workspace: Path, first_cell: list[float] | None = None
          ) -> tuple[KernelManager, BlockingKernelClient, float]:
    """Start a kernel; returns the seconds to its first kernel_info_reply. With first_cell, also
    appends the seconds from launch to the first cell's reply (the time a user waits to run code)."""
    t0 = time.perf_counter()
    km = KernelManager(kernel_name=name)
    km.start_kernel(cwd=str(workspace))
    kc = km.client()
    # The client must not be the bottleneck that drops output (zmq's default queue is 1,000).
    kc.context.setsockopt(zmq.RCVHWM, 0)
    kc.start_channels()
    kc.kernel_info(reply=True, timeout=120)
    elapsed = time.perf_counter() - t0
    kc.wait_for_ready(timeout=120)
    if first_cell is not None:
        run_cell(kc, "1")
        first_cell.append(time.perf_counter() - t0)
    return km, kc, elapsed


STREAM_MESSAGES: list[int] = []  # stream messages received by the last run_cell with collect


def run_cell(kc: BlockingKernelClient, code: str, collect: bool = False) -> tuple[float, int]:
    """Seconds from send to reply-and-idle; with collect, also the bytes of output received (and the
    number of stream messages in ``STREAM_MESSAGES[0]``)."""
    t0 = time.perf_counter()
    msg_id = kc.execute(code, store_history=False)
    received = 0
    STREAM_MESSAGES[:] = [0]
    idle = False
    while not idle:
        msg = kc.get_iopub_msg(timeout=300)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        msg_type = msg["header"]["msg_type"]
        if msg_type == "status" and msg["content"]["execution_state"] == "idle":
            idle = True
        elif collect and msg_type == "stream":
            received += len(msg["content"]["text"])
            STREAM_MESSAGES[0] += 1
        elif collect and msg_type == "display_data":
            received += 1
    reply = kc.get_shell_msg(timeout=300)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=300)
    return time.perf_counter() - t0, received


def process_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) used so far by process ``pid`` and by all its descendants."""
    tick = os.sysconf("SC_CLK_TCK")

    def own(p: int) -> float:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    def children(p: int) -> list[int]:
        found = []
        for task in Path(f"/proc/{p}/task").iterdir():
            try:
                found += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
        return found

    try:
        top = own(pid)
    except OSError:
        return 0.0, 0.0
    rest, todo = 0.0, children(pid)
    while todo:
        p = todo.pop()
        try:
            rest += own(p)
            todo += children(p)
        except OSError:
            pass
    return top, rest


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=300)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--stream-mb", type=int, default=50)
    parser.add_argument("--outputs", type=int, default=10_000)
    parser.add_argument(
        "--policy", default=str(REPO / "benchmarks" / "kernel_bench_policy.yaml"),
        help="IRONCAGE_POLICY for the ironcage kernel (default: the default policy with a 200 MB output "
        "limit, so the stream benchmark measures relaying, not truncation)",
    )
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument(
        "--only", default="start,cell,outputs,stream,flushed",
        help="comma-separated rows to measure: start (cold start, first cell), cell (round trip), "
        "outputs (10,000 display outputs), stream (50 MB stdout, one flush), flushed (50 MB stdout, "
        "flushed every MB); default: all",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of the outputs and stream cells")
    args = parser.parse_args()
    only = {part.strip() for part in args.only.split(",") if part.strip()}
    unknown = only - {"start", "cell", "outputs", "stream", "flushed"}
    if unknown:
        parser.error(f"--only: unknown rows {sorted(unknown)}")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_kernelspecs(root, args.policy)
        os.environ["JUPYTER_PATH"] = str(root)
        workspace = root / "ws"
        workspace.mkdir()
        kernels = ("plain-python", "ironcage")
        results: dict[str, dict[str, Any]] = {k: {"start": [], "first_cell": []} for k in kernels}

        for _ in range(args.starts if "start" in only else 0):
            for name in kernels:
                km, kc, elapsed = start(name, workspace, results[name]["first_cell"])
                results[name]["start"].append(elapsed)
                kc.stop_channels()
                km.shutdown_kernel(now=True)

        clients = {name: start(name, workspace) for name in kernels}
        try:
            for name in kernels:
                _, kc, _ = clients[name]
                for _ in range(20):  # warm up both
                    run_cell(kc, "1")
                results[name]["cell"] = []
            for _ in range(args.cells if "cell" in only else 0):
                for name in kernels:
                    results[name]["cell"].append(run_cell(clients[name][1], "1")[0])
            outputs_code = (
                "from IPython.display import display\n"
                f"for i in range({args.outputs}):\n    display(i)\n"
            )
            line = "x" * 1023 + "\n"
            stream_code = (
                "import sys\n"
                f"chunk = {line!r} * 1024\n"
                f"for _ in range({args.stream_mb}):\n    sys.stdout.write(chunk)\n"
                "sys.stdout.flush()\n"
            )
            flushed_code = (
                "import sys\n"
                f"chunk = {line!r} * 1024\n"
                f"for _ in range({args.stream_mb}):\n    sys.stdout.write(chunk)\n    sys.stdout.flush()\n"
            )
            for name in kernels:
                for row in ("outputs", "stream", "flushed", "stream_cpu", "flushed_cpu"):
                    results[name][row] = []
            for _ in range(args.repeats):
                for name in kernels:
                    kc = clients[name][1]
                    if "outputs" in only:
                        seconds, count = run_cell(kc, outputs_code, collect=True)
                        assert count == args.outputs, (name, count)
                        results[name]["outputs"].append(seconds)
                    for row, code in (("stream", stream_code), ("flushed", flushed_code)):
                        if row in only:
                            pid = clients[name][0].provisioner.process.pid  # type: ignore[union-attr]
                            before, client_before = process_cpu(pid), time.process_time()
                            seconds, received = run_cell(kc, code, collect=True)
                            after, client_after = process_cpu(pid), time.process_time()
                            results[name][row].append((seconds, received))
                            results[name][f"{row}_cpu"].append(
                                (after[0] - before[0], after[1] - before[1], client_after - client_before,
                                 STREAM_MESSAGES[0])
                            )
        finally:
            for km, kc, _ in clients.values():
                kc.stop_channels()
                km.shutdown_kernel(now=True)

    rows = []

    def add(metric: str, plain: float, cage: float, unit: str, target: str, higher_is_better: bool = False) -> None:
        ratio = cage / plain if plain else float("nan")
        rows.append((metric, plain, cage, unit, ratio, target))

    p, c = results["plain-python"], results["ironcage"]
    if "start" in only:
        add("cold start to kernel_info_reply (median)", statistics.median(p["start"]) * 1e3,
            statistics.median(c["start"]) * 1e3, "ms", "<= 1.3x")
        add("start to first cell result (median)", statistics.median(p["first_cell"]) * 1e3,
            statistics.median(c["first_cell"]) * 1e3, "ms", "-")
    if "cell" in only:
        add(f"trivial cell round trip p50 ({args.cells} cells)", percentile(p["cell"], 50) * 1e3,
            percentile(c["cell"], 50) * 1e3, "ms", "<= 1.3x")
        add("trivial cell round trip p99", percentile(p["cell"], 99) * 1e3,
            percentile(c["cell"], 99) * 1e3, "ms", "-")
    if "outputs" in only:
        add(f"{args.outputs:,} display outputs in one cell (median)", statistics.median(p["outputs"]) * 1e3,
            statistics.median(c["outputs"]) * 1e3, "ms", "-")

    def throughput(runs: list[tuple[float, int]]) -> float:
        seconds = statistics.median(r[0] for r in runs)
        received = max(r[1] for r in runs)
        return received / seconds / 1e6

    for row, label in (("stream", "one flush"), ("flushed", "flushed every MB")):
        if row not in only:
            continue
        add(f"{args.stream_mb} MB stdout stream throughput ({label})", throughput(p[row]), throughput(c[row]),
            "MB/s", ">= 0.7x", higher_is_better=True)
        for k in kernels:
            runs = ", ".join(f"{r[0]:.3f} s" for r in results[k][row])
            cpu = [statistics.median(r[i] for r in results[k][f"{row}_cpu"]) for i in range(4)]
            print(f"{row} runs {k}: {runs}; bytes received {max(r[1] for r in results[k][row])}; "
                  f"median CPU per run: kernel process {cpu[0]:.3f} s, its descendants {cpu[1]:.3f} s, "
                  f"client {cpu[2]:.3f} s; stream messages received {cpu[3]:.0f}", file=sys.stderr)

    if args.markdown:
        print("| metric | plain ipykernel | Iron Cage | unit | ratio (Iron Cage / plain) | target |")
        print("|---|---:|---:|---|---:|---|")
        for metric, plain, cage, unit, ratio, target in rows:
            print(f"| {metric} | {plain:.2f} | {cage:.2f} | {unit} | {ratio:.2f}x | {target} |")
    else:
        for metric, plain, cage, unit, ratio, target in rows:
            print(f"{metric:50s} plain {plain:9.2f} {unit:5s} ironcage {cage:9.2f} {unit:5s} "
                  f"ratio {ratio:5.2f}x  target {target}")


if __name__ == "__main__":
    main()
