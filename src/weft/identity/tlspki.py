"""Small private PKIs for TLS between parts of the system: a self-signed CA and the leaves it signs.

Used where a server must be trusted by a client that is given a CA bundle: the local mesh's
Kubernetes API port (:mod:`weft.runtime.local.kubepki`: serving and admin client certificates)
and the proxy injector's webhook port on a cluster (:mod:`weft.install.certs`: the API server
trusts it through the webhook configuration's ``caBundle``). ECDSA P-256 keys, SHA-256.

Not for: workload identity (:mod:`weft.identity.ca`: trust anchors, issuers and proxies' leaves
with SPIFFE names), nor storing anything.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from weft.identity.ca import PrivateKey, cert_pem, key_pem, new_key

SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
CLOCK_SKEW = 300.0  # valid from five minutes back: clocks in a cluster disagree a little


def name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def _sans(hosts: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for host in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            out.append(x509.DNSName(host))
    return out


@dataclass(frozen=True)
class Leaf:
    """A certificate and its key, both PEM."""

    cert: bytes
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class SelfSignedCa:
    """A CA that signs leaves for servers and clients (path length 0)."""

    cert: x509.Certificate
    key: PrivateKey = field(repr=False)

    @classmethod
    def new(cls, common_name: str, *, now: float, lifetime: float) -> SelfSignedCa:
        key = new_key()
        subject = name(common_name)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_time(now - CLOCK_SKEW))
            .not_valid_after(_time(now + lifetime))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @property
    def pem(self) -> bytes:
        return cert_pem(self.cert)

    def leaf(
        self,
        subject: x509.Name,
        usage: x509.ObjectIdentifier,
        *,
        now: float,
        lifetime: float,
        hosts: Iterable[str] = (),
    ) -> Leaf:
        """A leaf for ``usage`` (:data:`SERVER_AUTH`, :data:`CLIENT_AUTH`), with ``hosts``
        (DNS names and IP addresses) as its subject alternative names; it ends no later than
        this CA."""
        key = new_key()
        end = min(now + lifetime, self.cert.not_valid_after_utc.timestamp())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_time(now - CLOCK_SKEW))
            .not_valid_after(_time(end))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        sans = _sans(hosts)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return Leaf(cert_pem(builder.sign(self.key, hashes.SHA256())), key_pem(key))


def _time(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


__all__ = ["CLIENT_AUTH", "SERVER_AUTH", "Leaf", "SelfSignedCa", "name"]
