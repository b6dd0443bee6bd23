"""Policy decision and firewall screening benchmarks, side by side with references in the same run.

    python benchmarks/bench_policy.py            # prints a markdown table (docs/perf/policy.md)

1. A decision with a 100-rule policy (tool call with a read-path argument) vs cedarpy on equivalent
   rules (if cedarpy is installed), plus the pure-rule part alone (pre-canonicalised path).
2. Screening time for cells of 10 / 100 / 1,000 / 10,000 lines, and p50/p99 over the benign corpus.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ironcage_jupyter.firewall import screen_cell  # noqa: E402
from ironcage_jupyter.policy import Policy, PolicyContext, PolicyEngine, ToolSpec  # noqa: E402

BENIGN = Path("/work/shared/corpus/benign")


ROUNDS = 5
# The machine is shared by several developers (load average often 5-9 on 2 cores): wall-clock
# percentiles mostly measure waiting for a CPU. By default this measures the process's CPU time
# (CLOCK_PROCESS_CPUTIME_ID, ns resolution); `--wall` measures wall-clock time instead.
CLOCK = time.perf_counter_ns if "--wall" in sys.argv else time.process_time_ns
BEST: dict[int, float] = {}  # id(samples) -> median of the quietest round


def timeit(fn, n: int) -> list[float]:
    """n calls in ROUNDS rounds; returns all samples (µs). The machine is shared, so the median of the
    quietest round is kept too (BEST) and printed next to the overall percentiles."""
    out: list[float] = []
    per_round = max(1, n // ROUNDS)
    best = float("inf")
    for _ in range(ROUNDS):
        batch = []
        for _ in range(per_round):
            t = CLOCK()
            fn()
            batch.append((CLOCK() - t) / 1000)
        best = min(best, statistics.median(batch))
        out += batch
    BEST[id(out)] = best
    return out


def best(samples: list[float]) -> float:
    return BEST.get(id(samples), statistics.median(samples))


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


def hundred_rule_policy() -> tuple[Policy, list[ToolSpec]]:
    rules, tools = [], []
    for i in range(96):
        name = f"tool{i}"
        tools.append(ToolSpec(name, {"path": "read-path"}))
        rules.append({"id": f"t{i}", "subject": "tool", "effect": "deny" if i % 7 == 0 else "allow",
                      "match": {"tools": [name]}})
    rules += [
        {"id": "read-ws", "subject": "tool", "effect": "allow", "match": {"roles": ["read-path"], "paths": ["${workspace}/**"]}},
        {"id": "read-data", "subject": "tool", "effect": "escalate", "match": {"roles": ["read-path"], "paths": ["/data/**"]}},
        {"id": "no-secrets", "subject": "tool", "effect": "deny", "match": {"roles": ["read-path"], "paths": ["${workspace}/secrets/**"]}},
        {"id": "glob", "subject": "tool", "effect": "allow", "match": {"tools": ["tool9*"]}},
    ]
    return Policy.model_validate({"rules": rules}), tools


def bench_decisions(rows: list[str]) -> None:
    with tempfile.TemporaryDirectory() as ws:
        policy, tools = hundred_rule_policy()
        engine = PolicyEngine(policy, PolicyContext.create(ws, tools=tools, include_defaults=False))
        args = {"path": f"{ws}/data/x.csv"}
        assert engine.decide_tool("tool5", args).effect == "allow"
        for _ in range(2000):
            engine.decide_tool("tool5", args, findings=[])
        full = timeit(lambda: engine.decide_tool("tool5", args, findings=[]), 20000)
        rows.append(f"| decision, 100 rules, tool call + path (canonicalise + decide) | {statistics.median(full):.1f} µs "
                    f"| {pct(full, 0.99):.1f} µs | quietest round: {best(full):.1f} µs |")
        rules = engine._arg_rules
        canonical = f"{ws}/data/x.csv"
        pure = timeit(lambda: (engine._judge("a", engine._tool_index.get("tool5", []) + engine._tool_wild,
                                             lambda r: r.match_tool("tool5")),
                               engine._judge("b", rules, lambda r: "read-path" in r.roles and r.match_tool("tool5")
                                             and r.match_path(canonical))), 20000)
        rows.append(f"| pure rule evaluation of the same call (path pre-canonicalised), 100 rules | "
                    f"{statistics.median(pure):.1f} µs | {pct(pure, 0.99):.1f} µs | quietest round: {best(pure):.1f} µs |")
        net_policy = Policy.model_validate({"rules": [
            {"id": f"n{i}", "subject": "network", "effect": "deny" if i % 9 == 0 else "allow",
             "match": {"domains": [f"*.site{i}.example"], "ports": [443]}} for i in range(100)]})
        net_engine = PolicyEngine(net_policy, PolicyContext.create(ws, include_defaults=False))
        assert net_engine.decide_network("api.site57.example", 443).effect == "allow"
        net = timeit(lambda: net_engine.decide_network("api.site57.example", 443), 20000)
        rows.append(f"| decide_network, 100 domain rules (no I/O) | {statistics.median(net):.1f} µs | "
                    f"{pct(net, 0.99):.1f} µs | quietest round: {best(net):.1f} µs |")
        from ironcage_jupyter.policy import load_policy

        default_engine = PolicyEngine(load_policy("default"), PolicyContext.create(ws))
        screened = screen_cell("import pandas as pd\n%matplotlib inline\ndf = pd.read_csv('data/x.csv')\ndf.plot()")
        cells = timeit(lambda: default_engine.decide_cell(screened), 5000)
        rows.append(f"| decide_cell, `default` policy, typical screened cell (1 path literal) | "
                    f"{statistics.median(cells):.1f} µs | {pct(cells, 0.99):.1f} µs | quietest round: {best(cells):.1f} µs |")
        flat = [(r.rank, r) for r in engine.rules]

        def naive() -> int:
            best = -1
            for rank, rule in flat:
                if rule.subject == "tool" and rule.match_tool("tool5") and rank > best:
                    best = rank
            return best

        ref = timeit(naive, 20000)
        rows.append(f"| reference: unindexed deny-overrides loop over the 100 rules | {statistics.median(ref):.1f} µs | "
                    f"{pct(ref, 0.99):.1f} µs | quietest round: {best(ref):.1f} µs |")
        full_median = statistics.median(full)
    try:
        import cedarpy
    except ImportError:
        rows.append("| cedarpy | not installed | |")
        return
    policies = []
    for i in range(96):
        kind = "forbid" if i % 7 == 0 else "permit"
        policies.append(f'{kind}(principal, action == Action::"call", resource == Tool::"tool{i}");')
    policies.append('permit(principal, action == Action::"read", resource) when { resource.path like "/ws/*" };')
    policies.append('permit(principal, action == Action::"read", resource) when { resource.path like "/data/*" };')
    policies.append('forbid(principal, action == Action::"read", resource) when { resource.path like "/ws/secrets/*" };')
    policies.append('permit(principal, action == Action::"call", resource) when { resource.name like "tool9*" };')
    text = "\n".join(policies)
    request = {"principal": 'Agent::"a"', "action": 'Action::"call"', "resource": 'Tool::"tool5"', "context": {}}
    entities = [{"uid": {"__entity": {"type": "Tool", "id": "tool5"}}, "attrs": {"name": "tool5"}, "parents": []}]
    assert cedarpy.is_authorized(request, text, entities).allowed
    if hasattr(cedarpy, "PolicySet"):
        pset = cedarpy.PolicySet.from_str(text)
        fn = lambda: cedarpy.is_authorized(request, pset, entities)  # noqa: E731
    else:
        fn = lambda: cedarpy.is_authorized(request, text, entities)  # noqa: E731
    for _ in range(200):
        fn()
    ced = timeit(fn, 3000)
    rows.append(f"| cedarpy {getattr(cedarpy, '__version__', '')} is_authorized, same 100 rules (call only) | "
                f"{statistics.median(ced):.1f} µs | {pct(ced, 0.99):.1f} µs | quietest round: {best(ced):.1f} µs |")
    rows.append(f"| ratio cedarpy / Iron Cage full decision (medians) | {statistics.median(ced) / full_median:.1f}x | |")


def bench_screening(rows: list[str]) -> None:
    import ast

    from IPython.core.inputtransformer2 import TransformerManager

    manager = TransformerManager()
    header = "import pandas as pd\nimport numpy as np\nimport matplotlib.pyplot as plt\n"
    body = ("df = pd.DataFrame({'a': np.arange(10)})\ndf['b'] = df['a'] ** 2\nresult = df.groupby('a').sum()\n"
            "print(result.head())\nfig = df.plot(x='a', y='b')\nvalues = [x * 2 for x in range(10) if x % 2]\n"
            "model = {'k': 1, 'v': 'text'}\ntotal = sum(values)\nplt.title(f'total {total}')\n"
            "df.to_csv('out.csv')\n")
    screen_cell(header + body)
    for lines in (10, 100, 1000, 10000):
        code = header + body * (lines // 10)
        n = {10: 300, 100: 60, 1000: 10, 10000: 3}[lines]
        times = timeit(lambda c=code: screen_cell(c), n)
        parse = timeit(lambda c=code: ast.parse(c), n)
        ipython = timeit(lambda c=code: ast.parse(manager.transform_cell(c)), n)
        med = statistics.median(times)
        quiet = best(times)
        rows.append(f"| screen_cell, {lines} lines | {med / 1000:.2f} ms | {pct(times, 0.99) / 1000:.2f} ms "
                    f"| quietest round {quiet / 1000:.2f} ms = {quiet / lines:.0f} µs/line; "
                    f"{quiet / best(parse):.1f}x ast.parse, {quiet / best(ipython):.1f}x IPython transform+parse |")
    if BENIGN.is_dir():
        cells = [c for f in sorted(BENIGN.glob("*_cells.json")) for _nb, c in json.loads(f.read_text())]
        for _ in range(2):  # warm, then measure
            times = [timeit(lambda c=c: screen_cell(c), 1)[0] for c in cells]
        ipython = [timeit(lambda c=c: manager.transform_cell(c), 1)[0] for c in cells]
        rows.append(f"| screen_cell over the benign corpus ({len(cells)} cells) | {pct(times, 0.5) / 1000:.2f} ms | "
                    f"{pct(times, 0.99) / 1000:.2f} ms | IPython transform alone: p50 {pct(ipython, 0.5) / 1000:.2f} ms, "
                    f"p99 {pct(ipython, 0.99) / 1000:.2f} ms |")


def main() -> None:
    import os

    rows = ["| measurement | p50 | p99 | notes |", "|---|---|---|---|"]
    bench_decisions(rows)
    bench_screening(rows)
    print("\n".join(row + " |" * max(0, 5 - row.count("|")) for row in rows))
    clock = "wall-clock" if "--wall" in sys.argv else "process CPU time"
    print(f"\n({clock}; load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
