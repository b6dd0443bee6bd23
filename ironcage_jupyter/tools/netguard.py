"""Network destination checks shared by http.request and the egress proxy (SSRF guard).

A destination is allowed only if (1) the host matches the allowlist, where a `*` wildcard never
matches an IP literal, and (2) every address the name resolves to is public, or is named explicitly
(an IP literal or CIDR entry). The caller then connects to the checked address itself (pinning), so a
second DNS answer (rebinding) cannot swap it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]


class DestinationRefused(Exception):
    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(reason)
        self.rule = rule
        self.reason = reason


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a host string denotes by itself, in any form a resolver would accept.

    `inet_aton` accepts the BSD forms getaddrinfo accepts too: decimal `2130706433`, octal
    `0177.0.0.1`, hex `0x7f.1`, short `127.1`; brackets and zone ids are handled for IPv6.
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if "%" in text:  # IPv6 zone id: link-local by construction
        text = text.split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if text and all(c in "0123456789abcdefxABCDEFX." for c in text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text.rstrip(".")))
        except (OSError, ValueError):
            return None
    return None


def unwrap(ip: IPAddress) -> IPAddress:
    """The IPv4 address hidden in IPv4-mapped, 6to4, Teredo or NAT64 IPv6 forms, if any."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip.teredo is not None:
            return ip.teredo[1]
        if ip in ipaddress.IPv6Network("64:ff9b::/96"):
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def is_public(ip: IPAddress) -> bool:
    inner = unwrap(ip)
    return bool(inner.is_global and not inner.is_multicast and ip.is_global and not ip.is_multicast)


def normalize_host(host: str) -> str:
    """Lower-case, strip one trailing dot, IDNA-encode; refuse anything that is not a host name."""
    text = host.strip().lower()
    if text.startswith("[") and text.endswith("]"):
        return text[1:-1]
    if text.endswith("."):
        text = text[:-1]
    if not text or any(c in text for c in "/\\@ \t\r\n\x00?#"):
        raise DestinationRefused("network.bad_host", f"not a host name: {host!r}")
    try:
        text = text.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise DestinationRefused("network.bad_host", f"not a valid host name: {host!r}") from exc
    return text


@dataclass(frozen=True)
class AllowEntry:
    pattern: str
    port: int | None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None

    @classmethod
    def parse(cls, text: str) -> AllowEntry:
        raw = text.strip().lower()
        port: int | None = None
        if raw.startswith("["):
            host, _, rest = raw[1:].partition("]")
            if rest.startswith(":"):
                port = int(rest[1:])
        elif raw.count(":") == 1:
            host, _, port_text = raw.partition(":")
            port = int(port_text) if port_text not in ("", "*") else None
        else:
            host = raw
        host = host.rstrip(".") if not host.endswith("*") else host
        network = None
        try:
            network = ipaddress.ip_network(host, strict=False)
        except ValueError:
            literal = parse_ip_literal(host)
            if literal is not None:
                network = ipaddress.ip_network(literal)
        return cls(pattern=host, port=port, network=network)

    def matches_host(self, host: str, literal: IPAddress | None) -> bool:
        if self.network is not None:
            return literal is not None and self.names_address(literal)
        if literal is not None:
            return False  # name patterns, wildcards above all, never match an IP literal
        if "*" in self.pattern or "?" in self.pattern or "[" in self.pattern:
            if self.pattern.startswith("*."):
                suffix = self.pattern[1:]
                return host.endswith(suffix) and len(host) > len(suffix)
            return fnmatch.fnmatchcase(host, self.pattern)
        return host == self.pattern

    def matches_port(self, port: int) -> bool:
        return self.port is None or self.port == port

    def names_address(self, ip: IPAddress) -> bool:
        return self.network is not None and (ip in self.network or unwrap(ip) in self.network)


@dataclass
class HostAllowlist:
    """Egress allowlist: `example.com`, `*.example.com`, `api.example.com:443`, `127.0.0.1:8080`, `10.0.0.0/8`."""

    entries: list[AllowEntry] = field(default_factory=list)

    @classmethod
    def from_strings(cls, items: Iterable[str]) -> HostAllowlist:
        return cls([AllowEntry.parse(item) for item in items])

    def match(self, host: str, port: int) -> AllowEntry | None:
        literal = parse_ip_literal(host)
        for entry in self.entries:
            if entry.matches_host(host, literal) and entry.matches_port(port):
                return entry
        return None

    def names_address(self, ip: IPAddress, port: int) -> bool:
        return any(entry.names_address(ip) and entry.matches_port(port) for entry in self.entries)


async def system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class CheckedDestination:
    host: str
    port: int
    address: str
    named_private: bool
    rule: str = "network.allow"
    reason: str = ""


async def resolve_addresses(host: str, port: int, resolver: Resolver = system_resolver) -> list[IPAddress]:
    """Every address `host` stands for: itself if it is an IP literal, else one DNS answer."""
    literal = parse_ip_literal(host)
    if literal is not None:
        return [literal]
    try:
        answers = await resolver(host, port)
    except (OSError, UnicodeError) as exc:
        raise DestinationRefused("network.unresolvable", f"cannot resolve {host}: {exc}") from exc
    addresses: list[IPAddress] = []
    for answer in answers:
        parsed = parse_ip_literal(answer)
        if parsed is None:
            raise DestinationRefused("network.unresolvable", f"{host} resolved to a non-address {answer!r}")
        addresses.append(parsed)
    if not addresses:
        raise DestinationRefused("network.unresolvable", f"{host} resolved to no address")
    return addresses


async def check_addresses(
    host: str, port: int, allowlist: HostAllowlist, resolver: Resolver = system_resolver
) -> CheckedDestination:
    """Resolve once and vet every answer; return the address to connect to (pinned)."""
    addresses = await resolve_addresses(host, port, resolver)
    named_private = False
    for ip in addresses:
        if is_public(ip):
            continue
        if allowlist.names_address(ip, port):
            named_private = True
            continue
        raise DestinationRefused(
            "network.private_address",
            f"{host} resolves to {ip}, a loopback/private/link-local/reserved address the policy does not name",
        )
    return CheckedDestination(host=host, port=port, address=str(addresses[0]), named_private=named_private)


class NetworkGate:
    """Decides one destination: policy (or the allowlist alone), then the address checks; returns the pin.

    `decide(host, port, resolved_ip)` is the policy engine's `decide_network` when one is wired (see
    adapters.engine_network_decider); it is asked for the name, then for every resolved address, and
    each answer needs an `effect` of "allow". Without it the allowlist decides and private addresses
    must be named by an IP/CIDR entry. Either way only checked addresses are ever connected to.
    """

    def __init__(
        self,
        allowlist: HostAllowlist,
        decide: Callable[[str, int, str | None], object] | None = None,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.allowlist = allowlist
        self.decide = decide
        self.resolver = resolver

    def decide_host(self, host: str, port: int, resolved_ip: str | None = None) -> tuple[str, str]:
        """(rule, reason) of an allow; raises DestinationRefused otherwise."""
        if self.decide is not None:
            try:
                decision = self.decide(host, port, resolved_ip)
            except Exception as exc:  # noqa: BLE001 - fail closed
                raise DestinationRefused("network.policy_error", f"policy failed: {type(exc).__name__}: {exc}") from exc
            effect = getattr(decision, "effect", None)
            effect = str(getattr(effect, "value", effect) or "").lower()
            rules = getattr(decision, "rules", None) or getattr(decision, "rule", None) or "network.policy"
            rule = rules if isinstance(rules, str) else ",".join(str(r) for r in rules)
            reason = str(getattr(decision, "reason", "") or "")
            if effect != "allow":
                raise DestinationRefused(rule, reason or f"{host}:{port} is not allowed by the policy")
            return rule, reason
        entry = self.allowlist.match(host, port)
        if entry is None:
            raise DestinationRefused("network.not_allowed", f"{host}:{port} is not in the egress allowlist")
        return f"network.allow[{entry.pattern}]", f"{host}:{port} matches {entry.pattern}"

    async def check(self, host: str, port: int) -> CheckedDestination:
        name = normalize_host(host)
        if not 0 < port < 65536:
            raise DestinationRefused("network.bad_port", f"invalid port {port}")
        rule, reason = self.decide_host(name, port)
        if self.decide is None:
            checked = await check_addresses(name, port, self.allowlist, self.resolver)
            return dataclasses.replace(checked, rule=rule, reason=reason)
        # With a policy engine, each resolved address is decided by the engine too (it refuses
        # loopback/private/link-local addresses no rule names); the first one is pinned.
        addresses = await resolve_addresses(name, port, self.resolver)
        for ip in addresses:
            self.decide_host(name, port, str(ip))
        return CheckedDestination(host=name, port=port, address=str(addresses[0]),
                                  named_private=not all(is_public(ip) for ip in addresses), rule=rule, reason=reason)


def allowlist_from_network_settings(network: object) -> HostAllowlist:
    """The egress allowlist of the policy's `network` section (allow_domains, allow_addresses, ports)."""
    ports = list(getattr(network, "ports", None) or [None])
    entries: list[AllowEntry] = []
    for item in [*getattr(network, "allow_domains", []), *getattr(network, "allow_addresses", [])]:
        text = str(item).strip().lower()
        try:
            net: ipaddress.IPv4Network | ipaddress.IPv6Network | None = ipaddress.ip_network(text, strict=False)
        except ValueError:
            literal = parse_ip_literal(text)
            net = ipaddress.ip_network(literal) if literal is not None else None
        for port in ports:
            entries.append(AllowEntry(pattern=text.rstrip(".") if net is None else text, port=port, network=net))
    return HostAllowlist(entries)
