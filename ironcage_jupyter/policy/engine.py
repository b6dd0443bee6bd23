"""The policy engine: hardcoded invariants first, then deny-overrides over every matching rule, default deny.

A request is split into elements (the cell itself, each finding, each magic; a tool call, each typed
argument, each finding of its arguments; a network destination; a credential request). Every element must
be covered by at least one matching rule, otherwise it is denied ("default.deny"). An element's effect is
the strictest of its matching rules (deny > escalate > allow) and the request's effect the strictest over
its elements, so the order of rules never matters. Path and host canonicalisation happen before the rule
evaluation, which is pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import fnmatch
import hashlib
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..firewall import Finding, MagicUse, ScreenResult, screen_arguments, screen_cell
from .models import EFFECT_RANK, Effect, Policy, Rule
from .network import (
    LOCAL_NAMES,
    HostError,
    domain_matches,
    effective_ip,
    is_restricted,
    normalize_host,
    parse_ip,
    split_url,
)
from .paths import PathError, inspect_path, within_any
from .subjects import PATH_ROLES, CredentialRequest, NetworkRequest, PolicyContext, ToolCall

DEFAULT_DENY = "default.deny"
_RANK_EFFECT = {v: k for k, v in EFFECT_RANK.items()}


# ------------------------------------------------------------------ results
@dataclass(frozen=True)
class ElementDecision:
    element: str
    effect: Effect
    rules: tuple[str, ...]
    reason: str
    invariant: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"element": self.element, "effect": self.effect, "rules": list(self.rules), "reason": self.reason,
                "invariant": self.invariant}


@dataclass(frozen=True)
class Decision:
    """The outcome for one request. `effect` is what the kernel must do; with an `observe` policy it is
    `allow` and `would_have` keeps the enforced outcome (`enforced` is False)."""

    effect: Effect
    rules: list[str]
    reason: str
    findings: list[Finding] = field(default_factory=list)
    enforced: bool = True
    would_have: Effect | None = None
    invariant: bool = False
    subject: str = ""
    summary: str = ""
    request_key: str = ""
    elements: list[ElementDecision] = field(default_factory=list)
    session_approved: bool = False

    @property
    def allowed(self) -> bool:
        return self.effect == "allow"

    def to_dict(self) -> dict[str, Any]:
        return {
            "effect": self.effect,
            "rules": list(self.rules),
            "reason": self.reason,
            "findings": [f.to_dict() for f in self.findings],
            "enforced": self.enforced,
            "would_have": self.would_have,
            "invariant": self.invariant,
            "subject": self.subject,
            "summary": self.summary,
            "request_key": self.request_key,
            "session_approved": self.session_approved,
            "elements": [e.to_dict() for e in self.elements],
        }


class ApprovalCache:
    """'Allow the same for this session': remembers canonical request keys. It only ever turns an
    `escalate` decision for an identical request into `allow`; deny and invariants are untouched."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._keys: set[str] = set()

    def approve(self, decision: Decision) -> bool:
        """Remember `decision`'s request. Returns False (and remembers nothing) when not allowed."""
        if not self.enabled or decision.invariant or (decision.would_have or decision.effect) != "escalate":
            return False
        if not decision.request_key:
            return False
        self._keys.add(decision.request_key)
        return True

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def clear(self) -> None:
        self._keys.clear()


def request_key(kind: str, payload: Any) -> str:
    data = json.dumps([kind, payload], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()


# ------------------------------------------------------------------ compiled rules
def _glob_regex(patterns: Iterable[str]) -> re.Pattern[str] | None:
    items = list(patterns)
    if not items:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in items))


def _path_glob_regex(pattern: str, workspace: str, home: str) -> re.Pattern[str]:
    """`*` one segment, `**` any depth; the literal prefix is canonicalised like the paths it is matched to."""
    from .paths import canonicalize

    text = pattern.replace("${workspace}", workspace).replace("${home}", home)
    if text == "~" or text.startswith("~/"):
        text = home + text[1:]
    first_glob = min([i for i in (text.find("*"), text.find("?"), text.find("[")) if i >= 0], default=len(text))
    prefix_end = text.rfind("/", 0, first_glob + 1) if first_glob < len(text) else len(text)
    prefix, rest = text[:prefix_end], text[prefix_end:]
    prefix = canonicalize(prefix or "/", workspace, home) if prefix else "/"
    if prefix == "/":
        prefix = ""
    out = re.escape(prefix)
    i = 0
    while i < len(rest):
        if rest.startswith("/**", i):
            out += "(?:/.*)?"
            i += 3
        elif rest.startswith("**", i):
            out += ".*"
            i += 2
        elif rest[i] == "*":
            out += "[^/]*"
            i += 1
        elif rest[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(rest[i])
            i += 1
    return re.compile(out or "/")


@dataclass
class CompiledRule:
    id: str
    subject: str
    effect: Effect
    rank: int
    reason: str
    findings: re.Pattern[str] | None = None
    categories: frozenset[str] = frozenset()
    severities: frozenset[str] = frozenset()
    code_patterns: tuple[re.Pattern[str], ...] = ()
    magics: re.Pattern[str] | None = None
    commands: re.Pattern[str] | None = None
    tool_exact: frozenset[str] = frozenset()
    tools: re.Pattern[str] | None = None
    has_tools: bool = False
    roles: frozenset[str] = frozenset()
    paths: tuple[re.Pattern[str], ...] = ()
    not_paths: tuple[re.Pattern[str], ...] = ()
    domains: tuple[str, ...] = ()
    not_domains: tuple[str, ...] = ()
    addresses: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    ports: frozenset[int] = frozenset()
    schemes: frozenset[str] = frozenset()
    credentials: re.Pattern[str] | None = None
    requesters: re.Pattern[str] | None = None
    hosts: tuple[str, ...] = ()
    _domain_sets: Any = field(default=None, init=False, repr=False)
    _not_domain_sets: Any = field(default=None, init=False, repr=False)

    @property
    def judges_findings(self) -> bool:
        return bool(self.findings is not None or self.categories or self.severities)

    # -- predicates (pure)
    def match_finding(self, finding: Finding) -> bool:
        return ((self.findings is None or self.findings.match(finding.id) is not None)
                and (not self.categories or finding.category in self.categories)
                and (not self.severities or finding.severity in self.severities))

    def match_code(self, code: str) -> bool:
        return not self.code_patterns or any(p.search(code) for p in self.code_patterns)

    def match_magic(self, magic: MagicUse) -> bool:
        if self.magics is not None and self.magics.match(magic.name) is None:
            return False
        if self.commands is not None:
            if not magic.commands:
                return False
            return all(self.commands.match(c) is not None for c in magic.commands)
        return True

    def match_tool(self, name: str) -> bool:
        if not self.has_tools:
            return True
        return name in self.tool_exact or (self.tools is not None and self.tools.match(name) is not None)

    def match_path(self, path: str) -> bool:
        if self.paths and not any(p.fullmatch(path) for p in self.paths):
            return False
        return not any(p.fullmatch(path) for p in self.not_paths)

    def match_host(self, host: str, ip: Any) -> bool:
        """`host` is normalised; `ip` is its parsed address or None for a name. Domain patterns never
        match an IP; addresses never match a name."""
        if self.domains or self.addresses:
            if ip is None:
                ok = bool(self.domains) and _names_match(self._domain_sets, host)
            else:
                ok = any(ip in net or effective_ip(ip) in net for net in self.addresses)
            if not ok:
                return False
        return not (ip is None and self.not_domains and _names_match(self._not_domain_sets, host))

    def __post_init__(self) -> None:
        self._domain_sets = _compile_domains(self.domains)
        self._not_domain_sets = _compile_domains(self.not_domains)


DomainSets = tuple[frozenset[str], tuple[str, ...], bool]


def _compile_domains(patterns: Iterable[str]) -> DomainSets:
    """(exact names, `.suffix`es, `*` present) for fast matching of a normalised name."""
    exact, suffixes, star = set(), [], False
    for pattern in patterns:
        if pattern == "*":
            star = True
        elif pattern.startswith("*."):
            suffixes.append(pattern[1:])
        else:
            exact.add(pattern)
    return frozenset(exact), tuple(suffixes), star


def _names_match(sets: DomainSets, host: str) -> bool:
    """Same semantics as network.domain_matches for a host already known not to be an IP."""
    exact, suffixes, star = sets
    if host in exact:
        return True
    local = host in LOCAL_NAMES or host.endswith(".localhost")
    if star and not local:
        return True
    return bool(suffixes) and not host.endswith(".localhost") and host.endswith(suffixes)


def compile_rule(rule: Rule, workspace: str, home: str) -> CompiledRule:
    m = rule.match
    exact = frozenset(t for t in m.tools if not any(c in t for c in "*?["))
    globs = [t for t in m.tools if t not in exact]
    return CompiledRule(
        id=rule.id,
        subject=rule.subject,
        effect=rule.effect,
        rank=EFFECT_RANK[rule.effect],
        reason=rule.reason or f"rule {rule.id}",
        findings=_glob_regex(m.findings),
        categories=frozenset(m.categories),
        severities=frozenset(m.severities),
        code_patterns=tuple(re.compile(p) for p in m.code_patterns),
        magics=_glob_regex(m.magics),
        commands=_glob_regex(m.commands),
        tool_exact=exact,
        tools=_glob_regex(globs),
        has_tools=bool(m.tools),
        roles=frozenset(m.roles),
        paths=tuple(_path_glob_regex(p, workspace, home) for p in m.paths),
        not_paths=tuple(_path_glob_regex(p, workspace, home) for p in m.not_paths),
        domains=tuple(m.domains),
        not_domains=tuple(m.not_domains),
        addresses=tuple(ipaddress.ip_network(a, strict=False) for a in m.addresses),
        ports=frozenset(m.ports),
        schemes=frozenset(s.lower() for s in m.schemes),
        credentials=_glob_regex(m.credentials),
        requesters=_glob_regex(m.requesters),
        hosts=tuple(m.hosts),
    )


def section_rules(policy: Policy) -> list[Rule]:
    """Rules implied by the `network` and `credentials` sections (ids `network.*`, `credentials.*`)."""
    rules: list[Rule] = []
    net = policy.network
    if net.allow_domains:
        rules.append(Rule.model_validate({
            "id": "network.allow_domains", "subject": "network", "effect": "allow",
            "reason": "destination is on the policy's egress allowlist",
            "match": {"domains": net.allow_domains, "ports": net.ports},
        }))
    if net.allow_addresses:
        rules.append(Rule.model_validate({
            "id": "network.allow_addresses", "subject": "network", "effect": "allow",
            "reason": "address named in the policy's egress allowlist",
            "match": {"addresses": net.allow_addresses, "ports": net.ports},
        }))
    for name, grant in sorted(policy.credentials.grants.items()):
        requesters = (["cell"] if grant.cells else []) + [f"tool:{t}" for t in grant.tools]
        if not requesters:
            continue
        match: dict[str, Any] = {"credentials": [name], "requesters": requesters}
        if grant.hosts:
            match["hosts"] = grant.hosts
        rules.append(Rule.model_validate({
            "id": f"credentials.grants.{name}"[:100], "subject": "credential", "effect": "allow",
            "reason": f"credential {name!r} is granted to this requester", "match": match,
        }))
    return rules


# ------------------------------------------------------------------ engine
class PolicyEngine:
    """Decides cells, tool calls, network destinations and credential requests for one policy."""

    def __init__(self, policy: Policy, context: PolicyContext) -> None:
        self.context = context
        self.reload(policy)

    def reload(self, policy: Policy) -> None:
        """Switch this engine to `policy` in place (holders of the engine see the new policy). Session
        approvals are dropped: they were given under the old rules."""
        self.policy = policy
        self.approvals = ApprovalCache(policy.escalation.allow_session_approval)
        context = self.context
        compiled = [compile_rule(r, context.workspace, context.home) for r in [*policy.rules, *section_rules(policy)]]
        self.rules = compiled
        self._cell_rules = [r for r in compiled if r.subject == "cell" and not r.judges_findings]
        self._finding_rules = [r for r in compiled if r.subject == "cell" and r.judges_findings]
        self._magic_rules = [r for r in compiled if r.subject == "magic"]
        self._tool_rules = [r for r in compiled if r.subject == "tool" and not r.roles and not r.judges_findings]
        self._arg_rules = [r for r in compiled if r.subject == "tool" and r.roles]
        self._tool_finding_rules = [r for r in compiled if r.subject == "tool" and r.judges_findings]
        self._network_rules = [r for r in compiled if r.subject == "network"]
        # domain index: exact name / suffix -> rules; rules without a domain list are always candidates
        self._net_exact: dict[str, list[CompiledRule]] = {}
        self._net_suffix: dict[str, list[CompiledRule]] = {}
        self._net_always: list[CompiledRule] = []
        self._net_addresses: list[CompiledRule] = []
        for rule in self._network_rules:
            exact, suffixes, star = rule._domain_sets
            if star or not rule.domains and not rule.addresses:
                self._net_always.append(rule)
                continue
            for name in exact:
                self._net_exact.setdefault(name, []).append(rule)
            for suffix in suffixes:
                self._net_suffix.setdefault(suffix, []).append(rule)
            if rule.addresses:
                self._net_addresses.append(rule)
        self._credential_rules = [r for r in compiled if r.subject == "credential"]
        # exact tool names -> rules, so a 100-rule policy touches only the few rules that can match
        self._tool_index: dict[str, list[CompiledRule]] = {}
        self._tool_wild: list[CompiledRule] = []
        for rule in self._tool_rules:
            if rule.has_tools and rule.tools is None:
                for name in rule.tool_exact:
                    self._tool_index.setdefault(name, []).append(rule)
            else:
                self._tool_wild.append(rule)

    # -- generic combination
    @staticmethod
    def _judge(element: str, rules: Iterable[CompiledRule], predicate: Callable[[CompiledRule], bool]) -> ElementDecision:
        best = -1
        ids: list[str] = []
        reason = ""
        for rule in rules:
            if not predicate(rule):
                continue
            if rule.rank > best:
                best, ids, reason = rule.rank, [rule.id], rule.reason
            elif rule.rank == best:
                ids.append(rule.id)
                if rule.id < min(ids[:-1]):
                    reason = rule.reason
        if best < 0:
            return ElementDecision(element, "deny", (DEFAULT_DENY,), f"no rule covers {element} (default deny)")
        return ElementDecision(element, _RANK_EFFECT[best], tuple(sorted(ids)), reason)  # type: ignore[arg-type]

    def _combine(self, subject: str, summary: str, key: str | Callable[[], str], elements: list[ElementDecision],
                 findings: list[Finding]) -> Decision:
        """`key` may be a callable: the canonical request key is only needed (and computed) for escalate
        decisions (session approvals) unless it is already known."""
        top = max(EFFECT_RANK[e.effect] for e in elements)
        if callable(key):
            key = key() if top == EFFECT_RANK["escalate"] else ""
        deciding = [e for e in elements if EFFECT_RANK[e.effect] == top]
        invariant = any(e.invariant for e in deciding)
        if invariant:
            deciding = [e for e in deciding if e.invariant]
        effect: Effect = _RANK_EFFECT[top]  # type: ignore[assignment]
        rules = sorted({r for e in deciding for r in e.rules})
        first = deciding[0]
        reason = f"{first.element}: {first.reason}"
        if len(deciding) > 1:
            reason += f" (and {len(deciding) - 1} more)"
        decision = Decision(effect, rules, reason, findings, True, None, invariant, subject, summary, key, elements)
        if effect == "escalate" and key in self.approvals:
            return Decision("allow", [*rules, "session.approval"], f"approved for this session: {reason}", findings,
                            True, "escalate", False, subject, summary, key, elements, session_approved=True)
        if self.policy.mode == "observe" and not invariant and effect != "allow":
            return Decision("allow", rules, f"observe mode, would have been {effect}: {reason}", findings, False,
                            effect, False, subject, summary, key, elements)
        return decision

    def decide(self, request: ScreenResult | str | ToolCall | NetworkRequest | CredentialRequest) -> Decision:
        """Dispatch on the subject model: a cell (ScreenResult or raw code), a ToolCall, a NetworkRequest
        or a CredentialRequest."""
        if isinstance(request, ScreenResult | str):
            return self.decide_cell(request)
        if isinstance(request, ToolCall):
            return self.decide_tool(request.name, request.args)
        if isinstance(request, NetworkRequest):
            return self.decide_network(request.host, request.port, request.scheme, request.resolved_ip)
        if isinstance(request, CredentialRequest):
            return self.decide_credential(request.name, request.requester, request.host)
        raise TypeError(f"cannot decide a {type(request).__name__}")

    # -- cells
    def decide_cell(self, cell: ScreenResult | str) -> Decision:
        """Decide a cell from its screening result (or its raw code, screened here with the policy's
        firewall settings)."""
        screen = cell if isinstance(cell, ScreenResult) else screen_cell(cell, self.policy.firewall)
        elements: list[ElementDecision] = []
        # invariant: literals that resolve into protected paths
        for use in screen.paths:
            try:
                canonical = inspect_path(use.path, self.context.workspace, self.context.home).path
            except PathError:
                continue
            if within_any(canonical, self.context.protected_paths):
                elements.append(ElementDecision(f"path {use.path!r} (line {use.line})", "deny",
                                                ("invariant.protected-path",),
                                                f"{canonical} is protected (Iron Cage state, Jupyter runtime or "
                                                f"home secrets)", True))
        code = screen.raw
        elements.append(self._judge("the cell", self._cell_rules, lambda r: r.match_code(code)))
        for finding in screen.findings:
            elements.append(self._judge(
                f"finding {finding.id} (line {finding.line})", self._finding_rules,
                lambda r, f=finding: r.match_finding(f) and r.match_code(code)))  # type: ignore[misc]
        for magic in screen.magics:
            elements.append(self._judge(f"magic {magic.display} (line {magic.line})", self._magic_rules,
                                        lambda r, m=magic: r.match_magic(m)))  # type: ignore[misc]
        first_line = code.strip().splitlines()[0][:80] if code.strip() else "(empty cell)"
        return self._combine("cell", first_line, request_key("cell", code), elements, list(screen.findings))

    # -- tools
    def decide_tool(self, name: str, args: Mapping[str, Any], findings: list[Finding] | None = None) -> Decision:
        """Decide a tool call. Arguments are checked against the tool's spec (unknown tools or argument
        names are denied), path arguments canonicalised, and all strings screened by the firewall."""
        summary = f"{name}({', '.join(f'{k}={str(v)[:40]!r}' for k, v in list(args.items())[:6])})"
        spec = self.context.tools.get(name)
        if spec is None:
            element = ElementDecision(f"tool {name!r}", "deny", ("invariant.unknown-tool",),
                                      "unknown tools are denied", True)
            return self._combine("tool", summary, lambda: request_key("tool", [name, _jsonable(args)]), [element], [])
        elements: list[ElementDecision] = []
        canonical_args: dict[str, Any] = {}
        for arg in sorted(set(args) - set(spec.params)):
            elements.append(ElementDecision(f"argument {arg!r}", "deny", ("invariant.unknown-argument",),
                                            f"{name} has no argument {arg!r}", True))
        for arg in sorted(spec.required - set(args)):
            elements.append(ElementDecision(f"argument {arg!r}", "deny", ("invariant.missing-argument",),
                                            f"{name} requires argument {arg!r}", True))
        arg_elements: list[tuple[str, str, Any]] = []
        for arg, value in sorted(args.items()):
            role = spec.params.get(arg)
            if role is None:
                continue
            if role in PATH_ROLES:
                if not isinstance(value, str):
                    elements.append(ElementDecision(f"argument {arg!r}", "deny", ("invariant.bad-argument",),
                                                    f"{arg} must be a path string", True))
                    continue
                try:
                    info = inspect_path(value, self.context.workspace, self.context.home)
                except PathError as exc:
                    elements.append(ElementDecision(f"argument {arg!r}", "deny", ("invariant.bad-argument",),
                                                    str(exc), True))
                    continue
                canonical_args[arg] = info.path
                if within_any(info.path, self.context.protected_paths):
                    elements.append(ElementDecision(f"{role} {value!r}", "deny", ("invariant.protected-path",),
                                                    f"{info.path} is protected", True))
                    continue
                if info.hardlinked:
                    elements.append(ElementDecision(f"{role} {value!r}", "deny", ("invariant.hard-link",),
                                                    f"{info.path} has several hard links and may be a file "
                                                    f"outside the allowed trees", True))
                    continue
                arg_elements.append((arg, role, info.path))
            elif role == "url":
                if not isinstance(value, str):
                    elements.append(ElementDecision(f"argument {arg!r}", "deny", ("invariant.bad-argument",),
                                                    f"{arg} must be a URL string", True))
                    continue
                try:
                    scheme, host, port = split_url(value)
                    host = normalize_host(host)
                except HostError as exc:
                    elements.append(ElementDecision(f"argument {arg!r}", "deny", ("invariant.bad-argument",),
                                                    str(exc), True))
                    continue
                canonical_args[arg] = f"{scheme}://{host}:{port}"
                arg_elements.append((arg, role, (scheme, host, port)))
            else:
                canonical_args[arg] = _jsonable(value)
        for _arg, arg_role, value in arg_elements:
            if arg_role == "url":
                scheme, host, port = value
                ip = parse_ip(host)
                if ip is not None and is_restricted(ip):
                    named = any(r.addresses and (ip in n or effective_ip(ip) in n)
                                for r in self._arg_rules if "url" in r.roles for n in r.addresses)
                    if not named:
                        elements.append(ElementDecision(f"url {host}", "deny", ("invariant.restricted-address",),
                                                        f"{host} is a loopback/private/link-local address", True))
                        continue
                elements.append(self._judge(
                    f"url {scheme}://{host}:{port}", self._arg_rules,
                    lambda r, h=host, i=ip: "url" in r.roles and r.match_tool(name) and r.match_host(h, i)))  # type: ignore[misc]
            else:
                elements.append(self._judge(
                    f"{arg_role} {value}", self._arg_rules,
                    lambda r, ro=arg_role, p=value: ro in r.roles and r.match_tool(name) and r.match_path(p)))  # type: ignore[misc]
        candidates = self._tool_index.get(name, []) + self._tool_wild
        elements.append(self._judge(f"tool {name}", candidates, lambda r: r.match_tool(name)))
        if findings is None:
            findings = screen_arguments(name, args, self.policy.firewall)
        for finding in findings:
            elements.append(self._judge(f"finding {finding.id}", self._tool_finding_rules,
                                        lambda r, f=finding: r.match_tool(name) and r.match_finding(f)))  # type: ignore[misc]
        key = lambda: request_key("tool", [name, canonical_args])  # noqa: E731
        return self._combine("tool", summary, key, elements, list(findings))

    # -- network
    def decide_network(self, host: str, port: int | None = None, scheme: str | None = None,
                       resolved_ip: str | None = None) -> Decision:
        """Decide a destination. IP literals in any spelling are parsed; domain patterns never match them;
        loopback/private/link-local addresses are refused unless a rule names them in `addresses`.
        `resolved_ip` (what the proxy resolved the name to) is held to the same address rule."""
        summary = f"{host}:{port}" if port else host
        try:
            norm = normalize_host(host)
        except HostError as exc:
            element = ElementDecision(f"destination {host!r}", "deny", ("invariant.bad-host",), str(exc), True)
            return self._combine("network", summary, lambda: request_key("network", [host, port, scheme]), [element], [])
        ip = parse_ip(norm)
        request = NetworkRequest(norm, port, (scheme or "").lower() or None, resolved_ip)
        key = lambda: request_key("network", [norm if ip is None else str(ip), port, request.scheme])  # noqa: E731
        elements: list[ElementDecision] = []
        checked_ips = [ip] if ip is not None else []
        if resolved_ip is not None:
            rip = parse_ip(resolved_ip)
            if rip is None:
                elements.append(ElementDecision("resolved address", "deny", ("invariant.bad-host",),
                                                f"unparseable resolved address {resolved_ip!r}", True))
            else:
                checked_ips.append(rip)
        for candidate in checked_ips:
            if is_restricted(candidate) and not self._address_named(candidate, port, request.scheme):
                elements.append(ElementDecision(f"address {candidate}", "deny", ("invariant.restricted-address",),
                                                f"{candidate} is loopback/private/link-local/reserved and no rule "
                                                f"names it", True))
        if ip is None and (norm in LOCAL_NAMES or norm.endswith(".localhost")):
            if not any(r.effect == "allow" and norm in r.domains for r in self._network_rules):
                elements.append(ElementDecision(f"host {norm}", "deny", ("invariant.restricted-address",),
                                                "localhost names are refused unless named exactly", True))
        elements.append(self._judge(f"destination {summary}", self._network_candidates(norm, ip),
                                    lambda r: self._match_network(r, request, ip)))
        return self._combine("network", summary, key, elements, [])

    def _network_candidates(self, host: str, ip: Any) -> list[CompiledRule]:
        if ip is not None:
            return self._net_always + self._net_addresses
        found: dict[int, CompiledRule] = {id(r): r for r in self._net_exact.get(host, ())}
        index = host.find(".")
        while index >= 0:
            for rule in self._net_suffix.get(host[index:], ()):
                found[id(rule)] = rule
            index = host.find(".", index + 1)
        return self._net_always + list(found.values())

    def _address_named(self, ip: Any, port: int | None, scheme: str | None) -> bool:
        for rule in self._network_rules:
            if rule.effect != "deny" and rule.addresses and any(ip in n or effective_ip(ip) in n for n in rule.addresses):
                if (not rule.ports or port in rule.ports) and (not rule.schemes or scheme in rule.schemes):
                    return True
        return False

    @staticmethod
    def _match_network(rule: CompiledRule, request: NetworkRequest, ip: Any) -> bool:
        if rule.ports and request.port not in rule.ports:
            return False
        if rule.schemes and request.scheme not in rule.schemes:
            return False
        return rule.match_host(request.host, ip)

    # -- credentials
    def decide_credential(self, name: str, requester: str = "cell", host: str | None = None) -> Decision:
        """Decide a credential request. `requester` is `cell` or `tool:<name>`; `host` is where the
        credential will be sent (if known)."""
        norm_host = None
        if host is not None:
            try:
                norm_host = normalize_host(host)
            except HostError as exc:
                element = ElementDecision("credential host", "deny", ("invariant.bad-host",), str(exc), True)
                return self._combine("credential", name, lambda: request_key("credential", [name, requester, host]),
                                     [element], [])
        request = CredentialRequest(name, requester, norm_host)
        summary = f"credential {name} for {requester}" + (f" -> {norm_host}" if norm_host else "")

        def predicate(rule: CompiledRule) -> bool:
            if rule.credentials is not None and rule.credentials.match(request.name) is None:
                return False
            if rule.requesters is not None and rule.requesters.match(request.requester) is None:
                return False
            if rule.hosts:
                if request.host is None or not any(domain_matches(d, request.host) for d in rule.hosts):
                    return False
            return True

        element = self._judge(summary, self._credential_rules, predicate)
        return self._combine("credential", summary, lambda: request_key("credential", [name, requester, norm_host]),
                             [element], [])

    # -- policy changes
    def decide_policy_change(self, new_policy: Policy) -> Decision:
        """Invariant: a policy may always be tightened; loosening needs a human (escalate) and is refused
        when the active policy is locked."""
        from .compare import loosening_reasons

        reasons = loosening_reasons(self.policy, new_policy)
        key = request_key("policy", new_policy.model_dump(mode="json"))
        summary = f"load policy {new_policy.name!r}"
        if not reasons:
            element = ElementDecision("policy change", "allow", ("invariant.tightening",),
                                      "the new policy is not looser than the active one")
        elif self.policy.locked:
            element = ElementDecision("policy change", "deny", ("invariant.locked",),
                                      f"the active policy is locked by an administrator; the new one loosens it: "
                                      f"{'; '.join(reasons[:3])}", True)
        else:
            element = ElementDecision("policy change", "escalate", ("invariant.loosening",),
                                      f"the new policy loosens the active one: {'; '.join(reasons[:3])}", True)
        decision = self._combine("policy", summary, key, [element], [])
        if element.effect == "escalate":
            # never auto-approved, never relaxed by observe mode
            return Decision("escalate", list(element.rules), f"{element.element}: {element.reason}", [], True, None,
                            True, "policy", summary, key, [element])
        return decision


def _jsonable(value: Any, depth: int = 0) -> Any:
    if depth > 20:
        return "..."
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, depth + 1) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [_jsonable(v, depth + 1) for v in value]
    return repr(value)


__all__ = ["ApprovalCache", "CompiledRule", "Decision", "ElementDecision", "PolicyEngine", "ToolCall", "request_key"]
