"""The certificates an installation carries: the mesh's trust anchors and issuer, and the
injector's serving certificate.

- **Identity.** The trust anchors (PEM bundle, in the ConfigMap ``weft-identity-trust-roots``)
  and the issuer (certificate and key, in the Secret ``weft-identity-issuer``), as Linkerd keeps
  them. Supplied from files (``--identity-trust-anchors-file``, ``--identity-issuer-certificate-
  file``, ``--identity-issuer-key-file``: the issuer must chain to one of the anchors and be
  valid now), or generated: an anchor valid ten years and an issuer valid one year. A generated
  anchor's key is discarded, never printed (as ``linkerd install`` does): the cluster never holds
  the root's key, and rotating the issuer later needs an anchor of your own.
- **The injector's TLS.** A CA of its own and a serving certificate for the injector Service's
  names (``weft-injector.weft-system.svc`` ...), in the Secret ``weft-injector-tls``; the CA is
  the webhook configuration's ``caBundle``. Generated, or supplied from files.

``weft upgrade`` reads all of them back from the cluster, so an upgrade keeps the identities
every proxy holds. Not for: the CA's operation (:mod:`weft.identity.ca`), nor the objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from weft.identity.ca import (
    ANCHOR_LIFETIME,
    ISSUER_LIFETIME,
    Authority,
    CaError,
    TrustBundle,
    cert_pem,
    check_issuer,
    fingerprint,
    key_pem,
    load_certs_pem,
    load_key_pem,
    not_after,
    same_key,
)
from weft.identity.tlspki import SERVER_AUTH, SelfSignedCa, name
from weft.install.values import NAMESPACE

INJECTOR_SERVICE = "weft-injector"
INJECTOR_LIFETIME = 365 * 86400.0


def injector_hosts(namespace: str = NAMESPACE) -> tuple[str, ...]:
    """The names the API server may call the injector Service by."""
    svc = f"{INJECTOR_SERVICE}.{namespace}"
    return (svc, f"{svc}.svc", f"{svc}.svc.cluster.local")


@dataclass(frozen=True)
class Certs:
    """PEM material; see the module docstring."""

    trust_anchors: bytes
    issuer_cert: bytes
    issuer_key: bytes = field(repr=False)
    injector_ca: bytes
    injector_cert: bytes
    injector_key: bytes = field(repr=False)

    def check(self, *, now: float) -> None:
        """CaError (saying which) when the issuer does not chain to the anchors, does not hold
        its key or is not valid now, or the injector's certificate is not the CA's or lacks
        the Service's name."""
        bundle = TrustBundle.from_pem(self.trust_anchors)
        check_issuer(Authority.from_pem(self.issuer_cert, self.issuer_key), bundle, now=now)
        ca = load_certs_pem(self.injector_ca, "injector CA")[0]
        (cert,) = load_certs_pem(self.injector_cert, "injector certificate")[:1]
        if cert.issuer != ca.subject:
            raise CaError("the injector's certificate is not issued by the injector CA")
        if not same_key(cert, load_key_pem(self.injector_key, "injector key")):
            raise CaError("the injector's key does not match its certificate")
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            raise CaError("the injector's certificate has no subject alternative names") from None
        names = set(sans.get_values_for_type(x509.DNSName))
        wanted = injector_hosts()[1]
        if wanted not in names:
            raise CaError(f"the injector's certificate does not name {wanted}")
        if not_after(cert) <= now:
            raise CaError("the injector's certificate has expired")

    def expiry(self) -> dict[str, float]:
        """When each certificate ends (epoch seconds): ``anchor <fp16>``, ``issuer``,
        ``injector``."""
        out = {
            f"anchor {fingerprint(c)[:16]}": not_after(c)
            for c in load_certs_pem(self.trust_anchors, "trust anchors")
        }
        out["issuer"] = not_after(load_certs_pem(self.issuer_cert, "issuer")[0])
        out["injector"] = not_after(load_certs_pem(self.injector_cert, "injector")[0])
        return out


def generate_identity(trust_domain: str, *, now: float) -> tuple[bytes, bytes, bytes]:
    """A new anchor (its key discarded) and an issuer: ``(anchors, issuer cert, issuer key)``."""
    anchor = Authority.new_anchor(trust_domain, now=now, lifetime=ANCHOR_LIFETIME)
    issuer = anchor.new_issuer(trust_domain, now=now, lifetime=ISSUER_LIFETIME)
    return cert_pem(anchor.cert), cert_pem(issuer.cert), key_pem(issuer.key)


def generate_injector(*, now: float) -> tuple[bytes, bytes, bytes]:
    """A CA and the injector's serving certificate: ``(ca, cert, key)``."""
    ca = SelfSignedCa.new("weft-injector-ca", now=now, lifetime=INJECTOR_LIFETIME)
    leaf = ca.leaf(
        name(injector_hosts()[1]),
        SERVER_AUTH,
        now=now,
        lifetime=INJECTOR_LIFETIME,
        hosts=injector_hosts(),
    )
    return ca.pem, leaf.cert, leaf.key


def read_files(*paths: str | None) -> tuple[bytes, ...] | None:
    """The files' bytes, or None when none is given; CaError when only some are, or one cannot
    be read."""
    given = [p for p in paths if p]
    if not given:
        return None
    if len(given) != len(paths):
        raise CaError("give all of the files of a set, or none")
    out = []
    for path in given:
        try:
            out.append(Path(path).read_bytes())
        except OSError as exc:
            raise CaError(f"cannot read {path}: {exc.strerror or exc}") from None
    return tuple(out)


def make(
    trust_domain: str,
    *,
    now: float,
    identity: tuple[bytes, ...] | None = None,
    injector: tuple[bytes, ...] | None = None,
) -> Certs:
    """The installation's certificates: ``identity`` (anchors, issuer cert, issuer key) and
    ``injector`` (CA, cert, key) as given, each generated when None; checked."""
    anchors, issuer_cert, issuer_key = identity or generate_identity(trust_domain, now=now)
    ca, cert, key = injector or generate_injector(now=now)
    certs = Certs(anchors, issuer_cert, issuer_key, ca, cert, key)
    certs.check(now=now)
    return certs


__all__ = [
    "INJECTOR_SERVICE",
    "Certs",
    "generate_identity",
    "generate_injector",
    "injector_hosts",
    "make",
    "read_files",
]
