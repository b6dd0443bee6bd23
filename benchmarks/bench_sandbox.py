"""Sandboxed vs unsandboxed child ipykernel, side by side in the same run.

    cd <repo> && python benchmarks/bench_sandbox.py [--rounds 10] [--cells 200]

Measures (medians, interleaved rounds so machine noise hits both sides alike):
  * kernel start: KernelManager.start_kernel() until the first kernel_info_reply (ipc transport),
    plain ipykernel vs the same kernel in the sandbox; the added cost is given as the difference of
    the medians and as the median of the per-round (paired) differences;
  * `python -m keyword` (an empty module) plain vs sandboxed: what the sandbox adds to a process
    start with little else in the measurement (bwrap, the bootstrap, cgroups, Landlock, seccomp; the
    module runs in the bootstrap's process as the kernel does). It overstates the kernel's cost a
    little: the bootstrap imports json and ctypes, which ipykernel imports anyway;
  * trivial-cell round trip through a BlockingKernelClient;
  * run_selftest() duration.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from jupyter_client.manager import KernelManager  # noqa: E402
from sandbox_support import SandboxedKernelManager  # noqa: E402

from ironcage_jupyter.sandbox.launcher import SandboxSpec, build_sandboxed_command, release_sandbox  # noqa: E402
from ironcage_jupyter.sandbox.selftest import run_selftest  # noqa: E402
from ironcage_jupyter.sandbox.settings import IsolationSettings, ResourceLimits  # noqa: E402


def _spec(root: Path) -> SandboxSpec:
    ws = root / "ws"
    ws.mkdir(exist_ok=True)
    run = Path(tempfile.mkdtemp(dir=root))
    return SandboxSpec(ws, run, IsolationSettings(), ResourceLimits())


def _start(root: Path, sandboxed: bool) -> tuple[float, KernelManager, SandboxSpec]:
    spec = _spec(root)
    cls = SandboxedKernelManager if sandboxed else KernelManager
    km = cls(
        kernel_name="python3",
        transport="ipc",
        ip=str(spec.socket_dir / "k"),
        connection_file=str(spec.socket_dir / "kernel.json"),
    )
    if sandboxed:
        km.sandbox_spec = spec
    t0 = time.perf_counter()
    km.start_kernel(cwd=str(spec.workspace))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    elapsed = time.perf_counter() - t0
    km._bench_client = kc  # type: ignore[attr-defined]
    return elapsed, km, spec


def _stop(km: KernelManager, spec: SandboxSpec) -> None:
    km._bench_client.stop_channels()  # type: ignore[attr-defined]
    km.shutdown_kernel(now=True)
    release_sandbox(spec)


def _cells(km: KernelManager, n: int) -> list[float]:
    kc = km._bench_client  # type: ignore[attr-defined]
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        kc.execute_interactive("1+1", timeout=30, output_hook=lambda m: None)
        times.append(time.perf_counter() - t0)
    return times


def _python_pass(root: Path, sandboxed: bool) -> float:
    argv, env = [sys.executable, "-m", "keyword"], dict(os.environ)
    spec = _spec(root)
    if sandboxed:
        argv, env = build_sandboxed_command(argv, env, spec)
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, cwd=spec.workspace)
    elapsed = time.perf_counter() - t0
    release_sandbox(spec)
    return elapsed


def ms(values: list[float]) -> str:
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(len(values) * 0.9))]
    return f"{statistics.median(values) * 1000:8.1f} {p90 * 1000:8.1f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--cells", type=int, default=200)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    results: dict[str, list[float]] = {
        k: [] for k in ("start_plain", "start_sandbox", "py_plain", "py_sandbox", "selftest")
    }
    cells: dict[str, list[float]] = {"plain": [], "sandbox": []}
    _stop(*_start(root, True)[1:])  # warm caches (namespace probe, page cache)
    for i in range(args.rounds):
        for sandboxed in (False, True) if i % 2 == 0 else (True, False):
            key = "sandbox" if sandboxed else "plain"
            elapsed, km, spec = _start(root, sandboxed)
            results[f"start_{key}"].append(elapsed)
            if i == 0:
                cells[key] = _cells(km, args.cells)
            _stop(km, spec)
            results[f"py_{key}"].append(_python_pass(root, sandboxed))
        results["selftest"].append(run_selftest(_spec(root)).duration_ms / 1000)
    print(f"{'measure':<42} {'median':>8} {'p90':>8}  (ms)")
    print(f"{'kernel start to kernel_info_reply, plain':<42} {ms(results['start_plain'])}")
    print(f"{'kernel start to kernel_info_reply, sandbox':<42} {ms(results['start_sandbox'])}")
    added = statistics.median(results["start_sandbox"]) - statistics.median(results["start_plain"])
    paired = statistics.median(b - a for a, b in zip(results["start_plain"], results["start_sandbox"], strict=True))
    print(f"{'  added by the sandbox (diff of medians)':<42} {added * 1000:8.1f}")
    print(f"{'  added by the sandbox (median paired diff)':<42} {paired * 1000:8.1f}")
    print(f"{'python -m keyword, plain':<42} {ms(results['py_plain'])}")
    print(f"{'python -m keyword, sandboxed':<42} {ms(results['py_sandbox'])}")
    py_added = statistics.median(results["py_sandbox"]) - statistics.median(results["py_plain"])
    print(f"{'  added by the sandbox (diff of medians)':<42} {py_added * 1000:8.1f}")
    print(f"{'trivial cell round trip, plain':<42} {ms(cells['plain'])}")
    print(f"{'trivial cell round trip, sandbox':<42} {ms(cells['sandbox'])}")
    print(f"{'run_selftest()':<42} {ms(results['selftest'])}")
    print(f"rounds={args.rounds} cells={args.cells} python={sys.version.split()[0]} load={os.getloadavg()}")


if __name__ == "__main__":
    main()
