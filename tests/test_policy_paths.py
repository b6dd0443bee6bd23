"""Path canonicalisation and network host parsing."""

import ipaddress
import os
import socket

from hypothesis import given, settings
from hypothesis import strategies as st

from ironcage_jupyter.policy.network import domain_matches, is_restricted, parse_ip
from ironcage_jupyter.policy.paths import canonicalize, inspect_path, is_within


def test_canonicalisation_cases(tmp_path):
    ws = str(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "dangling").symlink_to("/etc/nowhere/file")
    assert canonicalize("link/x.csv", ws) == str(tmp_path / "real" / "x.csv")
    assert canonicalize("link/../y", ws) == str(tmp_path / "y")
    assert canonicalize("dangling", ws) == "/etc/nowhere/file"
    assert canonicalize("new/dir/file.txt", ws) == str(tmp_path / "new" / "dir" / "file.txt")
    assert canonicalize("~", ws, home="/home/u") == "/home/u" or os.path.islink("/home")
    assert not inspect_path("missing", ws).exists


def test_containment_on_separator_boundary():
    assert is_within("/work/root/a", "/work/root")
    assert is_within("/work/root", "/work/root/")
    assert not is_within("/work/rootevil", "/work/root")
    assert is_within("/anything", "/")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "..", ".", "", "link", "~", "x y"]), max_size=8))
def test_canonicalisation_is_idempotent(parts):
    ws = "/tmp"
    once = canonicalize("/".join(parts), ws)
    assert canonicalize(once, ws) == once
    assert os.path.isabs(once)


def test_every_ip_spelling():
    for spelling in ["127.0.0.1", "2130706433", "0x7f000001", "0177.0.0.1", "127.1", "0x7f.0.0.1", "[::1]",
                     "::ffff:127.0.0.1", "127.0.0.1.", "0", "[::]", "::", "[fe80::1%eth0]"]:
        ip = parse_ip(spelling)
        assert ip is not None and is_restricted(ip), spelling
    for spelling in ["192.168.0.1", "10.0.0.1", "172.16.0.1", "169.254.169.254", "fe80::1", "fc00::1"]:
        assert is_restricted(parse_ip(spelling))
    assert not is_restricted(parse_ip("8.8.8.8"))
    assert parse_ip("example.com") is None and parse_ip("deadbeef.com") is None
    assert parse_ip("cafe.be") is None and parse_ip("my-host") is None


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789abcdefx.", min_size=1, max_size=20))
def test_ipv4_parsing_agrees_with_inet_aton(text):
    try:
        expected = ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        expected = None
    got = parse_ip(text)
    if expected is not None:
        assert got == expected
    elif got is not None:
        assert isinstance(got, ipaddress.IPv4Address | ipaddress.IPv6Address)


def test_domain_patterns():
    assert domain_matches("*.example.com", "a.b.example.com")
    assert not domain_matches("*.example.com", "example.com")
    assert not domain_matches("*.example.com", "evilexample.com")
    assert not domain_matches("*", "127.0.0.1")
    assert not domain_matches("*", "localhost")
    assert domain_matches("localhost", "localhost")
