"""Trivial-cell round trip of plain ipykernel, Iron Cage (this tree) and Iron Cage from another
checkout, side by side in one run, with the CPU time each kernel's processes spend per cell.

    git worktree add /tmp/ironcage-base <revision>      # or: git archive <rev> | tar -x -C DIR
    python benchmarks/bench_kernel_ab.py --baseline /tmp/ironcage-base [--cells 300] [--markdown]
    python benchmarks/bench_kernel_ab.py --baseline /tmp/a --baseline /tmp/b ...   # several variants

The three kernels alternate cell by cell, so machine noise hits them alike; the ratios are what to
compare between runs. CPU time is read from /proc for the kernel process and all its descendants
(for Iron Cage: the wrapper and the sandboxed child), before and after the measured cells, and
for the kernel process alone (the wrapper).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_kernel import percentile, run_cell, start  # noqa: E402


def _tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.split("\n"):
        if line.strip():
            child, parent = (int(x) for x in line.split())
            children.setdefault(parent, []).append(child)
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, []))
    return found


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, type=Path, action="append",
                        help="checkout of the Iron Cage revision to compare (repeat to compare several; "
                        "they are then named after their directories)")
    parser.add_argument("--cells", type=int, default=300)
    parser.add_argument("--code", default="1", help="the measured cell (default: the trivial cell `1`)")
    parser.add_argument("--policy", default=str(REPO / "benchmarks" / "kernel_bench_policy.yaml"))
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    from ironcage_jupyter.kernelspec import write_kernel_spec

    if len(args.baseline) == 1:
        baselines = {"ironcage-baseline": args.baseline[0].resolve()}
    else:
        baselines = {f"ironcage-{path.resolve().name}": path.resolve() for path in args.baseline}
    trees = {"ironcage": REPO, **baselines}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, tree in trees.items():
            write_kernel_spec(root / "kernels" / name, python=sys.executable, env={
                "PYTHONPATH": str(tree), "IRONCAGE_AUDIT_DIR": str(root / f"audit-{name}"),
                "IRONCAGE_POLICY": args.policy})
        plain = root / "kernels" / "plain-python"
        plain.mkdir(parents=True)
        (plain / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "plain", "language": "python"}))
        os.environ["JUPYTER_PATH"] = str(root)
        workspace = root / "ws"
        workspace.mkdir()
        names = ("plain-python", *baselines, "ironcage")
        clients = {name: start(name, workspace) for name in names}
        times: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, float] = {}
        own: dict[str, float] = {}
        try:
            for name in names:
                for _ in range(30):  # warm up: child started, components loaded, caches filled
                    run_cell(clients[name][1], "1")
            pids = {name: _tree(clients[name][0].provisioner.process.pid) for name in names}  # type: ignore[attr-defined]
            before = {name: _cpu_seconds(pids[name]) for name in names}
            before_own = {name: _cpu_seconds(pids[name][:1]) for name in names}
            for _ in range(args.cells):
                for name in names:
                    times[name].append(run_cell(clients[name][1], args.code)[0])
            cpu = {name: (_cpu_seconds(pids[name]) - before[name]) / args.cells for name in names}
            own = {name: (_cpu_seconds(pids[name][:1]) - before_own[name]) / args.cells for name in names}
        finally:
            for km, kc, _ in clients.values():
                kc.stop_channels()
                km.shutdown_kernel(now=True)

    p50 = {name: percentile(times[name], 50) * 1e3 for name in names}
    p99 = {name: percentile(times[name], 99) * 1e3 for name in names}
    load = os.getloadavg()[0]
    if args.markdown:
        print(f"| kernel ({args.cells} cells, load {load:.1f}) | p50 ms | p50 / plain | p99 ms | "
              "CPU ms per cell: all processes | of which the kernel process (Iron Cage: the wrapper) |")
        print("|---|---:|---:|---:|---:|---:|")
        for name in names:
            print(f"| {name} | {p50[name]:.2f} | {p50[name] / p50['plain-python']:.2f}x | {p99[name]:.2f} | "
                  f"{cpu[name] * 1e3:.2f} | {own[name] * 1e3:.2f} |")
    else:
        for name in names:
            print(f"{name:20s} p50 {p50[name]:7.2f} ms ({p50[name] / p50['plain-python']:.2f}x)  "
                  f"p99 {p99[name]:7.2f} ms  cpu {cpu[name] * 1e3:6.2f} ms/cell "
                  f"(kernel process {own[name] * 1e3:.2f})")
        print(f"load average {load:.1f}")


if __name__ == "__main__":
    main()
