"""Per-session certificate authority for the egress proxy's TLS termination.

The CA's key never leaves the wrapper; the sandbox only receives a CA bundle (system roots + this CA)
through SSL_CERT_FILE and friends. Certificates are short-lived and minted per host on demand.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
import threading

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem")


def system_ca_bundle() -> str | None:
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, *_SYSTEM_BUNDLES):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class SessionCA:
    """A CA for one session, written to `directory` (which must be private to the wrapper)."""

    def __init__(self, directory: str | None = None, session_id: str = "session", validity_hours: int = 48) -> None:
        self.directory = directory or tempfile.mkdtemp(prefix="ironcage-ca-")
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._key_dir = tempfile.mkdtemp(prefix="keys-", dir=self.directory)
        now = datetime.datetime.now(datetime.UTC)
        self._not_before = now - datetime.timedelta(minutes=5)
        self._not_after = now + datetime.timedelta(hours=validity_hours)
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Iron Cage"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Iron Cage egress CA ({session_id[:40]})"),
        ])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before).not_valid_after(self._not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self.ca_file = os.path.join(self.directory, "ironcage-session-ca.pem")
        with open(self.ca_file, "wb") as handle:
            handle.write(self.cert_pem)
        # What the sandbox trusts: the usual roots (for tunnelled, non-intercepted hosts) plus this CA.
        self.bundle_file = os.path.join(self.directory, "ca-bundle.pem")
        system = system_ca_bundle()
        with open(self.bundle_file, "wb") as handle:
            if system:
                with open(system, "rb") as roots:
                    handle.write(roots.read().rstrip(b"\n") + b"\n")
            handle.write(self.cert_pem)
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()

    def server_context(self, host: str) -> ssl.SSLContext:
        """A server-side TLS context presenting a certificate for `host`, signed by this CA."""
        with self._lock:
            context = self._contexts.get(host)
            if context is not None:
                return context
            try:
                san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
            except ValueError:
                san = x509.DNSName(host)
            leaf = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
                .issuer_name(self.cert.subject).public_key(self._leaf_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(self._not_before).not_valid_after(self._not_after)
                .add_extension(x509.SubjectAlternativeName([san]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                               critical=False)
                .sign(self.key, hashes.SHA256())
            )
            fd, path = tempfile.mkstemp(suffix=".pem", dir=self._key_dir)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(leaf.public_bytes(serialization.Encoding.PEM) + self.cert_pem + _pem(self._leaf_key))
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.minimum_version = ssl.TLSVersion.TLSv1_2
                context.set_alpn_protocols(["http/1.1"])
                context.load_cert_chain(path)
            finally:
                os.unlink(path)
            self._contexts[host] = context
            return context
