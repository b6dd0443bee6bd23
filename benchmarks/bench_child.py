"""The child kernel without the wrapper: plain ipykernel vs Iron Cage's child entry point, with and
without the sandbox or single sandbox mechanisms, side by side in one run.

    python benchmarks/bench_child.py [--cells 200] plain child-nosb child: child:seccomp child:landlock

Each variant is one kernel driven directly by a BlockingKernelClient (no wrapper, no policy, no audit):

  plain           ``python -m ipykernel_launcher`` unsandboxed
  child-nosb      ``python -m ironcage_jupyter.child_main`` with the wrapper's arguments, unsandboxed
  child:M1,M2     the same in the sandbox, with the listed mechanisms or layers switched off
                  (``SandboxSpec.disabled_layers``: pidns, mounts, netns, landlock, seccomp, limits,
                  or process/filesystem/network/syscall); ``child:`` is the full sandbox

The kernels alternate cell by cell (trivial cell ``1``). It prints the p50 round trip, its ratio to
the first variant, and the CPU time per cell of each kernel's processes (from /proc).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_kernel_ab import _cpu_seconds, _tree  # noqa: E402
from jupyter_client.kernelspec import KernelSpec  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402
from sandbox_support import SandboxedKernelManager  # noqa: E402

from ironcage_jupyter.child import ChildKernel  # noqa: E402
from ironcage_jupyter.child_main import OUTPUT_COUNT_KEY  # noqa: E402
from ironcage_jupyter.sandbox.launcher import SandboxSpec, release_sandbox  # noqa: E402
from ironcage_jupyter.sandbox.settings import IsolationSettings, ResourceLimits  # noqa: E402

PLAIN = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]


def _start(root: Path, variant: str) -> tuple[KernelManager, Any, SandboxSpec | None]:
    kind, _, disabled = variant.partition(":")
    # the wrapper's own argv for its child (base_argv uses nothing of the instance)
    argv = PLAIN if kind == "plain" else ChildKernel.base_argv(None)  # type: ignore[arg-type]
    sandboxed = kind == "child" and ":" in variant
    work = Path(tempfile.mkdtemp(dir=root))
    (work / "ws").mkdir()
    run = work / "run"
    run.mkdir(mode=0o700)
    km = (SandboxedKernelManager if sandboxed else KernelManager)(
        kernel_name="python3", transport="ipc", ip=str(run / "k"), connection_file=str(run / "kernel.json")
    )
    km._kernel_spec = KernelSpec(argv=argv, language="python", display_name=variant,
                                 env={"PYTHONPATH": str(REPO)})
    spec = None
    if sandboxed:
        spec = SandboxSpec(work / "ws", run, IsolationSettings(), ResourceLimits(),
                           disabled_layers=frozenset(x for x in disabled.split(",") if x))
        km.sandbox_spec = spec  # type: ignore[attr-defined]
    km.start_kernel(cwd=str(work / "ws"))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return km, kc, spec


def _cell(kc: Any) -> float:
    """Round trip of a trivial cell: until the reply and, as the wrapper does, every output it
    counts (Iron Cage's child sends no idle after an execute request); a plain kernel's idle."""
    t0 = time.perf_counter()
    msg_id = kc.execute("1")
    expected, seen, idle = None, 0, False
    while True:
        if expected is None:
            reply = kc.get_shell_msg(timeout=30)
            if reply["parent_header"].get("msg_id") == msg_id:
                expected = reply["metadata"].get(OUTPUT_COUNT_KEY, -1)
        while not idle and (expected is None or expected < 0 or seen < expected):
            msg = kc.get_iopub_msg(timeout=30)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status":
                idle = msg["content"]["execution_state"] == "idle"
            else:
                seen += 1
            if expected is None:
                break
        if expected is not None and (idle or 0 <= expected <= seen):
            return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=200)
    parser.add_argument("variants", nargs="+")
    args = parser.parse_args()
    for variant in args.variants:
        if variant.partition(":")[0] not in ("plain", "child", "child-nosb"):
            parser.error(f"unknown variant {variant!r}")
    root = Path(tempfile.mkdtemp())
    kernels = {v: _start(root, v) for v in args.variants}
    times: dict[str, list[float]] = {v: [] for v in kernels}
    try:
        for _km, kc, _ in kernels.values():
            for _ in range(30):  # warm up
                _cell(kc)
        pids = {v: _tree(k[0].provisioner.process.pid) for v, k in kernels.items()}  # type: ignore[union-attr]
        before = {v: _cpu_seconds(p) for v, p in pids.items()}
        for _ in range(args.cells):
            for v, (_km, kc, _) in kernels.items():
                times[v].append(_cell(kc))
        cpu = {v: (_cpu_seconds(p) - before[v]) / args.cells for v, p in pids.items()}
    finally:
        for km, kc, spec in kernels.values():
            kc.stop_channels()
            km.shutdown_kernel(now=True)
            if spec is not None:
                release_sandbox(spec)
    base = statistics.median(times[args.variants[0]])
    for v in kernels:
        p50 = statistics.median(times[v])
        print(f"{v:32s} p50 {p50 * 1e3:6.2f} ms ({p50 / base:.2f}x)  cpu {cpu[v] * 1e3:5.2f} ms/cell")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
