"""Shared helpers for the tools tests: a test CA, real HTTP(S) servers on 127.0.0.1, a sentinel swapper."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MCP_DIR = os.path.join(REPO, "tests", "mcp")
NPM_FS_SERVER = os.path.join(MCP_DIR, "node_modules", "@modelcontextprotocol", "server-filesystem", "dist", "index.js")


@dataclass
class TestCA:
    directory: str
    ca_file: str
    cert_file: str  # server chain + key, valid for 127.0.0.1, localhost and the given names


def make_test_ca(names: list[str]) -> TestCA:
    directory = tempfile.mkdtemp(prefix="ironcage-test-ca-")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Iron Cage tests upstream CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    sans += [x509.DNSName(n) for n in names]
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file = os.path.join(directory, "ca.pem")
    with open(ca_file, "wb") as handle:
        handle.write(ca.public_bytes(serialization.Encoding.PEM))
    cert_file = os.path.join(directory, "server.pem")
    with open(cert_file, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return TestCA(directory, ca_file, cert_file)


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _reply(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        payload = {"server": self.server.label, "method": self.command, "path": self.path,  # type: ignore[attr-defined]
                   "headers": dict(self.headers.items()), "body": body}
        self.server.seen.append(payload)  # type: ignore[attr-defined]
        leak = getattr(self.server, "leak", None)  # what a server may know: sent back in the body
        if leak is not None:
            payload["leak"] = leak
        if self.path.startswith("/big/"):
            data = b"x" * int(self.path.rsplit("/", 1)[1])
            ctype = "application/octet-stream"
        else:
            data = json.dumps(payload).encode()
            ctype = "application/json"
        if self.path.startswith("/gzip"):
            import gzip

            data = gzip.compress(data)
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        if self.headers.get("Authorization"):  # echoed as a response header too
            self.send_header("X-Echo-Authorization", self.headers["Authorization"])
        if self.path.startswith("/gzip"):
            self.send_header("Content-Encoding", "gzip")
        if self.path.startswith("/chunked/"):
            # /chunked/N: the body in N-byte chunks, each written (and flushed) on its own.
            size = int(self.path.rsplit("/", 1)[1])
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(data), size):
                piece = data[i : i + size]
                self.wfile.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_HEAD = _reply

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence the test server
        pass


@dataclass
class EchoServer:
    label: str
    port: int
    server: ThreadingHTTPServer
    seen: list[dict] = field(default_factory=list)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_echo_server(label: str, cert_file: str | None = None) -> EchoServer:
    """A real HTTP (or HTTPS with `cert_file`) server on 127.0.0.1 echoing each request as JSON."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    server.daemon_threads = True
    server.label = label  # type: ignore[attr-defined]
    server.seen = []  # type: ignore[attr-defined]
    if cert_file:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    echo = EchoServer(label, server.server_address[1], server)
    echo.seen = server.seen  # type: ignore[attr-defined]
    return echo


class SentinelSwapper:
    """A minimal brokered-credentials implementation of the CredentialSwapper protocol for these tests.

    (The product's implementation is the credentials broker, issue 6; this one follows the same contract:
    swap only toward the grant's hosts / tools, never in clear text, refuse a sentinel going elsewhere.)
    """

    def __init__(self) -> None:
        self.secrets: dict[str, tuple[str, str, list[str], list[str]]] = {}

    def add(self, name: str, value: str, hosts: list[str] = (), tools: list[str] = ()) -> str:  # type: ignore[assignment]
        sentinel = f"ironcage_sentinel_{name}_{os.urandom(6).hex()}"
        self.secrets[name] = (sentinel, value, list(hosts), list(tools))
        return sentinel

    def hosts_needing_interception(self) -> list[str]:
        return [h for (_s, _v, hosts, _t) in self.secrets.values() for h in hosts]

    def swap(self, text: str, *, tool: str, host: str | None, secure: bool = True) -> tuple[str, list[str]]:
        used = []
        for name, (sentinel, value, hosts, tools) in self.secrets.items():
            if sentinel not in text:
                continue
            allowed = (host in hosts if host is not None else tool in tools) and secure
            if not allowed:
                raise PermissionError(f"secret {name} may not be sent to {host or tool}" + ("" if secure else " in clear text"))
            text = text.replace(sentinel, value)
            used.append(name)
        return text, used

    def restore(self, data):
        if isinstance(data, dict):
            return {self.restore(k): self.restore(v) for k, v in data.items()}
        if isinstance(data, list):
            return [self.restore(v) for v in data]
        if isinstance(data, str | bytes):
            for sentinel, value, _hosts, _tools in self.secrets.values():
                if isinstance(data, bytes):
                    data = data.replace(value.encode(), sentinel.encode())
                else:
                    data = data.replace(value, sentinel)
        return data

    def restore_hold_length(self, data) -> int:
        longest = 0
        for _sentinel, value, _hosts, _tools in self.secrets.values():
            needle = value.encode() if isinstance(data, bytes) else value
            for k in range(min(len(needle) - 1, len(data)), longest, -1):
                if data.endswith(needle[:k]):
                    longest = k
                    break
        return longest


def make_wheel(directory: str, name: str = "ironcage_demo_pkg", version: str = "1.0") -> str:
    """A minimal pure-Python wheel (zip with METADATA, WHEEL, RECORD) for a local package index."""
    import base64
    import hashlib
    import zipfile

    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "VALUE = 'installed through the Iron Cage egress proxy'\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: ironcage-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    wheel = os.path.join(directory, f"{name}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def start_package_index(cert_file: str) -> tuple[ThreadingHTTPServer, int, str]:
    """An HTTPS 'simple' package index on 127.0.0.1 serving one wheel (PEP 503 layout)."""
    import functools
    from http.server import SimpleHTTPRequestHandler

    root = tempfile.mkdtemp(prefix="ironcage-index-")
    project = os.path.join(root, "simple", "ironcage-demo-pkg")
    os.makedirs(project)
    wheel = os.path.basename(make_wheel(root))
    with open(os.path.join(project, "index.html"), "w") as handle:
        handle.write(f'<html><body><a href="../../{wheel}">{wheel}</a></body></html>')

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=root))
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1], root
