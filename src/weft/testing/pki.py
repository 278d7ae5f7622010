"""Throwaway identity material for tests and benchmarks: an anchor, an issuer, and leaf files.

``Pki.create(directory)`` makes a trust anchor and an issuer with :mod:`weft.identity.ca`;
``pki.leaf(namespace, service_account)`` writes ``<sa>.<ns>.{crt,key}`` (the leaf followed by the
issuer, and its key) and returns their paths with the anchors file, ready for ``weft proxy
--identity-cert/--identity-key/--trust-anchors`` or
:class:`~weft.proxy.static_identity.StaticIdentity`.
Variants for the negative cases: a leaf from another CA, an expired leaf.

Not for production: the mesh's CA lives in the control plane (:mod:`weft.control.identity`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from weft.identity.ca import Authority, cert_pem, key_pem, make_csr, new_key
from weft.identity.names import DEFAULT_TRUST_DOMAIN, dns_identity, spiffe_id


@dataclass(frozen=True, slots=True)
class LeafFiles:
    name: str  # the DNS-form identity
    chain: str
    key: str
    anchors: str


@dataclass(frozen=True, slots=True)
class Pki:
    directory: Path
    anchor: Authority
    issuer: Authority
    trust_domain: str = DEFAULT_TRUST_DOMAIN

    @classmethod
    def create(cls, directory: Path, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> Pki:
        now = time.time()
        anchor = Authority.new_anchor(trust_domain, now=now)
        issuer = anchor.new_issuer(trust_domain, now=now)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "anchors.pem").write_bytes(cert_pem(anchor.cert))
        return cls(directory, anchor, issuer, trust_domain)

    @property
    def anchors_file(self) -> str:
        return str(self.directory / "anchors.pem")

    def leaf(
        self,
        namespace: str,
        service_account: str,
        *,
        lifetime: float = 86400.0,
        now: float | None = None,
        issuer: Authority | None = None,
        tag: str = "",
    ) -> LeafFiles:
        """Files of a leaf for ``<sa>.<ns>`` (``issuer``: another CA's, for forgeries)."""
        issuer = issuer or self.issuer
        name = dns_identity(namespace, service_account, self.trust_domain)
        spiffe = spiffe_id(namespace, service_account, self.trust_domain)
        key = new_key()
        cert = issuer.sign_leaf(
            make_csr(key, name, spiffe),
            name,
            spiffe,
            now=time.time() if now is None else now,
            lifetime=lifetime,
        )
        stem = self.directory / f"{service_account}.{namespace}{tag}"
        chain = Path(f"{stem}.crt")
        chain.write_bytes(cert_pem(cert) + cert_pem(issuer.cert))
        key_file = Path(f"{stem}.key")
        key_file.touch(mode=0o600)
        key_file.write_bytes(key_pem(key))
        return LeafFiles(name, str(chain), str(key_file), self.anchors_file)

    def foreign_issuer(self) -> Authority:
        """An issuer under an unrelated anchor with the same trust domain (a forgery's CA)."""
        now = time.time()
        return Authority.new_anchor(self.trust_domain, now=now).new_issuer(
            self.trust_domain, now=now
        )


__all__ = ["LeafFiles", "Pki"]
