"""Audit verify and batch flush of two source trees side by side, interleaved in the same minutes.

    git archive <commit> ironcage_jupyter | tar -x -C /tmp/old
    python benchmarks/bench_audit_ab.py --old /tmp/old [--events 1000000] [--sessions 10] [--rounds 3]

Writes `--events` chained events into `--sessions` closed session files once (the `bench_audit.py`
generator, current format), then alternates fresh processes of the old tree and of this one:
`verify()` of those files (wall and process CPU time, imports excluded), the `audit verify` CLI over
them (a fresh process: wall and its CPU time), and `AuditStore.flush()` of
100,000 recorded `tool_call` events (three stores per process; the first large flush of a process
is the slowest, all rounds are printed). Each process imports `ironcage_jupyter` from its own tree.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_VERIFY = """
import os, resource, sys, time
from ironcage_jupyter.audit.verify import verify
from ironcage_jupyter.audit.query import AuditQuery  # imported before timing, as in a CLI run
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
start, c = time.perf_counter(), cpu()
report = verify(sys.argv[1])
print(f"{time.perf_counter() - start:.3f} {cpu() - c:.3f} {report.exit_code}")
"""

# The `audit verify` CLI as a user runs it: a fresh interpreter, imports and all.
_CLI = """
import resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run([sys.executable, "-m", "ironcage_jupyter.audit.cli", "audit", "--audit-dir", sys.argv[1], "verify"],
                      capture_output=True, text=True)
wall = time.perf_counter() - start
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{wall:.3f} {r.ru_utime + r.ru_stime:.3f} {done.returncode}")
"""

_FLUSH = """
import sys, tempfile, time
from pathlib import Path
from ironcage_jupyter.audit import AuditStore
count = int(sys.argv[1])
work = Path(tempfile.mkdtemp(prefix="bench-audit-ab-"))
warm = AuditStore(work / "warm", "warm", batch_size=10**7)
for i in range(300):  # pyarrow's first use imports pandas: a one-off, not per batch
    warm.record("output_redaction", detail={"detector": "x", "count": 1})
warm.flush()
warm.close()
out = []
for n in range(3):
    store = AuditStore(work / "store", f"batch-{n}", batch_size=count + 1)
    for i in range(count):
        store.record("tool_call", detail={"gen_ai.tool.name": f"tool{i % 12}", "gen_ai.tool.call.id": f"call-{i}",
                     "arguments_redacted": {"url": f"https://h{i % 50}.example/x"},
                     "duration_ms": float(i % 97), "result_size_bytes": i % 4096})
    start, c = time.perf_counter(), time.process_time()
    store.flush()
    out.append(f"{count / (time.perf_counter() - start):.0f}:{time.process_time() - c:.3f}")
    store.close()
print(" ".join(out))
"""


def run(tree: Path, code: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run(  # noqa: S603 - this interpreter, our own snippet
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True, cwd=tree
    )
    return done.stdout.strip().splitlines()[-1]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--old", type=Path, required=True, help="the other source tree (holds ironcage_jupyter/)"
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--ingest", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--parts", default="verify,cli,flush", help="verify (in-process), cli (the CLI process), flush"
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    trees = {"old": args.old.resolve(), "new": REPO}
    sys.path.insert(0, str(REPO / "benchmarks"))
    sys.path.insert(0, str(REPO))
    from datetime import UTC, datetime

    import bench_audit

    from ironcage_jupyter.audit.paths import ensure_private_dir

    print(f"load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench-audit-ab-", dir=os.environ.get("BENCH_TMP")) as tmp:
        audit_dir = ensure_private_dir(Path(tmp) / "big")
        ensure_private_dir(audit_dir / "sessions")
        if parts & {"verify", "cli"}:
            per = args.events // args.sessions
            for i in range(args.sessions):
                sid = f"bench-{i:03d}"
                bench_audit.write_session(
                    audit_dir, sid, bench_audit.synth_rows(sid, per, datetime(2026, 1, 1 + i, tzinfo=UTC))
                )
        results: dict[str, dict[str, list[str]]] = {
            name: {"verify": [], "cli": [], "flush": []} for name in trees
        }
        for n in range(args.rounds):
            order = list(trees) if n % 2 == 0 else list(reversed(trees))
            for name in order:
                if "verify" in parts:
                    line = run(trees[name], _VERIFY, str(audit_dir))
                    results[name]["verify"].append(line)
                    print(
                        f"round {n} {name} verify: wall/CPU/exit {line}  load {os.getloadavg()[0]:.2f}",
                        flush=True,
                    )
                if "cli" in parts:
                    line = run(trees[name], _CLI, str(audit_dir))
                    results[name]["cli"].append(line)
                    print(
                        f"round {n} {name} CLI verify: wall/CPU/exit {line}  load {os.getloadavg()[0]:.2f}",
                        flush=True,
                    )
                if "flush" in parts:
                    line = run(trees[name], _FLUSH, str(args.ingest))
                    results[name]["flush"].append(line)
                    print(
                        f"round {n} {name} flush: ev/s:CPU {line}  load {os.getloadavg()[0]:.2f}", flush=True
                    )
    for name in trees:
        if results[name]["verify"]:
            walls = [float(line.split()[0]) for line in results[name]["verify"]]
            cpus = [float(line.split()[1]) for line in results[name]["verify"]]
            print(
                f"{name}: verify median {statistics.median(walls):.2f} s wall, {statistics.median(cpus):.2f} s CPU"
            )
        if results[name]["cli"]:
            walls = [float(line.split()[0]) for line in results[name]["cli"]]
            cpus = [float(line.split()[1]) for line in results[name]["cli"]]
            print(
                f"{name}: CLI verify median {statistics.median(walls):.2f} s wall, {statistics.median(cpus):.2f} s CPU"
            )
        if results[name]["flush"]:
            rates = [float(r.split(":")[0]) for line in results[name]["flush"] for r in line.split()[1:]]
            print(f"{name}: flush median of the later rounds {statistics.median(rates):,.0f} ev/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
