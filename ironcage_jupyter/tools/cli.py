"""`ironcage-jupyter tools ...`: list the tools a configuration offers, run one call through the broker.

The configuration is a YAML file with the policy sections `tools:`, `budgets:` and (optionally)
`network: {allow: [...]}` — or a policy name/path when the policy package can load it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from typing import Any

from .hooks import MemoryAudit
from .session import ToolSession
from .settings import BudgetSettings, ToolSettings


def _load_config(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    import yaml

    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping")
    return data


def _network_allowlist(config: dict[str, Any]) -> list[str]:
    """`network: {allow: [...]}` entries, plus the policy's `allow_domains` / `allow_addresses` x `ports`."""
    network = config.get("network") or {}
    entries = [str(h) for h in network.get("allow") or []]
    ports = network.get("ports") or [443, 80]
    for item in [*(network.get("allow_domains") or []), *(network.get("allow_addresses") or [])]:
        text = str(item)
        entries += [f"[{text}]:{p}" if ":" in text else f"{text}:{p}" for p in ports]
    return entries


def build_session(args: argparse.Namespace) -> ToolSession:
    if getattr(args, "policy", None):
        return _session_from_policy(args)
    config = _load_config(args.config)
    return ToolSession(
        ToolSettings.model_validate(config.get("tools") or {}),
        BudgetSettings.model_validate(config.get("budgets") or {}),
        audit=MemoryAudit(),
        workspace=os.path.abspath(args.workspace),
        egress_allowlist=_network_allowlist(config),
    )


def _session_from_policy(args: argparse.Namespace) -> ToolSession:
    """Decisions by the real policy engine (the same as in the kernel) for a policy name or file."""
    from ..policy import PolicyContext, PolicyEngine, load_policy  # type: ignore[attr-defined]
    from .adapters import EnginePolicy, engine_network_decider

    policy = load_policy(args.policy)
    workspace = os.path.abspath(args.workspace)
    engine = PolicyEngine(policy, PolicyContext.create(workspace))
    network = policy.network
    allow = _network_allowlist({"network": {"allow_domains": network.allow_domains,
                                            "allow_addresses": network.allow_addresses, "ports": network.ports}})
    return ToolSession(policy.tools, policy.budgets, audit=MemoryAudit(), workspace=workspace,
                       egress_allowlist=allow, policy=EnginePolicy(engine), decide_network=engine_network_decider(engine))


async def _run(args: argparse.Namespace) -> int:
    session = build_session(args)
    with tempfile.TemporaryDirectory(prefix="ironcage-tools-cli-") as socket_dir:
        await session.start(socket_dir, egress=False)
        if hasattr(session.broker.policy, "register_tools"):
            session.broker.policy.register_tools(session.broker.schemas())
        try:
            for server, error in session.mcp_failures.items():
                print(f"warning: MCP server {server} unavailable: {error}", file=sys.stderr)
            if args.tools_command == "list":
                if args.json:
                    from .channel import describe_tools

                    print(json.dumps(describe_tools(session.broker), indent=2))
                else:
                    print(session.tools_table()[0])
                return 0
            try:
                arguments = json.loads(args.args)
            except ValueError as exc:
                print(f"error: --args is not valid JSON: {exc}", file=sys.stderr)
                return 2
            if not isinstance(arguments, dict):
                print("error: --args must be a JSON object", file=sys.stderr)
                return 2
            outcome = await session.call(args.name, arguments, origin="cli")
            print(json.dumps(outcome.to_reply(), indent=2, default=str, ensure_ascii=False))
            return 0 if outcome.ok else 1
        finally:
            await session.close()


def _handler(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except (OSError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - e.g. PolicyError: name file, line and field, exit 2
        if type(exc).__name__ != "PolicyError":
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("tools", help="list tools / run one tool call through the broker")
    sub = parser.add_subparsers(dest="tools_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="YAML with `tools:`, `budgets:` and `network: {allow: [...]}` sections")
    common.add_argument("--policy", help="a policy name or file, decided by the policy engine as in the kernel")
    common.add_argument("--workspace", default=".", help="workspace root for fs.* (default: current directory)")
    listing = sub.add_parser("list", parents=[common], help="tools offered and what the policy does with them")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=_handler)
    calling = sub.add_parser("call", parents=[common], help="run one call (exit 0 ok, 1 refused, 2 bad input)")
    calling.add_argument("name")
    calling.add_argument("--args", default="{}", help="arguments as a JSON object")
    calling.set_defaults(func=_handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ironcage-jupyter")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
