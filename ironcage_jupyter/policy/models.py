"""Pydantic models of a policy file. Every model forbids unknown keys; every section has defaults."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..audit.settings import AuditSettings
from ..credentials.settings import CredentialSettings
from ..firewall.findings import CATEGORIES
from ..firewall.settings import FirewallSettings
from ..outputs.settings import OutputSettings
from ..sandbox.settings import IsolationSettings, ResourceLimits
from ..tools.settings import BudgetSettings, ToolSettings

Effect = Literal["allow", "deny", "escalate"]
Subject = Literal["cell", "tool", "network", "credential", "magic"]
ArgRole = Literal["read-path", "write-path", "delete-path", "url", "identifier", "opaque"]
SeverityName = Literal["low", "medium", "high", "critical"]

EFFECT_RANK: dict[str, int] = {"allow": 0, "escalate": 1, "deny": 2}

# Which matcher fields make sense for which subject (anything else is an error, not silently ignored).
MATCHERS_BY_SUBJECT: dict[str, frozenset[str]] = {
    "cell": frozenset({"findings", "categories", "severities", "code_patterns"}),
    "magic": frozenset({"magics", "commands"}),
    "tool": frozenset({"tools", "roles", "paths", "not_paths", "domains", "not_domains", "findings", "categories",
                       "severities"}),
    "network": frozenset({"domains", "not_domains", "addresses", "ports", "schemes"}),
    "credential": frozenset({"credentials", "requesters", "hosts"}),
}


def _domain_pattern(value: str) -> str:
    text = value.strip().lower().rstrip(".")
    if not text:
        raise ValueError("empty domain pattern")
    if text == "*":
        return text
    body = text[2:] if text.startswith("*.") else text
    if text != "*" and not re.fullmatch(r"(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*", body):
        raise ValueError(f"invalid domain pattern {value!r} (use `example.com`, `*.example.com` or `*`)")
    if "*" in body:
        raise ValueError(f"invalid domain pattern {value!r}: `*` only as the whole first label")
    return text


class Match(BaseModel):
    """Conditions of a rule. All given fields must hold; within a list any item may match."""

    model_config = ConfigDict(extra="forbid")

    findings: list[str] = Field(default_factory=list, description="Finding ids (globs, e.g. `IC-SHELL-*`, `BANDIT-B6*`).")
    categories: list[str] = Field(default_factory=list, description="Finding categories.")
    severities: list[SeverityName] = Field(default_factory=list, description="Finding severities.")
    code_patterns: list[str] = Field(default_factory=list, description="Regular expressions searched in the cell's raw code.")
    magics: list[str] = Field(default_factory=list,
                              description="Magic names (globs) without `%`; `!` stands for shell escapes (`!cmd`, `x = !cmd`).")
    commands: list[str] = Field(default_factory=list,
                                description="Programs a shell magic runs (globs). Every program in it must match.")
    tools: list[str] = Field(default_factory=list, description="Tool names (globs, e.g. `fs.*`).")
    roles: list[ArgRole] = Field(default_factory=list, description="Argument roles this rule judges.")
    paths: list[str] = Field(default_factory=list,
                             description="Canonical path globs (`${workspace}/**`, `~/data/**`; `*` one segment, `**` any depth).")
    not_paths: list[str] = Field(default_factory=list, description="Path globs excluded from this rule.")
    domains: list[str] = Field(default_factory=list,
                               description="Domain names; `*.example.com` any subdomain, `*` any name. Never match IP addresses.")
    not_domains: list[str] = Field(default_factory=list, description="Domain patterns excluded from this rule.")
    addresses: list[str] = Field(default_factory=list,
                                 description="IP addresses or CIDR networks. The only way to allow an IP destination, "
                                 "and the only way to allow loopback/private/link-local ones.")
    ports: list[int] = Field(default_factory=list, description="Destination ports.")
    schemes: list[str] = Field(default_factory=list, description="URL schemes (`https`, `http`, ...).")
    credentials: list[str] = Field(default_factory=list, description="Credential names (globs).")
    requesters: list[str] = Field(default_factory=list,
                                  description="Who asks for a credential: `cell` or `tool:<name>` (globs).")
    hosts: list[str] = Field(default_factory=list, description="Domain patterns the credential is used toward.")

    @field_validator("code_patterns")
    @classmethod
    def _regexes(cls, value: list[str]) -> list[str]:
        for index, pattern in enumerate(value):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"item {index}: invalid regular expression {pattern!r}: {exc}") from None
        return value

    @field_validator("categories")
    @classmethod
    def _categories(cls, value: list[str]) -> list[str]:
        for item in value:
            if item not in CATEGORIES:
                raise ValueError(f"unknown category {item!r}; known: {', '.join(CATEGORIES)}")
        return value

    @field_validator("domains", "not_domains", "hosts")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        return [_domain_pattern(v) for v in value]

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"invalid IP address or network {item!r}") from None
        return value

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: list[int]) -> list[int]:
        for port in value:
            if not 0 < port < 65536:
                raise ValueError(f"invalid port {port}")
        return value

    @field_validator("paths", "not_paths")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item or "\x00" in item:
                raise ValueError(f"invalid path pattern {item!r}")
        return value


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$", description="Unique rule id, named in decisions.")
    subject: Subject = Field(description="What the rule judges: cell, magic, tool, network or credential.")
    effect: Effect = Field(description="allow, deny or escalate (ask a human). The strictest matching rule wins.")
    reason: str = Field(default="", max_length=500, description="Shown to the user when this rule decides.")
    match: Match = Field(default_factory=Match, description="Conditions; empty means every request of the subject.")

    @model_validator(mode="after")
    def _matchers_fit_subject(self) -> Rule:
        allowed = MATCHERS_BY_SUBJECT[self.subject]
        used = {name for name in Match.model_fields if getattr(self.match, name)}
        wrong = sorted(used - allowed)
        if wrong:
            raise ValueError(f"match field(s) {', '.join(wrong)} do not apply to subject {self.subject!r} "
                             f"(allowed: {', '.join(sorted(allowed))})")
        finding_fields = {"findings", "categories", "severities"}
        argument_fields = {"roles", "paths", "not_paths", "domains", "not_domains"}
        if self.subject == "tool" and used & finding_fields and used & argument_fields:
            raise ValueError("a tool rule judges either argument roles/paths/domains or findings, not both")
        if self.subject == "tool" and used & {"paths", "not_paths", "domains", "not_domains"} and not self.match.roles:
            raise ValueError("tool rules with paths or domains must name the argument roles they apply to")
        return self


class NetworkSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allow_domains: list[str] = Field(default_factory=list,
                                     description="Egress allowlist (domain patterns). Wildcards never match IPs.")
    allow_addresses: list[str] = Field(default_factory=list,
                                       description="IPs/CIDRs allowed as destinations (needed for loopback/private ones).")
    ports: list[int] = Field(default_factory=lambda: [443, 80], description="Ports the allowlists apply to.")

    _domains = field_validator("allow_domains")(lambda cls, v: [_domain_pattern(x) for x in v])
    _addresses = field_validator("allow_addresses")(Match._addresses.__func__)  # type: ignore[attr-defined]
    _ports = field_validator("ports")(Match._ports.__func__)  # type: ignore[attr-defined]


class EscalationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(default=120.0, gt=0, le=86400,
                             description="Seconds to wait for the human's answer; no answer means deny.")
    allow_session_approval: bool = Field(
        default=True,
        description="Offer 'allow the same for this session' (turns only an identical request from escalate into allow).",
    )


class Policy(BaseModel):
    """A complete policy. `extends` is resolved by the loader; the result has `extends` set to None."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="unnamed", max_length=100, description="Policy name shown in `%ironcage policy`.")
    description: str = Field(default="", max_length=2000, description="What the policy is for.")
    extends: str | None = Field(default=None,
                                description="Built-in policy name or a path relative to this file. Rules are merged "
                                "by id (this file wins); sections are merged key by key.")
    locked: bool = Field(default=False,
                         description="Set by an administrator: the policy cannot be loosened from a notebook, not "
                         "even with human approval.")
    mode: Literal["enforce", "observe"] = Field(
        default="enforce",
        description="`observe` records what would be blocked and blocks only the hardcoded invariants.",
    )
    rules: list[Rule] = Field(default_factory=list, description="Rules; order never matters (deny > escalate > allow).")
    firewall: FirewallSettings = Field(default_factory=FirewallSettings, description="Input firewall settings.")
    network: NetworkSettings = Field(default_factory=NetworkSettings, description="Egress allowlist.")
    escalation: EscalationSettings = Field(default_factory=EscalationSettings, description="Asking a human.")
    isolation: IsolationSettings = Field(default_factory=IsolationSettings, description="Sandbox layers.")
    limits: ResourceLimits = Field(default_factory=ResourceLimits, description="Resource limits.")
    credentials: CredentialSettings = Field(default_factory=CredentialSettings, description="Credential grants.")
    outputs: OutputSettings = Field(default_factory=OutputSettings, description="Output firewall.")
    audit: AuditSettings = Field(default_factory=AuditSettings, description="Audit log.")
    tools: ToolSettings = Field(default_factory=ToolSettings, description="Tool calls.")
    budgets: BudgetSettings = Field(default_factory=BudgetSettings, description="Runaway budgets.")

    @field_validator("rules")
    @classmethod
    def _unique_ids(cls, rules: list[Rule]) -> list[Rule]:
        seen: set[str] = set()
        for rule in rules:
            if rule.id in seen:
                raise ValueError(f"duplicate rule id {rule.id!r}")
            seen.add(rule.id)
        return rules


def policy_json_schema() -> dict:
    return Policy.model_json_schema()
