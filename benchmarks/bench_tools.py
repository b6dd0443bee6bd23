"""Tools benchmarks, side by side in one run (no absolute thresholds; ratios against references).

1. Broker overhead per tool call, excluding the tool's own time: the same executor awaited directly vs
   through `ToolBroker.call` (schema, budgets, roles, policy, output limits, audit records), for a no-op
   tool and for fs.read of a small file; with an in-memory audit sink, with the real DuckDB AuditStore
   (fdatasync'd journal), and with the store plus the policy engine (as the kernel wires them).
2. Egress proxy throughput vs a direct connection: plain HTTP through the proxy, HTTPS through an opaque
   CONNECT tunnel, and HTTPS through TLS interception (the credential path: the real credentials broker
   swaps sentinels in the request and restores every response byte to the sentinel, restore.py), each
   against its direct reference on 127.0.0.1. Upstream servers, the proxy and the client run in three
   processes, as the upstream, the wrapper and the sandboxed child do in a session.

    PYTHONPATH=. python benchmarks/bench_tools.py [--calls 3000] [--mbytes 64] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import ssl
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from tools_support import make_test_ca, start_echo_server  # noqa: E402

from ironcage_jupyter.tools.broker import ToolBroker  # noqa: E402
from ironcage_jupyter.tools.budgets import BudgetTracker  # noqa: E402
from ironcage_jupyter.tools.builtin import make_upstream_ssl_context, register_builtins  # noqa: E402
from ironcage_jupyter.tools.egress import EgressProxy  # noqa: E402
from ironcage_jupyter.tools.fs import ConfinedFs, FsRoot  # noqa: E402
from ironcage_jupyter.tools.hooks import MemoryAudit, SettingsToolPolicy  # noqa: E402
from ironcage_jupyter.tools.models import ArgumentSpec, ToolCall, ToolSchema  # noqa: E402
from ironcage_jupyter.tools.netguard import HostAllowlist, NetworkGate  # noqa: E402
from ironcage_jupyter.tools.settings import BudgetSettings, ToolSettings  # noqa: E402
from ironcage_jupyter.tools.tls import SessionCA  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


BENCH_POLICY = """
name: bench-tools
rules:
  - id: bench-allow-tools
    subject: tool
    effect: allow
    match: {tools: ["bench.*", "fs.read"]}
  - id: bench-read-ws
    subject: tool
    effect: allow
    match: {tools: ["fs.read"], roles: [read-path], paths: ["${workspace}/**"]}
"""


def _engine_policy(ws: str):
    """The policy engine as the kernel wires it (EnginePolicy over PolicyEngine), for the kernel-like row."""
    import ironcage_jupyter.policy as policy_pkg
    from ironcage_jupyter.tools.adapters import EnginePolicy

    policy = policy_pkg.load_policy_text(BENCH_POLICY)
    context = policy_pkg.PolicyContext.create(ws, home=tempfile.mkdtemp(prefix="bench-home-"), include_defaults=False)
    return EnginePolicy(policy_pkg.PolicyEngine(policy, context))


async def bench_broker(calls: int, audits: list[str]) -> dict:
    """Each configuration: the broker path and the bare executor, interleaved call by call.

    Audit configurations: `memory` (in-memory sink), `store` (the real DuckDB AuditStore with its
    fdatasync'd journal, as the kernel's KernelAudit uses it), `store+engine` (the same with the policy
    engine deciding, as in the kernel). With a store, a third column times one durable policy_decision
    record on its own (a journal append + fdatasync): the floor the decision's durability costs.
    """
    ws = tempfile.mkdtemp(prefix="bench-tools-")
    with open(os.path.join(ws, "small.txt"), "w") as handle:
        handle.write("x" * 512)
    results: dict[str, dict] = {}
    for config in audits:
        audit: object = MemoryAudit()
        store = None
        if config.startswith("store"):
            from ironcage_jupyter.audit import AuditStore

            # store-tmpfs: the same store on /dev/shm, where fdatasync costs ~nothing: what the broker
            # and the store cost besides the device's flush (a decomposition, not a configuration).
            where = "/dev/shm" if config.startswith("store-tmpfs") else None
            store = AuditStore(tempfile.mkdtemp(prefix="bench-audit-", dir=where), "bench")
            audit = store
        policy = _engine_policy(ws) if config.endswith("engine") else SettingsToolPolicy(ToolSettings(allow=["*"]))
        budgets = BudgetTracker(BudgetSettings(tool_calls_per_minute=None, identical_call_limit=10**9))
        broker = ToolBroker(policy=policy, audit=audit, budgets=budgets)  # type: ignore[arg-type]
        fs = ConfinedFs([FsRoot(ws, True)])
        register_builtins(broker, enabled=["fs.read"], fs=fs, http=None)

        async def noop(arguments, context):
            return {"ok": True}

        broker.register(ToolSchema(name="bench.noop", arguments={"text": ArgumentSpec(name="text", required=True)}),
                        noop)
        if hasattr(policy, "register_tools"):
            policy.register_tools(broker.schemas())
        fs_read = broker._tools["fs.read"].execute  # the executor itself: the reference
        for label, name, args, direct in (
            ("no-op tool", "bench.noop", {"text": "hello"}, lambda a, f=noop: f(a, None)),
            ("fs.read 512 B", "fs.read", {"path": "small.txt"}, lambda a, f=fs_read: f(a, None)),
        ):
            for _ in range(200):  # warm-up
                await broker.call(ToolCall(name=name, arguments=args))
                await direct(args)
            via, ref, sync = [], [], []
            for i in range(calls):
                # interleaved so machine noise hits every column alike
                t0 = time.perf_counter()
                outcome = await broker.call(ToolCall(name=name, arguments=args, call_id=f"c{i}"))
                t1 = time.perf_counter()
                await direct(args)
                t2 = time.perf_counter()
                assert outcome.ok, outcome
                via.append((t1 - t0) * 1e3)
                ref.append((t2 - t1) * 1e3)
                if store is not None:
                    t3 = time.perf_counter()
                    store.record("policy_decision", decision="allow", rule="bench.floor",
                                 detail={"subject": "other"}, durable=True)
                    sync.append((time.perf_counter() - t3) * 1e3)
                if store is not None and i % 500 == 499:
                    store.flush()  # as the kernel's cell-end flush does (in its background thread)
            row = {
                "direct_p50_ms": statistics.median(ref), "broker_p50_ms": statistics.median(via),
                "overhead_p50_ms": statistics.median(via) - statistics.median(ref),
                "broker_p95_ms": pct(via, 0.95), "direct_p95_ms": pct(ref, 0.95),
            }
            if sync:
                row["durable_record_p50_ms"] = statistics.median(sync)
                # per call: broker path - bare tool - one durable record of the same run (paired)
                row["beyond_one_sync_p50_ms"] = statistics.median(v - r - f for v, r, f in zip(via, ref, sync, strict=True))
            results[f"{config}: {label}"] = row
        if store is not None:
            store.close()
    return {"calls": calls, "results": results}


def _http_get(sock: socket.socket, target: str, host: str) -> int:
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    total = 0
    while chunk := sock.recv(1 << 20):
        total += len(chunk)
    return total


_CLIENT_SSL: dict[tuple[str, ...], ssl.SSLContext] = {}


def _download(kind: str, server_port: int, proxy_port: int, size: int, ca_files: tuple[str, ...]) -> float:
    """One download, timed in the client process (a separate process, as the sandboxed child is)."""
    client_ssl = _CLIENT_SSL.get(ca_files)
    if client_ssl is None:
        client_ssl = ssl.create_default_context(cafile=ca_files[0])
        for extra in ca_files[1:]:
            client_ssl.load_verify_locations(extra)
        _CLIENT_SSL[ca_files] = client_ssl
    path = f"/big/{size}"
    start = time.perf_counter()
    if kind == "http-direct":
        with socket.create_connection(("127.0.0.1", server_port)) as s:
            got = _http_get(s, path, f"127.0.0.1:{server_port}")
    elif kind == "http-proxy":
        with socket.create_connection(("127.0.0.1", proxy_port)) as s:
            got = _http_get(s, f"http://127.0.0.1:{server_port}{path}", f"127.0.0.1:{server_port}")
    else:
        raw = socket.create_connection(("127.0.0.1", server_port if kind == "https-direct" else proxy_port))
        host = "api.test" if kind == "https-intercept" else "other.test"
        if kind != "https-direct":
            raw.sendall(f"CONNECT {host}:{server_port} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += raw.recv(1)
            assert head.startswith(b"HTTP/1.1 200"), head
        with client_ssl.wrap_socket(raw, server_hostname=host) as s:
            got = _http_get(s, path, f"{host}:{server_port}")
    elapsed = time.perf_counter() - start
    assert got >= size, (kind, got)
    return size / elapsed / 1e6


def _serve_echo(cert_file: str) -> None:
    """`--serve-echo CERT`: the upstream servers in their own process; prints both ports, runs until stdin closes."""
    plain, tls = start_echo_server("plain"), start_echo_server("tls", cert_file)
    print(plain.port, tls.port, flush=True)
    sys.stdin.read()


def _real_credentials(hosts: list[str]):
    """The product's credential-restoring path: the credentials broker behind the tools adapter."""
    from ironcage_jupyter.credentials.broker import CredentialBroker
    from ironcage_jupyter.credentials.settings import CredentialSettings, SecretGrant
    from ironcage_jupyter.tools.adapters import BrokeredCredentials

    os.environ["IRONCAGE_BENCH_TOKEN"] = "bench-real-token-" + os.urandom(8).hex()
    broker = CredentialBroker(CredentialSettings(grants={"IRONCAGE_BENCH_TOKEN": SecretGrant(hosts=hosts)}))
    broker.sentinel_for("IRONCAGE_BENCH_TOKEN")
    return BrokeredCredentials(broker)


async def bench_egress(mbytes: int, rounds: int) -> dict:
    """Upstream servers, proxy and client each in their own process (as in a session: server, wrapper,
    sandboxed child); the proxy runs on this process's event loop."""
    import concurrent.futures
    import multiprocessing
    import subprocess

    ca = make_test_ca(["api.test", "other.test"])
    servers = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve-echo", ca.cert_file],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert servers.stdout is not None
    plain_port, tls_port = (int(p) for p in servers.stdout.readline().split())

    async def resolver(host, port):
        return ["127.0.0.1"]

    session_ca = SessionCA()
    gate = NetworkGate(HostAllowlist.from_strings([f"127.0.0.1:{plain_port}", f"127.0.0.1:{tls_port}",
                                                   f"api.test:{tls_port}", f"other.test:{tls_port}"]),
                       resolver=resolver)
    proxy = EgressProxy(gate, MemoryAudit(), ca=session_ca, credentials=_real_credentials(["api.test"]),
                        upstream_ssl=make_upstream_ssl_context(ca.ca_file))
    proxy_port = await proxy.start_tcp()
    ca_files = (ca.ca_file, session_ca.ca_file)
    size = mbytes * 1_000_000
    loop = asyncio.get_running_loop()
    results: dict[str, list[float]] = {}
    client = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    kinds = [("http-direct", plain_port), ("http-proxy", plain_port), ("https-direct", tls_port),
             ("https-tunnel", tls_port), ("https-intercept", tls_port)]
    ratios: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    try:
        await loop.run_in_executor(client, _download, "http-direct", plain_port, proxy_port, 1000, ca_files)
        for index in range(rounds):
            # Each round downloads every path once, in a rotated order; each path's ratio is taken to
            # its direct reference of the same round, so load changes between rounds cancel out.
            rotation = index % len(kinds)
            measured: dict[str, float] = {}
            for kind, port in kinds[rotation:] + kinds[:rotation]:
                before = resource.getrusage(resource.RUSAGE_SELF)
                measured[kind] = await loop.run_in_executor(client, _download, kind, port, proxy_port, size, ca_files)
                after = resource.getrusage(resource.RUSAGE_SELF)
                results.setdefault(kind, []).append(measured[kind])
                # CPU of this process (the proxy's loop; the client and the servers run elsewhere)
                cpu.setdefault(kind, []).append((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
                                                * 1e3 / (size / 1e6))
            for kind, ref in EGRESS_ROWS:
                ratios.setdefault(kind, []).append(measured[kind] / measured[ref])
    finally:
        client.shutdown()
        await proxy.close()
        servers.communicate("")
    return {"mbytes": mbytes, "rounds": rounds, "MBps_median": {k: statistics.median(v) for k, v in results.items()},
            "ratio_median": {k: statistics.median(v) for k, v in ratios.items()},
            "ratio_p25": {k: pct(v, 0.25) for k, v in ratios.items()},
            "ratio_p75": {k: pct(v, 0.75) for k, v in ratios.items()}, "MBps_all": results,
            "proxy_cpu_ms_per_MB": {k: statistics.median(v) for k, v in cpu.items()}}


EGRESS_ROWS = (("http-direct", "http-direct"), ("http-proxy", "http-direct"), ("https-direct", "https-direct"),
               ("https-tunnel", "https-direct"), ("https-intercept", "https-direct"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--mbytes", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--audits", default="memory,store,store+engine,store-tmpfs",
                        help="audit/policy configurations, comma-separated: memory, store, store+engine, "
                        "store-tmpfs (the store on /dev/shm: everything but the device flush)")
    parser.add_argument("--skip-egress", action="store_true")
    parser.add_argument("--skip-broker", action="store_true")
    parser.add_argument("--json", help="write the raw figures here")
    parser.add_argument("--serve-echo", metavar="CERT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo:
        _serve_echo(args.serve_echo)
        return 0
    print(f"load average: {os.getloadavg()}")
    broker = None if args.skip_broker else asyncio.run(bench_broker(args.calls, args.audits.split(",")))
    egress = None if args.skip_egress else asyncio.run(bench_egress(args.mbytes, args.rounds))
    if broker is not None:
        print(f"## Broker overhead per call ({broker['calls']} calls each)\n")
        print("| audit: tool | direct p50 (ms) | via broker p50 (ms) | overhead p50 (ms) | via broker p95 (ms) "
              "| one durable record p50 (ms) | overhead beyond that record, paired p50 (ms) |")
        print("|---|---|---|---|---|---|---|")
        for label, r in broker["results"].items():
            floor = f"{r['durable_record_p50_ms']:.3f}" if "durable_record_p50_ms" in r else "-"
            beyond = f"{r['beyond_one_sync_p50_ms']:.3f}" if "beyond_one_sync_p50_ms" in r else "-"
            print(f"| {label} | {r['direct_p50_ms']:.4f} | {r['broker_p50_ms']:.4f} | {r['overhead_p50_ms']:.4f} "
                  f"| {r['broker_p95_ms']:.3f} | {floor} | {beyond} |")
    if egress is not None:
        rates = egress["MBps_median"]
        print(f"\n## Egress throughput ({egress['mbytes']} MB download, {egress['rounds']} rounds)\n")
        print("| path | MB/s (median) | ratio to its direct reference, same round (median) | p25-p75 "
              "| proxy CPU ms per MB (median) |")
        print("|---|---|---|---|---|")
        for kind, _ref in EGRESS_ROWS:
            print(f"| {kind} | {rates[kind]:.0f} | {egress['ratio_median'][kind]:.2f} "
                  f"| {egress['ratio_p25'][kind]:.2f}-{egress['ratio_p75'][kind]:.2f} "
                  f"| {egress['proxy_cpu_ms_per_MB'][kind]:.3f} |")
    print(f"load average: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"broker": broker, "egress": egress}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
