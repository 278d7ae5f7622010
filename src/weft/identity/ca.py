"""The mesh's certificate authority: trust anchors, the issuer, leaf certificates, trust bundles.

All keys are ECDSA P-256 and all signatures ECDSA-SHA256 (``cryptography``):

- a **trust anchor** is a self-signed root CA (default 10 years): what every proxy trusts;
- the **issuer** is an intermediate CA signed by an anchor (default 1 year, path length 0): what
  signs the proxies' leaf certificates; proxies present leaf + issuer;
- a **leaf** carries one workload identity as SANs (``URI:spiffe://...`` and the DNS form), is
  good for TLS server and client authentication, starts 20 s in the past (clock skew, as Linkerd)
  and ends after its lifetime (default 24 h) but never after its issuer.

:meth:`Authority.sign_leaf` signs a proxy's CSR only when the CSR's signature verifies (the proxy
holds the key: proof of possession), its key is EC P-256, and it names no identity but the one
the caller vouches for (:class:`CsrIdentityMismatch` otherwise). A :class:`TrustBundle` holds
several anchors (anchor rotation); :class:`Material` is everything the control plane keeps, saved
as one owner-only file written atomically (:func:`save_material`, :func:`load_material`).

Pure functions over ``cryptography`` and explicit times (``now`` in epoch seconds); the only I/O
is in the load/save helpers at the end.

Not for: deciding who gets which identity (:mod:`weft.control.identity`), TLS contexts
(:mod:`weft.proxy.identity`), or identity names (:mod:`weft.identity.names`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from weft.identity.names import check_trust_domain

ANCHOR_LIFETIME = 10 * 365 * 86400.0
ISSUER_LIFETIME = 365 * 86400.0
LEAF_LIFETIME = 86400.0
CLOCK_SKEW = 20.0  # leaves start this much in the past: peers' clocks may lag
MAX_PEM_BYTES = 64 * 1024
MAX_CSR_BYTES = 16 * 1024
MATERIAL_FILE = "ca.json"
_MAX_CN = 64  # X.509's upper bound for a common name

PrivateKey = ec.EllipticCurvePrivateKey


class CaError(ValueError):
    """CA material is unusable: bad PEM, not a CA, key and certificate differ, no chain..."""


class InvalidCsr(ValueError):
    """A certificate signing request is malformed, unsigned, or has the wrong kind of key."""


class CsrIdentityMismatch(InvalidCsr):
    """A CSR names an identity other than the one its requester proved."""


# -- keys, PEM, names ------------------------------------------------------------------------


def new_key() -> PrivateKey:
    """A fresh ECDSA P-256 private key (kept in memory; see :func:`key_pem`)."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def certs_pem(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(cert_pem(c) for c in certs)


def load_key_pem(data: bytes, what: str = "key") -> PrivateKey:
    """An unencrypted EC private key from PEM; CaError naming ``what`` otherwise."""
    if len(data) > MAX_PEM_BYTES:
        raise CaError(f"{what}: larger than {MAX_PEM_BYTES} bytes")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CaError(f"{what}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CaError(f"{what}: must be an ECDSA key, got {type(key).__name__}")
    return key


def load_certs_pem(data: bytes, what: str = "certificates") -> list[x509.Certificate]:
    """Every certificate of a PEM text (at least one); CaError naming ``what`` otherwise."""
    if len(data) > MAX_PEM_BYTES:
        raise CaError(f"{what}: larger than {MAX_PEM_BYTES} bytes")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CaError(f"{what}: not PEM certificates ({exc})") from None
    if not certs:
        raise CaError(f"{what}: no certificate found")
    return certs


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER encoding, lowercase hex."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _time(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC)


def not_before(cert: x509.Certificate) -> float:
    return cert.not_valid_before_utc.timestamp()


def not_after(cert: x509.Certificate) -> float:
    return cert.not_valid_after_utc.timestamp()


def _name(common_name: str) -> x509.Name:
    if not common_name or len(common_name) > _MAX_CN:
        return x509.Name([])
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _sans(identity_dns: str, spiffe: str) -> x509.SubjectAlternativeName:
    return x509.SubjectAlternativeName(
        [x509.UniformResourceIdentifier(spiffe), x509.DNSName(identity_dns)]
    )


def same_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    """Whether ``key`` is the private half of the certificate's public key."""
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return cert.public_key().public_bytes(der, fmt) == key.public_key().public_bytes(der, fmt)


def is_ca(cert: x509.Certificate) -> bool:
    """basicConstraints CA=true (and keyCertSign, when keyUsage is present)."""
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    if not bc.ca:
        return False
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return ku.key_cert_sign


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s key signed ``cert`` (names matching)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


# -- CSRs ------------------------------------------------------------------------------------


def make_csr(key: PrivateKey, identity_dns: str, spiffe: str) -> bytes:
    """A PEM CSR for ``key`` naming the identity (subject CN and both SANs)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(identity_dns))
        .add_extension(_sans(identity_dns, spiffe), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def check_csr(csr_pem: bytes, identity_dns: str, spiffe: str) -> x509.CertificateSigningRequest:
    """The parsed CSR when it is fit to sign for this identity.

    InvalidCsr: not one PEM CSR, its signature does not verify, or its key is not EC P-256.
    CsrIdentityMismatch: its subject CN or SANs name anything but ``identity_dns``/``spiffe``.
    """
    if len(csr_pem) > MAX_CSR_BYTES:
        raise InvalidCsr(f"CSR larger than {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise InvalidCsr(f"not a PEM certificate signing request ({exc})") from None
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidCsr(f"CSR signature cannot be checked: {exc}") from None
    if not valid:
        raise InvalidCsr("CSR signature does not verify: no proof of possession of its key")
    try:
        public = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidCsr(f"CSR public key unsupported: {exc}") from None
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(
        public.curve, ec.SECP256R1
    ):
        kind = getattr(getattr(public, "curve", None), "name", None) or type(public).__name__
        raise InvalidCsr(f"CSR key must be ECDSA P-256, got {kind}")
    for attr in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        if attr.value != identity_dns:
            raise CsrIdentityMismatch(
                f"CSR subject names {attr.value!r}, but the token is for {identity_dns!r}"
            )
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return csr
    except ValueError as exc:
        raise InvalidCsr(f"CSR extensions malformed: {exc}") from None
    for san in sans:
        if isinstance(san, x509.DNSName) and san.value == identity_dns:
            continue
        if isinstance(san, x509.UniformResourceIdentifier) and san.value == spiffe:
            continue
        raise CsrIdentityMismatch(
            f"CSR names {type(san).__name__} {san.value!r}, but the token is for "
            f"{identity_dns!r} ({spiffe})"
        )
    return csr


# -- authorities -----------------------------------------------------------------------------


def _ca_extensions(
    builder: x509.CertificateBuilder,
    public: ec.EllipticCurvePublicKey,
    path_length: int | None,
    authority: ec.EllipticCurvePublicKey,
) -> x509.CertificateBuilder:
    return (
        builder.add_extension(x509.BasicConstraints(ca=True, path_length=path_length), True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority), critical=False
        )
    )


@dataclass(frozen=True, slots=True)
class Authority:
    """A CA certificate and its private key."""

    cert: x509.Certificate
    key: PrivateKey = field(repr=False)

    def __post_init__(self) -> None:
        if not is_ca(self.cert):
            raise CaError(f"{self.cert.subject.rfc4514_string()!r} is not a CA certificate")
        if not same_key(self.cert, self.key):
            raise CaError("the private key does not match the certificate")

    @classmethod
    def from_pem(cls, certificate: bytes, key: bytes) -> Authority:
        """The first certificate of ``certificate`` with ``key``; CaError when unusable."""
        cert = load_certs_pem(certificate, "certificate")[0]
        return cls(cert, load_key_pem(key))

    @classmethod
    def new_anchor(
        cls,
        trust_domain: str,
        *,
        now: float,
        lifetime: float = ANCHOR_LIFETIME,
        key: PrivateKey | None = None,
    ) -> Authority:
        """A self-signed root CA ``CN=root.identity.<trust-domain>``."""
        key = key or new_key()
        name = _name(f"root.identity.{check_trust_domain(trust_domain)}")
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_time(now - CLOCK_SKEW))
            .not_valid_after(_time(now + lifetime))
        )
        builder = _ca_extensions(builder, key.public_key(), None, key.public_key())
        return cls(builder.sign(key, hashes.SHA256()), key)

    def new_issuer(
        self,
        trust_domain: str,
        *,
        now: float,
        lifetime: float = ISSUER_LIFETIME,
        key: PrivateKey | None = None,
    ) -> Authority:
        """An intermediate CA ``CN=identity.<trust-domain>`` signed by this one (path length
        0), ending no later than this one."""
        key = key or new_key()
        end = min(now + lifetime, not_after(self.cert))
        if end <= now:
            raise CaError(
                f"cannot sign an issuer: the anchor expired at {_iso(not_after(self.cert))}"
            )
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(f"identity.{check_trust_domain(trust_domain)}"))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_time(now - CLOCK_SKEW))
            .not_valid_after(_time(end))
        )
        builder = _ca_extensions(builder, key.public_key(), 0, self.key.public_key())
        return Authority(builder.sign(self.key, hashes.SHA256()), key)

    def sign_leaf(
        self,
        csr_pem: bytes,
        identity_dns: str,
        spiffe: str,
        *,
        now: float,
        lifetime: float = LEAF_LIFETIME,
    ) -> x509.Certificate:
        """The leaf for a CSR (checked by :func:`check_csr`): SANs ``spiffe`` and
        ``identity_dns``, valid from ``now - 20 s`` to ``now + lifetime`` (at most to this
        authority's end). CaError when this authority has expired."""
        csr = check_csr(csr_pem, identity_dns, spiffe)
        end = min(now + lifetime, not_after(self.cert))
        if end <= now:
            raise CaError(f"the issuer expired at {_iso(not_after(self.cert))}; rotate it")
        public = csr.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)  # check_csr made sure
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(identity_dns))
            .issuer_name(self.cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_time(now - CLOCK_SKEW))
            .not_valid_after(_time(end))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            # an empty subject (identity longer than a CN may be) makes the SANs critical
            .add_extension(_sans(identity_dns, spiffe), critical=len(identity_dns) > _MAX_CN)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        return builder.sign(self.key, hashes.SHA256())


# -- trust bundles ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrustBundle:
    """The trust anchors every proxy trusts (several during an anchor rotation)."""

    anchors: tuple[x509.Certificate, ...]

    def __post_init__(self) -> None:
        if not self.anchors:
            raise CaError("a trust bundle needs at least one anchor")
        seen: set[str] = set()
        for cert in self.anchors:
            fp = fingerprint(cert)
            if not is_ca(cert):
                raise CaError(
                    f"trust anchor {cert.subject.rfc4514_string()!r} ({fp[:16]}) is not a CA "
                    "certificate"
                )
            if fp in seen:
                raise CaError(f"trust anchor {fp[:16]} appears twice")
            seen.add(fp)

    @classmethod
    def from_pem(cls, data: bytes) -> TrustBundle:
        """The anchors of a PEM text (duplicates dropped); CaError when unusable."""
        unique: dict[str, x509.Certificate] = {}
        for cert in load_certs_pem(data, "trust anchors"):
            unique.setdefault(fingerprint(cert), cert)
        return cls(tuple(unique.values()))

    def to_pem(self) -> bytes:
        return certs_pem(self.anchors)

    def __len__(self) -> int:
        return len(self.anchors)

    def fingerprints(self) -> list[str]:
        return [fingerprint(c) for c in self.anchors]

    def find(self, fp: str) -> x509.Certificate | None:
        """The anchor whose fingerprint is ``fp`` (hex, any case, colons allowed)."""
        want = normalize_fingerprint(fp)
        for cert in self.anchors:
            if fingerprint(cert) == want:
                return cert
        return None

    def with_anchor(self, cert: x509.Certificate) -> TrustBundle:
        """This bundle plus ``cert`` (unchanged when already there)."""
        if self.find(fingerprint(cert)) is not None:
            return self
        return TrustBundle((*self.anchors, cert))

    def without(self, fp: str) -> TrustBundle:
        """This bundle less the anchor ``fp`` (CaError when it would be empty)."""
        want = normalize_fingerprint(fp)
        return TrustBundle(tuple(c for c in self.anchors if fingerprint(c) != want))

    def anchor_of(self, cert: x509.Certificate) -> x509.Certificate | None:
        """The anchor that is ``cert`` or directly signed it, else None."""
        fp = fingerprint(cert)
        for anchor in self.anchors:
            if fingerprint(anchor) == fp or issued_by(cert, anchor):
                return anchor
        return None


def normalize_fingerprint(fp: str) -> str:
    return fp.replace(":", "").strip().lower()


def check_issuer(issuer: Authority, bundle: TrustBundle, *, now: float | None = None) -> str:
    """The fingerprint of the anchor ``issuer`` chains to; CaError when it chains to none or
    (given ``now``) is outside its validity."""
    anchor = bundle.anchor_of(issuer.cert)
    if anchor is None:
        raise CaError(
            f"issuer {issuer.cert.subject.rfc4514_string()!r} ({fingerprint(issuer.cert)[:16]}) "
            "is not signed by any trust anchor in the bundle"
        )
    if now is not None:
        if not_after(issuer.cert) <= now:
            raise CaError(f"the issuer expired at {_iso(not_after(issuer.cert))}")
        if not_before(issuer.cert) > now + CLOCK_SKEW:
            raise CaError(f"the issuer is not valid before {_iso(not_before(issuer.cert))}")
    return fingerprint(anchor)


# -- describing ------------------------------------------------------------------------------


def _iso(epoch: float) -> str:
    return _time(epoch).strftime("%Y-%m-%dT%H:%M:%SZ")


def sans_of(cert: x509.Certificate) -> list[str]:
    """``["URI:spiffe://...", "DNS:..."]``; empty when the certificate has no SANs."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    out: list[str] = []
    for name in ext:
        if isinstance(name, x509.DNSName):
            out.append(f"DNS:{name.value}")
        elif isinstance(name, x509.UniformResourceIdentifier):
            out.append(f"URI:{name.value}")
        elif isinstance(name, x509.IPAddress):
            out.append(f"IP:{name.value}")
        else:
            out.append(f"{type(name).__name__}:{name.value}")
    return out


def describe(cert: x509.Certificate) -> dict[str, Any]:
    """A JSON-able summary for the CLI and status views (no key material)."""
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "sans": sans_of(cert),
        "isCA": is_ca(cert),
        "notBefore": _iso(not_before(cert)),
        "notAfter": _iso(not_after(cert)),
        "notBeforeEpoch": not_before(cert),
        "notAfterEpoch": not_after(cert),
        "serial": format(cert.serial_number, "x"),
        "fingerprint": fingerprint(cert),
    }


# -- the control plane's material on disk ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Material:
    """Everything the control plane keeps: the bundle, the keys of the anchors it made, the
    issuer, and (``imported``) a digest of the material last imported from the user's files."""

    bundle: TrustBundle
    issuer: Authority
    anchor_keys: Mapping[str, PrivateKey] = field(default_factory=dict, repr=False)
    imported: str | None = None

    def __post_init__(self) -> None:
        check_issuer(self.issuer, self.bundle)
        for fp, key in self.anchor_keys.items():
            anchor = self.bundle.find(fp)
            if anchor is None:
                raise CaError(f"a key is kept for anchor {fp[:16]}, which is not in the bundle")
            if not same_key(anchor, key):
                raise CaError(f"the key kept for anchor {fp[:16]} does not match it")

    @classmethod
    def generate(
        cls,
        trust_domain: str,
        *,
        now: float,
        anchor_lifetime: float = ANCHOR_LIFETIME,
        issuer_lifetime: float = ISSUER_LIFETIME,
    ) -> Material:
        """A new anchor (key kept) and an issuer signed by it."""
        anchor = Authority.new_anchor(trust_domain, now=now, lifetime=anchor_lifetime)
        issuer = anchor.new_issuer(trust_domain, now=now, lifetime=issuer_lifetime)
        return cls(TrustBundle((anchor.cert,)), issuer, {fingerprint(anchor.cert): anchor.key})

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "anchors": [cert_pem(c).decode() for c in self.bundle.anchors],
            "anchorKeys": {fp: key_pem(k).decode() for fp, k in self.anchor_keys.items()},
            "issuer": {
                "certificate": cert_pem(self.issuer.cert).decode(),
                "key": key_pem(self.issuer.key).decode(),
            },
            "imported": self.imported,
        }

    @classmethod
    def from_json(cls, data: Any) -> Material:
        """CaError when ``data`` is not what :meth:`to_json` wrote."""
        try:
            if data.get("version") != 1:
                raise CaError(f"unknown version {data.get('version')!r}")
            anchors = TrustBundle.from_pem("".join(data["anchors"]).encode())
            keys = {
                str(fp): load_key_pem(str(pem).encode(), f"key of anchor {fp}")
                for fp, pem in data["anchorKeys"].items()
            }
            issuer = Authority.from_pem(
                data["issuer"]["certificate"].encode(), data["issuer"]["key"].encode()
            )
            imported = data.get("imported")
            if imported is not None and not isinstance(imported, str):
                raise CaError("imported must be a string")
        except (AttributeError, KeyError, TypeError) as exc:
            raise CaError(f"malformed: {type(exc).__name__} {exc}") from None
        return cls(anchors, issuer, keys, imported)


def import_digest(bundle: TrustBundle, issuer: x509.Certificate) -> str:
    """Identifies imported material by its certificates' fingerprints (no key bytes)."""
    text = ",".join(sorted(bundle.fingerprints())) + "|" + fingerprint(issuer)
    return hashlib.sha256(text.encode()).hexdigest()


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) with mode 0700, tightening it if it exists."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, mode 0600 from before the first byte."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)


def save_material(directory: Path, material: Material) -> None:
    """Write ``material`` to ``<directory>/ca.json`` (directory 0700, file 0600, atomic)."""
    ensure_private_dir(directory)
    data = json.dumps(material.to_json(), indent=1, sort_keys=True).encode()
    write_private(directory / MATERIAL_FILE, data)


def load_material(directory: Path) -> Material | None:
    """The material saved in ``directory``, None when there is none; CaError naming the file
    when it cannot be used (never replaced silently: a new CA would break every proxy's
    trust)."""
    path = directory / MATERIAL_FILE
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CaError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CaError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CaError(f"{path}: expected a JSON object")
    try:
        return Material.from_json(data)
    except CaError as exc:
        raise CaError(f"{path}: {exc}") from None
