"""Is a new policy looser than the active one? Conservative: anything not shown to be at least as strict
counts as loosening (and then needs a human, or is refused when the active policy is locked).

Cell-finding, magic, network and credential rules are compared by probing: every element the engine
judges is evaluated under both policies at representative points of every region the two policies'
matchers carve out (each category x severity, a sample of every id/name/domain/address pattern and one
matching none). A request's effect is the strictest over its elements, so an element-wise check is
enough. Tool rules and rules with code regexes are compared structurally (a rule added with allow or
escalate, or a deny/escalate rule removed or weakened, is loosening).
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from .models import EFFECT_RANK, Policy, Rule


def _rule_key(rule: Rule) -> str:
    return json.dumps({"subject": rule.subject, "match": rule.match.model_dump(mode="json")}, sort_keys=True)


def _structural(rule: Rule) -> bool:
    return bool(rule.match.code_patterns)


def _sample(pattern: str) -> str:
    return pattern.replace("**", "x").replace("*", "x").replace("?", "x").replace("[", "").replace("]", "")


def _domain_samples(patterns: set[str]) -> set[str]:
    out = {"zz-unlisted.example"}
    for pattern in patterns:
        if pattern == "*":
            continue
        if pattern.startswith("*."):
            out |= {"a" + pattern[1:], pattern[2:]}
        else:
            out.add(pattern)
    return out


def _probe_reasons(old: Policy, new: Policy) -> list[str]:
    from ..firewall import CATEGORIES, Finding, MagicUse
    from .engine import ElementDecision, PolicyEngine, section_rules
    from .network import parse_ip
    from .subjects import PolicyContext

    context = PolicyContext("/nonexistent-ironcage-probe", (), "/nonexistent-ironcage-home")
    keep = lambda p: p.model_copy(update={"rules": [r for r in p.rules if not _structural(r)]})  # noqa: E731
    engines = [PolicyEngine(keep(old), context), PolicyEngine(keep(new), context)]
    rules = [r for p in (old, new) for r in [*p.rules, *section_rules(p)] if not _structural(r)]
    m = [r.match for r in rules]
    finding_ids = {_sample(x) for x in (i for mm in m for i in mm.findings)} | {"ZZ-UNMATCHED"}
    magic_names = {_sample(x) for mm in m for x in mm.magics} | {"zz_unknown", "!"}
    commands = {_sample(x) for mm in m for x in mm.commands} | {"zz_unknown"}
    domains = _domain_samples({d for mm in m for d in (*mm.domains, *mm.not_domains, *mm.hosts)})
    addresses: set[str] = {"8.8.8.8", "10.0.0.1", "127.0.0.1"}
    for mm in m:
        for spec in mm.addresses:
            net = ipaddress.ip_network(spec, strict=False)
            addresses |= {str(net.network_address), str(net.broadcast_address)}
    ports = {p for mm in m for p in mm.ports} | {443, 1}
    schemes: set[str | None] = {None, "https"}
    schemes.update(s.lower() for mm in m for s in mm.schemes)
    cred_names = {_sample(x) for mm in m for x in mm.credentials} | {"ZZ_UNKNOWN"}
    requesters = {_sample(x) for mm in m for x in mm.requesters} | {"cell", "tool:zz"}

    probes: list[tuple[str, list[ElementDecision]]] = []

    def judge_all(label: str, fn: Any) -> None:
        probes.append((label, [fn(e) for e in engines]))

    judge_all("a plain cell", lambda e: e._judge("cell", e._cell_rules, lambda r: not r.code_patterns))
    for category in CATEGORIES:
        for severity in ("low", "medium", "high", "critical"):
            for fid in finding_ids:
                f = Finding(fid, category, severity, 1, "")  # type: ignore[arg-type]
                judge_all(f"finding {fid} {category}/{severity}",
                          lambda e, f=f: e._judge("f", e._finding_rules, lambda r: r.match_finding(f)))
    for name in magic_names:
        for cmds in [(), *((c,) for c in commands)]:
            magic = MagicUse(name, "line", 1, "", bool(cmds), cmds)
            judge_all(f"magic {name} {cmds}", lambda e, mg=magic: e._judge("m", e._magic_rules, lambda r: r.match_magic(mg)))
    for host in domains | addresses:
        ip = parse_ip(host)
        for port in ports:
            for scheme in schemes:
                judge_all(f"destination {host}:{port}", lambda e, h=host, p=port, s=scheme, i=ip: e._judge(
                    "n", e._network_rules, lambda r: (not r.ports or p in r.ports) and (not r.schemes or s in r.schemes)
                    and r.match_host(h, i)))
    for name in cred_names:
        for requester in requesters:
            cred_hosts: list[str | None] = [None, *domains]
            for cred_host in cred_hosts:
                def cred(e: Any, n: str = name, q: str = requester, h: str | None = cred_host) -> ElementDecision:
                    return e._judge("c", e._credential_rules, lambda r: (r.credentials is None or r.credentials.match(n))
                                    and (r.requesters is None or r.requesters.match(q))
                                    and (not r.hosts or (h is not None and any(_dm(d, h) for d in r.hosts))))
                judge_all(f"credential {name} for {requester}", cred)
    ws, home = context.workspace, context.home
    tool_names = {_sample(x) for mm in m for x in mm.tools} | {"zz.unknown"}
    paths = {"/", "/zz-unlisted/x", f"{ws}/x", f"{ws}_evil/x", f"{home}/x", ws}
    for mm in m:
        for glob in (*mm.paths, *mm.not_paths):
            text = glob.replace("${workspace}", ws).replace("${home}", home)
            if text.startswith("~"):
                text = home + text[1:]
            sample = _sample(text)
            paths |= {sample, sample.rsplit("/", 1)[0] or "/", sample + "/x"}
    for tool in tool_names:
        judge_all(f"tool {tool}", lambda e, t=tool: e._judge("t", e._tool_rules, lambda r: r.match_tool(t)))
        for role in ("read-path", "write-path", "delete-path"):
            for path in paths:
                judge_all(f"{tool} {role} {path}", lambda e, t=tool, ro=role, pa=path: e._judge(
                    "a", e._arg_rules, lambda r: ro in r.roles and r.match_tool(t) and r.match_path(pa)))
        for host in domains | addresses:
            ip = parse_ip(host)
            judge_all(f"{tool} url {host}", lambda e, t=tool, h=host, i=ip: e._judge(
                "u", e._arg_rules, lambda r: "url" in r.roles and r.match_tool(t) and r.match_host(h, i)))
        for category in CATEGORIES:
            for severity in ("low", "medium", "high", "critical"):
                for fid in finding_ids:
                    f = Finding(fid, category, severity, 0, "")  # type: ignore[arg-type]
                    judge_all(f"{tool} argument finding {fid} {category}/{severity}", lambda e, t=tool, f=f: e._judge(
                        "tf", e._tool_finding_rules, lambda r: r.match_tool(t) and r.match_finding(f)))
    reasons = []
    for label, (before, after) in probes:
        if EFFECT_RANK[after.effect] < EFFECT_RANK[before.effect]:
            reasons.append(f"{label}: {before.effect} -> {after.effect}")
    return reasons


def _dm(pattern: str, host: str) -> bool:
    from .network import domain_matches

    return domain_matches(pattern, host)


def _rules_reasons(old: Policy, new: Policy) -> list[str]:
    reasons: list[str] = _probe_reasons(old, new)
    old = old.model_copy(update={"rules": [r for r in old.rules if _structural(r)]})
    new = new.model_copy(update={"rules": [r for r in new.rules if _structural(r)]})
    old_by_key: dict[str, int] = {}
    for rule in old.rules:
        key = _rule_key(rule)
        old_by_key[key] = min(old_by_key.get(key, 9), EFFECT_RANK[rule.effect])
    new_by_key: dict[str, int] = {}
    for rule in new.rules:
        key = _rule_key(rule)
        new_by_key[key] = max(new_by_key.get(key, -1), EFFECT_RANK[rule.effect])
    # every non-deny rule of the new policy must exist in the old one with an effect at most as permissive
    for rule in new.rules:
        if rule.effect == "deny":
            continue
        key = _rule_key(rule)
        if key not in old_by_key:
            reasons.append(f"adds {rule.effect} rule {rule.id!r}")
        elif EFFECT_RANK[rule.effect] < old_by_key[key]:
            reasons.append(f"rule {rule.id!r} becomes {rule.effect}")
    # every deny/escalate rule of the old policy must still be there at least as strict
    for rule in old.rules:
        if rule.effect == "allow":
            continue
        key = _rule_key(rule)
        if new_by_key.get(key, -1) < EFFECT_RANK[rule.effect]:
            reasons.append(f"removes or weakens {rule.effect} rule {rule.id!r}")
    return reasons


def _subset(old: list[Any], new: list[Any]) -> bool:
    return set(map(str, new)) <= set(map(str, old))


def loosening_reasons(old: Policy, new: Policy) -> list[str]:
    reasons = _rules_reasons(old, new)
    if old.mode == "enforce" and new.mode == "observe":
        reasons.append("switches to observe mode")
    if old.locked and not new.locked:
        reasons.append("removes the administrator lock")
    of, nf = old.firewall, new.firewall
    if of.bandit and not nf.bandit:
        reasons.append("turns bandit off")
    if not _subset(nf.bandit_skip, of.bandit_skip) or not _subset(nf.disabled_checks, of.disabled_checks):
        reasons.append("disables firewall checks")
    if nf.max_cell_bytes > of.max_cell_bytes or nf.max_decode_depth < of.max_decode_depth:
        reasons.append("relaxes firewall limits")
    if not _subset(nf.extra_injection_patterns, of.extra_injection_patterns) or not _subset(
            nf.extra_sensitive_paths, of.extra_sensitive_paths):
        reasons.append("drops firewall patterns")
    oe, ne = old.escalation, new.escalation
    if ne.allow_session_approval and not oe.allow_session_approval:
        reasons.append("enables session approvals")
    if ne.timeout_s > oe.timeout_s:
        reasons.append("lengthens the escalation timeout")
    # Sections owned by other subsystems: any change that is not provably stricter counts as loosening.
    for section in ("isolation", "limits", "credentials", "outputs", "audit", "tools", "budgets"):
        if getattr(old, section).model_dump(mode="json") != getattr(new, section).model_dump(mode="json"):
            if not _section_tighter(section, getattr(old, section).model_dump(mode="json"),
                                    getattr(new, section).model_dump(mode="json")):
                reasons.append(f"changes the {section} section")
    return reasons


def _section_tighter(section: str, old: dict[str, Any], new: dict[str, Any]) -> bool:
    if section == "limits":
        for key, value in new.items():
            before = old.get(key)
            if value is None and before is not None:
                return False
            if before is not None and value is not None and value > before:
                return False
        return True
    if section == "isolation":
        # Every field is judged (a loaded policy's isolation applies at the child's next start): a field
        # this check does not know must be unchanged.
        known = {"required_layers", "unsafe", "read_only_paths", "allow_degraded", "loopback_ports", "pass_env"}
        if any(old.get(key) != new.get(key) for key in (set(old) | set(new)) - known):
            return False
        return (set(new["required_layers"]) >= set(old["required_layers"]) and not (new["unsafe"] and not old["unsafe"])
                and set(new["read_only_paths"]) <= set(old["read_only_paths"])
                and not (new["allow_degraded"] and not old["allow_degraded"])
                and set(new["loopback_ports"]) <= set(old["loopback_ports"])
                and set(new["pass_env"]) <= set(old["pass_env"]))
    return False


def is_loosening(old: Policy, new: Policy) -> bool:
    """True when `new` may allow something `old` did not (conservatively)."""
    return bool(loosening_reasons(old, new))
