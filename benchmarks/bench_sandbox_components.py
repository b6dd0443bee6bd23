"""Where a sandboxed child start spends its time, component by component (docs/perf/sandbox.md).

    cd <repo> && python benchmarks/bench_sandbox_components.py [--rounds 15] [--old-root DIR]

  * bubblewrap with the sandbox's own arguments running /bin/true, vs a minimal bwrap and /bin/true;
  * inside a real sandbox: each bootstrap step timed on its own; the cgroup join runs on its thread, but
    here it starts after the bootstrap module's imports (the real bootstrap starts it before them), so
    its line shows about the whole join;
  * `python -m keyword` plain vs sandboxed with the cgroup join on the early thread vs synchronous
    (the `--cgroup` arguments removed), interleaved, paired differences;
  * with --old-root (a checkout of an earlier ironcage_jupyter, e.g. `git archive main ironcage_jupyter
    | tar -x -C /tmp/old`): `python -m keyword` sandboxed by the old and by this code, paired.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ironcage_jupyter.sandbox.launcher import SandboxSpec, build_sandboxed_command, release_sandbox  # noqa: E402
from ironcage_jupyter.sandbox.settings import IsolationSettings, ResourceLimits  # noqa: E402

INNER = r"""
import sys, time
from ironcage_jupyter.sandbox import bootstrap as b
files = [sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--cgroup"]
join = b._CgroupJoin(files)
import binascii, json
cfg = json.loads(sys.argv[sys.argv.index("--config") + 1])
out = {}
def tm(name, f, *a):
    s = time.perf_counter(); f(*a); out[name] = time.perf_counter() - s
tm("rlimits", b._apply_rlimits, cfg["rlimits"])
tm("drop capabilities", b._drop_capabilities)
tm("no_new_privs + not dumpable", lambda: (b._prctl(38, 1), b._prctl(4, 0)))
s = time.perf_counter()
from ironcage_jupyter.sandbox import _landlock
ll = cfg["landlock"]
_landlock.restrict_self(ll["read_only"], ll["read_write"], tcp_ports=cfg.get("tcp_ports", []))
out["landlock (import + rules)"] = time.perf_counter() - s
tm("seccomp (load the precompiled BPF)", lambda: b._load_bpf(binascii.a2b_base64(cfg["seccomp_bpf"])))
tm("cgroup wait left", join.wait)
print(json.dumps(out))
"""


def _spec(root: Path) -> SandboxSpec:
    ws = root / "ws"
    ws.mkdir(exist_ok=True)
    return SandboxSpec(ws, Path(tempfile.mkdtemp(dir=root)), IsolationSettings(), ResourceLimits())


def _timed(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - t0


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:8.2f}"


def _paired(a: list[float], b: list[float]) -> str:
    return f"{statistics.median((y - x) * 1000 for x, y in zip(a, b, strict=True)):8.2f}"


def _without_cgroup_args(argv: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--cgroup":
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def _old_argv(old_root: str, root: Path) -> tuple[list[str], dict[str, str], list[str]]:
    """The old code's sandboxed argv, built by the old code in a subprocess."""
    script = (
        "import json, os, sys, tempfile\nfrom pathlib import Path\n"
        f"sys.path.insert(0, {old_root!r})\n"
        "from ironcage_jupyter.sandbox.launcher import SandboxSpec, build_sandboxed_command\n"
        "from ironcage_jupyter.sandbox.settings import IsolationSettings, ResourceLimits\n"
        f"root = Path({str(root)!r}); ws = root / 'ws'; ws.mkdir(exist_ok=True)\n"
        "spec = SandboxSpec(ws, Path(tempfile.mkdtemp(dir=root)), IsolationSettings(), ResourceLimits())\n"
        f"env = dict(os.environ); env['PYTHONPATH'] = {old_root!r}\n"
        "argv, env = build_sandboxed_command([sys.executable, '-m', 'keyword'], env, spec)\n"
        "cfg = json.loads(argv[argv.index('--config') + 1])\n"
        "print(json.dumps([argv, env, [str(Path(p).parent) for p in cfg.get('cgroup_procs', [])]]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    argv, env, cgroup_dirs = json.loads(out)
    return argv, env, cgroup_dirs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--old-root", default="")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-sandbox-components-"))
    py = sys.executable

    # 1. bubblewrap alone
    spec = _spec(root)
    argv, env = build_sandboxed_command([py, "-m", "keyword"], dict(os.environ), spec)
    bwrap = argv[: argv.index("--") + 1]
    times: dict[str, list[float]] = {"/bin/true": [], "bwrap --unshare-all --ro-bind / /": [], "bwrap, our arguments": []}
    for _ in range(args.rounds):
        times["/bin/true"].append(_timed(["/bin/true"]))
        times["bwrap --unshare-all --ro-bind / /"].append(
            _timed(["bwrap", "--unshare-all", "--ro-bind", "/", "/", "--", "/bin/true"])
        )
        times["bwrap, our arguments"].append(_timed([*bwrap, "/bin/true"], env=env))
    release_sandbox(spec)

    # 2. the bootstrap's steps inside a real sandbox
    steps: dict[str, list[float]] = {}
    build: list[float] = []
    for _ in range(args.rounds):
        spec = _spec(root)
        t0 = time.perf_counter()
        argv, env = build_sandboxed_command([py, "-m", "keyword"], dict(os.environ), spec)
        build.append(time.perf_counter() - t0)
        k = argv.index("ironcage_jupyter.sandbox.bootstrap")
        out = subprocess.run([*argv[: k - 1], "-c", INNER, *argv[k + 1 :]], env=env, cwd=spec.workspace,
                             capture_output=True, text=True, check=True).stdout
        for name, value in json.loads(out).items():
            steps.setdefault(name, []).append(value)
        release_sandbox(spec)

    # 3. python -m keyword: plain, cgroup join on the early thread, synchronous (and the old code)
    starts: dict[str, list[float]] = {"plain": [], "sandboxed": [], "sandboxed, synchronous cgroup join": []}
    if args.old_root:
        starts["sandboxed by --old-root"] = []
    for i in range(args.rounds):
        order = list(starts) if i % 2 == 0 else list(starts)[::-1]
        for name in order:
            if name == "plain":
                starts[name].append(_timed([py, "-m", "keyword"], cwd=root))
                continue
            if name == "sandboxed by --old-root":
                argv, env, cgroup_dirs = _old_argv(args.old_root, root)
                starts[name].append(_timed(argv, env=env, cwd=root / "ws"))
                for directory in cgroup_dirs:
                    try:
                        os.rmdir(directory)
                    except OSError:
                        pass
                continue
            spec = _spec(root)
            argv, env = build_sandboxed_command([py, "-m", "keyword"], dict(os.environ), spec)
            if name.endswith("synchronous cgroup join"):
                argv = _without_cgroup_args(argv)
            starts[name].append(_timed(argv, env=env, cwd=spec.workspace))
            release_sandbox(spec)

    print(f"{'measure':<58} {'median ms':>9}")
    for name, values in times.items():
        print(f"{name:<58} {_ms(values)}")
    print(f"{'build_sandboxed_command (in the wrapper)':<58} {_ms(build)}")
    for name, values in steps.items():
        print(f"{'in the sandbox: ' + name:<58} {_ms(values)}")
    for name, values in starts.items():
        print(f"{'python -m keyword, ' + name:<58} {_ms(values)}")
    print(f"{'  paired: early-thread join - synchronous join':<58} "
          f"{_paired(starts['sandboxed, synchronous cgroup join'], starts['sandboxed'])}")
    if args.old_root:
        print(f"{'  paired: this code - --old-root':<58} {_paired(starts['sandboxed by --old-root'], starts['sandboxed'])}")
    print(f"rounds={args.rounds} load={os.getloadavg()}")


if __name__ == "__main__":
    main()
