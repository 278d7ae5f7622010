"""The certificates of the local mesh's Kubernetes API port: how kubectl and the port trust each
other.

Kubernetes clients send credentials only over TLS, so the node agent's loopback port for the
Kubernetes API (:mod:`weft.runtime.local.kubeport`) is TLS with client certificates, as k3s's
API server is: in ``<state dir>/kube/`` (0700, keys 0600) a CA, the port's serving certificate
(``127.0.0.1`` and ``localhost``) and an admin client certificate (``CN=weft-admin``,
``O=system:masters``) that ``weft kubeconfig`` embeds. Made at the first start, kept across
restarts, and made again when a certificate is within :data:`RENEW_BEFORE` of its end.

This CA is not the mesh's identity CA (:mod:`weft.identity.ca`): it only ever signs these two
certificates.

Not for: workload identity, nor the API itself.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from weft.identity.ca import (
    cert_pem,
    ensure_private_dir,
    key_pem,
    load_certs_pem,
    load_key_pem,
    new_key,
    not_after,
    write_private,
)

LIFETIME = 365 * 86400.0
RENEW_BEFORE = 30 * 86400.0
ADMIN = "weft-admin"


@dataclass(frozen=True)
class KubePki:
    """Paths of the PKI's files (PEM)."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def admin_cert(self) -> Path:
        return self.directory / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.directory / "admin.key"


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _fresh(path: Path, now: float) -> bool:
    try:
        (cert,) = load_certs_pem(path.read_bytes(), str(path))[:1]
    except (OSError, ValueError):
        return False
    return not_after(cert) - now > RENEW_BEFORE


def ensure(directory: Path, *, now: float | None = None) -> KubePki:
    """The PKI in ``directory``, made (or made again, when near its end) as needed."""
    pki = KubePki(directory)
    now = time.time() if now is None else now
    if all(_fresh(p, now) for p in (pki.ca, pki.server_cert, pki.admin_cert)) and all(
        p.exists() for p in (pki.server_key, pki.admin_key)
    ):
        return pki
    ensure_private_dir(directory)
    start = dt.datetime.fromtimestamp(now - 300, dt.UTC)
    end = dt.datetime.fromtimestamp(now + LIFETIME, dt.UTC)
    ca_key = new_key()
    ca_name = _name("weft-local-kubernetes-ca")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        name: x509.Name, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName] | None
    ) -> tuple[bytes, bytes]:
        key = new_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return cert_pem(builder.sign(ca_key, hashes.SHA256())), key_pem(key)

    server_cert, server_key = leaf(
        _name("weft-local-kubernetes"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
    )
    admin_cert, admin_key = leaf(
        _name(ADMIN, "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH, None
    )
    write_private(pki.server_key, server_key)
    write_private(pki.server_cert, server_cert)
    write_private(pki.admin_key, admin_key)
    write_private(pki.admin_cert, admin_cert)
    write_private(pki.ca, cert_pem(ca))
    return pki


def check(pki: KubePki) -> None:
    """Raise ValueError when a file is unreadable (before serving with it)."""
    load_key_pem(pki.server_key.read_bytes(), str(pki.server_key))
    load_certs_pem(pki.server_cert.read_bytes(), str(pki.server_cert))


__all__ = ["ADMIN", "LIFETIME", "RENEW_BEFORE", "KubePki", "check", "ensure"]
