"""Is a new policy looser than the active one? Conservative: anything not provably at least as strict
counts as loosening (and then needs a human, or is refused when the active policy is locked)."""

from __future__ import annotations

import json
from typing import Any

from .models import EFFECT_RANK, Policy, Rule


def _rule_key(rule: Rule) -> str:
    return json.dumps({"subject": rule.subject, "match": rule.match.model_dump(mode="json")}, sort_keys=True)


def _rules_reasons(old: Policy, new: Policy) -> list[str]:
    reasons: list[str] = []
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
    if not _subset(old.network.allow_domains, new.network.allow_domains):
        reasons.append("widens network.allow_domains")
    if not _subset(old.network.allow_addresses, new.network.allow_addresses):
        reasons.append("widens network.allow_addresses")
    if not _subset(old.network.ports, new.network.ports):
        reasons.append("widens network.ports")
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
        return (set(new["required_layers"]) >= set(old["required_layers"]) and not (new["unsafe"] and not old["unsafe"])
                and set(new["read_only_paths"]) <= set(old["read_only_paths"]))
    return False


def is_loosening(old: Policy, new: Policy) -> bool:
    """True when `new` may allow something `old` did not (conservatively)."""
    return bool(loosening_reasons(old, new))
