"""Network destinations: host normalisation, every IP spelling, domain wildcards that never match IPs."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


class HostError(ValueError):
    """A host that is neither a valid domain name nor an IP address."""


def _inet_aton_part(text: str) -> int | None:
    if not text:
        return None
    try:
        if text[:2] in ("0x", "0X"):
            return int(text[2:], 16) if text[2:] else 0
        if len(text) > 1 and text[0] == "0":
            return int(text, 8)
        if text.isdigit():
            return int(text, 10)
    except ValueError:
        return None
    return None


def parse_inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """IPv4 as the C library's inet_aton reads it: 127.1, 0x7f.1, 0177.0.0.1, 2130706433."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = [_inet_aton_part(p) for p in parts]
    if any(v is None for v in values):
        return None
    nums = [v for v in values if v is not None]
    last_bits = 8 * (5 - len(nums))
    if any(v > 255 for v in nums[:-1]) or nums[-1] >= (1 << last_bits):
        return None
    value = 0
    for v in nums[:-1]:
        value = (value << 8) | v
    value = (value << last_bits) | nums[-1]
    return ipaddress.IPv4Address(value)


_NOT_IP_CHARS = re.compile(r"[g-wyz_-]")


def parse_ip(host: str) -> IPAddress | None:
    text = host.strip().lower()
    if _NOT_IP_CHARS.search(text.split("%", 1)[0]) or (":" not in text and not any(c.isdigit() for c in text)):
        # letters outside hex/x, or neither digit nor colon: a name (an IPv6 zone id after % may hold any letter)
        return None
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]  # IPv6 zone id
    text = text.rstrip(".")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if re.fullmatch(r"[0-9a-fx.]+", text) and not re.search(r"[g-wyz]", text):
        return parse_inet_aton(text)
    return None


def effective_ip(ip: IPAddress) -> IPAddress:
    """IPv4-mapped / 6to4 / NAT64-embedded IPv4 addresses are judged as the IPv4 address they carry."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip in ipaddress.ip_network("64:ff9b::/96"):
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def is_restricted(ip: IPAddress) -> bool:
    """Loopback, private, link-local, reserved, multicast or unspecified: refused unless named."""
    ip = effective_ip(ip)
    return bool(ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_reserved or ip.is_multicast
                or ip.is_unspecified or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local)
                or not ip.is_global)


def normalize_host(host: str) -> str:
    """Lower-case, no trailing dot, IDNA for non-ASCII names. Raises HostError for garbage."""
    if not isinstance(host, str) or not host or len(host) > 253 + 2:
        raise HostError(f"invalid host {host!r}")
    text = host.strip().lower()
    if text.startswith("[") and text.endswith("]"):
        return text
    text = text.rstrip(".")
    if not text.isascii():
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError:
            raise HostError(f"invalid internationalised host {host!r}") from None
    if parse_ip(text) is not None:
        return text
    labels = text.split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise HostError(f"invalid host {host!r}")
    return text


def domain_matches(pattern: str, host: str) -> bool:
    """`*` any name, `*.example.com` any subdomain, otherwise exact. Never matches an IP literal, and a
    wildcard never matches `localhost` names (they must be named exactly)."""
    if parse_ip(host) is not None:
        return False
    pattern = pattern.lower().rstrip(".")
    if pattern == "*":
        return host not in LOCAL_NAMES and not host.endswith(".localhost")
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return host.endswith(suffix) and len(host) > len(suffix) and not host.endswith(".localhost")
    return host == pattern


def address_matches(spec: str, ip: IPAddress) -> bool:
    network = ipaddress.ip_network(spec, strict=False)
    return ip in network or effective_ip(ip) in network


def split_url(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URL; raises HostError when it has no usable host."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        port = parts.port
    except ValueError as exc:
        raise HostError(f"invalid URL {url!r}: {exc}") from None
    if not host:
        raise HostError(f"URL without host: {url!r}")
    scheme = (parts.scheme or "").lower()
    if port is None:
        port = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21}.get(scheme)
    return scheme, host, port
