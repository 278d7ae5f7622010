"""Unit tests: identity names, the CA (anchors, issuers, leaves, CSR checks, bundles, material on
disk), and real TLS 1.3 handshakes over memory BIOs with the proxy's contexts."""

from __future__ import annotations

import ipaddress
import json
import os
import ssl
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from weft.identity import ca
from weft.identity.ca import (
    Authority,
    CaError,
    CsrIdentityMismatch,
    InvalidCsr,
    Material,
    TrustBundle,
)
from weft.identity.names import (
    dns_identity,
    parse_dns_identity,
    peer_identity,
    spiffe_id,
    spiffe_to_dns,
)
from weft.proxy.identity import tls_contexts

NOW = 1_800_000_000.0
TD = "cluster.local"
DAY = 86400.0


@pytest.fixture(scope="module")
def material() -> Material:
    return Material.generate(TD, now=NOW)


def ext(cert: x509.Certificate | x509.CertificateSigningRequest, cls: type) -> x509.Extension:
    return cert.extensions.get_extension_for_class(cls)


def ident(ns: str, sa: str) -> tuple[str, str]:
    return dns_identity(ns, sa, TD), spiffe_id(ns, sa, TD)


def leaf_for(
    issuer: Authority, ns: str = "default", sa: str = "web", *, now: float = NOW, **kw: float
) -> tuple[ca.PrivateKey, x509.Certificate]:
    key = ca.new_key()
    name, uri = ident(ns, sa)
    return key, issuer.sign_leaf(ca.make_csr(key, name, uri), name, uri, now=now, **kw)


# -- names -----------------------------------------------------------------------------------


def test_names() -> None:
    assert dns_identity("shop", "web") == "web.shop.serviceaccount.identity.cluster.local"
    assert spiffe_id("shop", "web", "example.org") == "spiffe://example.org/ns/shop/sa/web"
    assert parse_dns_identity("web.shop.serviceaccount.identity.cluster.local") == ("shop", "web")
    assert parse_dns_identity("a.b.web.shop.serviceaccount.identity.td.io", "td.io") == (
        "shop",
        "a.b.web",
    )
    assert parse_dns_identity("web.shop.serviceaccount.identity.cluster.local", "other") is None
    assert parse_dns_identity("shop.serviceaccount.identity.cluster.local") is None
    assert parse_dns_identity("web.Shop.serviceaccount.identity.cluster.local") is None
    assert spiffe_to_dns("spiffe://td.io/ns/shop/sa/web") == (
        "web.shop.serviceaccount.identity.td.io"
    )


@pytest.mark.parametrize(
    "uri",
    [
        "https://td/ns/a/sa/b",
        "spiffe://td/ns/a",
        "spiffe://td/ns/a/sa/b/extra",
        "spiffe://td/ns/A/sa/b",
        "spiffe://TD/ns/a/sa/b",
        "spiffe:///ns/a/sa/b",
        "",
    ],
)
def test_bad_spiffe_ids(uri: str) -> None:
    with pytest.raises(ValueError, match="invalid SPIFFE ID"):
        spiffe_to_dns(uri)


@pytest.mark.parametrize(
    ("ns", "sa", "td", "match"),
    [
        ("Shop", "web", TD, "namespace"),
        ("a.b", "web", TD, "namespace"),
        ("shop", "", TD, "service account"),
        ("shop", "web_1", TD, "service account"),
        ("shop", "web", "Cluster.Local", "trust domain"),
        ("shop", "web", "", "trust domain"),
        ("shop", "x" * 64, TD, "service account"),
    ],
)
def test_bad_name_parts(ns: str, sa: str, td: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dns_identity(ns, sa, td)


label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@given(ns=label, sa=st.lists(label, min_size=1, max_size=3).map(".".join))
def test_dns_identity_round_trips(ns: str, sa: str) -> None:
    name = dns_identity(ns, sa, TD)
    assert parse_dns_identity(name, TD) == (ns, sa)
    assert spiffe_to_dns(spiffe_id(ns, sa, TD)) == name


def test_peer_identity() -> None:
    name = dns_identity("shop", "web")
    cert = {"subjectAltName": (("URI", spiffe_id("shop", "web")), ("DNS", name))}
    assert peer_identity(cert, TD) == name
    assert peer_identity(cert, "other.domain") is None
    assert peer_identity(None, TD) is None
    assert peer_identity({}, TD) is None
    assert peer_identity({"subjectAltName": (("DNS", "example.com"),)}, TD) is None


# -- anchors, issuers, leaves ----------------------------------------------------------------


def test_anchor_and_issuer_extensions(material: Material) -> None:
    (anchor,) = material.bundle.anchors
    issuer = material.issuer.cert
    for cert, pathlen in ((anchor, None), (issuer, 0)):
        bc = ext(cert, x509.BasicConstraints)
        assert bc.critical and bc.value.ca and bc.value.path_length == pathlen
        ku = ext(cert, x509.KeyUsage)
        assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
        assert not ku.value.digital_signature
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    anchor_ski = ext(anchor, x509.SubjectKeyIdentifier).value.digest
    assert ext(issuer, x509.AuthorityKeyIdentifier).value.key_identifier == anchor_ski
    assert anchor.issuer == anchor.subject
    assert ca.issued_by(issuer, anchor) and ca.issued_by(anchor, anchor)
    assert ca.not_after(anchor) == pytest.approx(NOW + ca.ANCHOR_LIFETIME, abs=1)
    assert ca.not_after(issuer) == pytest.approx(NOW + ca.ISSUER_LIFETIME, abs=1)
    assert ca.not_before(issuer) == pytest.approx(NOW - 20, abs=1)
    assert anchor.subject.rfc4514_string() == "CN=root.identity.cluster.local"
    assert issuer.subject.rfc4514_string() == "CN=identity.cluster.local"


def test_issuer_never_outlives_its_anchor() -> None:
    anchor = Authority.new_anchor(TD, now=NOW, lifetime=30 * DAY)
    issuer = anchor.new_issuer(TD, now=NOW)
    assert ca.not_after(issuer.cert) == ca.not_after(anchor.cert)
    with pytest.raises(CaError, match="anchor expired"):
        anchor.new_issuer(TD, now=NOW + 31 * DAY)


def test_leaf_properties(material: Material) -> None:
    key, leaf = leaf_for(material.issuer, "shop", "web")
    name, uri = ident("shop", "web")
    assert ca.same_key(leaf, key)
    sans = ext(leaf, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [name]
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [uri]
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
    assert set(ext(leaf, x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    ku = ext(leaf, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    bc = ext(leaf, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    issuer_ski = ext(material.issuer.cert, x509.SubjectKeyIdentifier).value.digest
    assert ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier == issuer_ski
    assert ext(leaf, x509.SubjectKeyIdentifier).value == (
        x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    )
    assert ca.not_before(leaf) == NOW - 20
    assert ca.not_after(leaf) == NOW + DAY
    assert ca.issued_by(leaf, material.issuer.cert)


def test_leaf_lifetime_is_capped_by_the_issuer() -> None:
    anchor = Authority.new_anchor(TD, now=NOW)
    issuer = anchor.new_issuer(TD, now=NOW, lifetime=3600)
    _, leaf = leaf_for(issuer, lifetime=DAY)
    assert ca.not_after(leaf) == ca.not_after(issuer.cert)
    _, short = leaf_for(issuer, lifetime=60)
    assert ca.not_after(short) == NOW + 60
    with pytest.raises(CaError, match="issuer expired"):
        leaf_for(issuer, now=NOW + 7200)


def test_long_identity_has_empty_subject_and_critical_sans(material: Material) -> None:
    sa = ".".join(["abcdefghij"] * 5)
    _, leaf = leaf_for(material.issuer, "shop", sa)
    assert len(leaf.subject) == 0
    sans = ext(leaf, x509.SubjectAlternativeName)
    assert sans.critical
    assert sans.value.get_values_for_type(x509.DNSName) == [dns_identity("shop", sa, TD)]


# -- CSR checks ------------------------------------------------------------------------------


def csr_with(key: object, cn: str | None, sans: list[x509.GeneralName]) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def test_csr_with_bad_signature_is_refused(material: Material) -> None:
    name, uri = ident("shop", "web")
    pem = ca.make_csr(ca.new_key(), name, uri)
    der = bytearray(x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the signature
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(InvalidCsr, match="signature does not verify") as info:
        material.issuer.sign_leaf(tampered, name, uri, now=NOW)
    assert not isinstance(info.value, CsrIdentityMismatch)


def test_csr_for_a_key_it_does_not_hold_is_refused(material: Material) -> None:
    """Proof of possession: a CSR whose public key is swapped for someone else's (same size,
    so the DER stays well-formed) no longer verifies."""
    name, uri = ident("shop", "web")
    mine, theirs = ca.new_key(), ca.new_key()
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der_enc = serialization.Encoding.DER
    mine_spki = mine.public_key().public_bytes(der_enc, spki)
    theirs_spki = theirs.public_key().public_bytes(der_enc, spki)
    der = x509.load_pem_x509_csr(ca.make_csr(mine, name, uri)).public_bytes(der_enc)
    assert der.count(mine_spki) == 1
    forged = x509.load_der_x509_csr(der.replace(mine_spki, theirs_spki))
    assert forged.public_key() == theirs.public_key()
    with pytest.raises(InvalidCsr, match="signature does not verify"):
        material.issuer.sign_leaf(
            forged.public_bytes(serialization.Encoding.PEM), name, uri, now=NOW
        )


@pytest.mark.parametrize(
    ("key", "match"),
    [
        (rsa.generate_private_key(public_exponent=65537, key_size=2048), "ECDSA P-256"),
        (ec.generate_private_key(ec.SECP384R1()), "ECDSA P-256, got secp384r1"),
    ],
)
def test_csr_key_must_be_p256(material: Material, key: object, match: str) -> None:
    name, uri = ident("shop", "web")
    pem = csr_with(key, name, [x509.DNSName(name), x509.UniformResourceIdentifier(uri)])
    with pytest.raises(InvalidCsr, match=match):
        material.issuer.sign_leaf(pem, name, uri, now=NOW)


@pytest.mark.parametrize(
    ("cn", "sans"),
    [
        ("api.shop.serviceaccount.identity.cluster.local", []),
        (None, [x509.DNSName("api.shop.serviceaccount.identity.cluster.local")]),
        (None, [x509.UniformResourceIdentifier("spiffe://cluster.local/ns/shop/sa/api")]),
        (
            None,
            [
                x509.DNSName("web.shop.serviceaccount.identity.cluster.local"),
                x509.DNSName("evil.example.com"),
            ],
        ),
        (None, [x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]),
    ],
)
def test_csr_naming_another_identity_is_refused(
    material: Material, cn: str | None, sans: list[x509.GeneralName]
) -> None:
    name, uri = ident("shop", "web")
    pem = csr_with(ca.new_key(), cn, sans)
    with pytest.raises(CsrIdentityMismatch):
        material.issuer.sign_leaf(pem, name, uri, now=NOW)


def test_csr_without_names_gets_the_proven_identity(material: Material) -> None:
    name, uri = ident("shop", "web")
    leaf = material.issuer.sign_leaf(csr_with(ca.new_key(), None, []), name, uri, now=NOW)
    assert ca.sans_of(leaf) == [f"URI:{uri}", f"DNS:{name}"]


@pytest.mark.parametrize(
    ("pem", "match"),
    [
        (b"", "not a PEM"),
        (b"garbage", "not a PEM"),
        (
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "not a PEM",
        ),
        (b"x" * (ca.MAX_CSR_BYTES + 1), "larger than"),
    ],
)
def test_malformed_csr(material: Material, pem: bytes, match: str) -> None:
    name, uri = ident("shop", "web")
    with pytest.raises(InvalidCsr, match=match):
        material.issuer.sign_leaf(pem, name, uri, now=NOW)


# -- TLS handshakes (memory BIOs) ------------------------------------------------------------


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A full handshake plus one byte from client to server; raises ssl.SSLError on failure."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    done = {"client": False, "server": False}
    for _ in range(10):
        for side, obj, out, peer_in in (
            ("client", client, c_out, s_in),
            ("server", server, s_out, c_in),
        ):
            try:
                obj.do_handshake()
                done[side] = True
            except ssl.SSLWantReadError:
                pass
            finally:
                peer_in.write(out.read())
        if all(done.values()):
            break
    client.write(b"x")
    s_in.write(c_out.read())
    assert server.read(1) == b"x"
    return server, client


def contexts(
    material: Material, ns: str, sa: str, *, now: float = NOW, lifetime: float = DAY
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key, leaf = leaf_for(material.issuer, ns, sa, now=now, lifetime=lifetime)
    return tls_contexts([leaf, material.issuer.cert], key, material.bundle)


def test_mutual_tls_with_identities() -> None:
    material = Material.generate(TD, now=time.time())
    web_server, _ = contexts(material, "shop", "web", now=time.time())
    _, api_client = contexts(material, "shop", "api", now=time.time())
    server, client = handshake(web_server, api_client, dns_identity("shop", "web"))
    assert server.version() == "TLSv1.3"
    assert peer_identity(server.getpeercert(), TD) == dns_identity("shop", "api")
    assert peer_identity(client.getpeercert(), TD) == dns_identity("shop", "web")


def test_client_without_certificate_is_tls_but_unauthenticated() -> None:
    material = Material.generate(TD, now=time.time())
    web_server, _ = contexts(material, "shop", "web", now=time.time())
    plain = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    plain.load_verify_locations(cadata=material.bundle.to_pem().decode())
    server, _ = handshake(web_server, plain, dns_identity("shop", "web"))
    assert peer_identity(server.getpeercert(), TD) is None


def test_wrong_server_identity_fails_check_hostname() -> None:
    material = Material.generate(TD, now=time.time())
    web_server, _ = contexts(material, "shop", "web", now=time.time())
    _, api_client = contexts(material, "shop", "api", now=time.time())
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        handshake(web_server, api_client, dns_identity("shop", "payments"))


def test_expired_leaf_fails_the_handshake() -> None:
    now = time.time()
    material = Material.generate(TD, now=now)
    old_server, _ = contexts(material, "shop", "web", now=now - 7200, lifetime=3600)
    _, api_client = contexts(material, "shop", "api", now=now)
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        handshake(old_server, api_client, dns_identity("shop", "web"))


def test_certificate_from_another_ca_fails_both_ways() -> None:
    now = time.time()
    ours, theirs = Material.generate(TD, now=now), Material.generate(TD, now=now)
    web_ours, _ = contexts(ours, "shop", "web", now=now)
    web_theirs, _ = contexts(theirs, "shop", "web", now=now)
    _, api_ours = contexts(ours, "shop", "api", now=now)
    _, api_theirs = contexts(theirs, "shop", "api", now=now)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(web_theirs, api_ours, dns_identity("shop", "web"))
    # a server that trusts only our anchors refuses the foreign client's certificate
    with pytest.raises(ssl.SSLError):
        handshake(web_ours, api_theirs, dns_identity("shop", "web"))


def test_bundle_with_two_anchors_trusts_both_chains() -> None:
    """Anchor rotation: with both anchors in the bundle, leaves from either issuer verify,
    although both anchors (and both issuers) share their subject names."""
    now = time.time()
    old = Material.generate(TD, now=now)
    new_anchor = Authority.new_anchor(TD, now=now)
    new_issuer = new_anchor.new_issuer(TD, now=now)
    both = old.bundle.with_anchor(new_anchor.cert)
    key_a, leaf_a = leaf_for(old.issuer, "shop", "web", now=now)
    key_b, leaf_b = leaf_for(new_issuer, "shop", "api", now=now)
    server, _ = tls_contexts([leaf_a, old.issuer.cert], key_a, both)
    _, client = tls_contexts([leaf_b, new_issuer.cert], key_b, both)
    s, _ = handshake(server, client, dns_identity("shop", "web"))
    assert peer_identity(s.getpeercert(), TD) == dns_identity("shop", "api")
    # a peer still trusting only the old anchor refuses the new chain
    _, old_only_client = tls_contexts([leaf_a, old.issuer.cert], key_a, old.bundle)
    new_server, _ = tls_contexts([leaf_b, new_issuer.cert], key_b, both)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(new_server, old_only_client, dns_identity("shop", "api"))


# -- bundles, authorities, describe ----------------------------------------------------------


def test_trust_bundle_operations(material: Material) -> None:
    (a,) = material.bundle.anchors
    b = Authority.new_anchor(TD, now=NOW).cert
    bundle = TrustBundle.from_pem(ca.certs_pem([a, b, a]))
    assert len(bundle) == 2
    assert bundle.fingerprints() == [ca.fingerprint(a), ca.fingerprint(b)]
    assert TrustBundle.from_pem(bundle.to_pem()) == bundle
    fp = ca.fingerprint(b)
    assert len(fp) == 64 and fp == fp.lower()
    assert bundle.find(":".join(fp[i : i + 2] for i in range(0, 64, 2)).upper()) == b
    assert bundle.find("00" * 32) is None
    assert bundle.with_anchor(a) is bundle
    assert bundle.without(fp).anchors == (a,)
    assert bundle.anchor_of(material.issuer.cert) == a
    assert bundle.anchor_of(b) == b
    assert bundle.anchor_of(Material.generate(TD, now=NOW).issuer.cert) is None
    with pytest.raises(CaError, match="at least one anchor"):
        bundle.without(fp).without(ca.fingerprint(a))


def test_trust_bundle_rejects_bad_input(material: Material) -> None:
    _, leaf = leaf_for(material.issuer)
    with pytest.raises(CaError, match="not a CA"):
        TrustBundle.from_pem(ca.cert_pem(leaf))
    with pytest.raises(CaError, match=r"no certificate|not PEM"):
        TrustBundle.from_pem(b"nothing here")
    with pytest.raises(CaError, match="larger than"):
        TrustBundle.from_pem(b"x" * (ca.MAX_PEM_BYTES + 1))


def test_authority_and_issuer_checks(material: Material) -> None:
    issuer = material.issuer
    again = Authority.from_pem(ca.cert_pem(issuer.cert), ca.key_pem(issuer.key))
    assert again.cert == issuer.cert
    assert ca.check_issuer(issuer, material.bundle, now=NOW) == material.bundle.fingerprints()[0]
    with pytest.raises(CaError, match="does not match"):
        Authority.from_pem(ca.cert_pem(issuer.cert), ca.key_pem(ca.new_key()))
    key, leaf = leaf_for(issuer)
    with pytest.raises(CaError, match="not a CA"):
        Authority(leaf, key)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(CaError, match="must be an ECDSA key"):
        Authority.from_pem(ca.cert_pem(issuer.cert), rsa_pem)
    with pytest.raises(CaError, match="not an unencrypted PEM private key"):
        Authority.from_pem(ca.cert_pem(issuer.cert), b"-----BEGIN PRIVATE KEY-----\n")
    foreign = Material.generate(TD, now=NOW).issuer
    with pytest.raises(CaError, match="not signed by any trust anchor"):
        ca.check_issuer(foreign, material.bundle)
    with pytest.raises(CaError, match="expired"):
        ca.check_issuer(issuer, material.bundle, now=NOW + 2 * ca.ISSUER_LIFETIME)
    with pytest.raises(CaError, match="not valid before"):
        ca.check_issuer(issuer, material.bundle, now=NOW - DAY)
    # an anchor may serve as the issuer itself
    anchor = Authority.new_anchor(TD, now=NOW)
    assert ca.check_issuer(anchor, TrustBundle((anchor.cert,))) == ca.fingerprint(anchor.cert)


def test_describe(material: Material) -> None:
    _, leaf = leaf_for(material.issuer, "shop", "web")
    d = describe_json(leaf)
    name, uri = ident("shop", "web")
    assert d["subject"] == f"CN={name}"
    assert d["issuer"] == "CN=identity.cluster.local"
    assert d["sans"] == [f"URI:{uri}", f"DNS:{name}"]
    assert d["isCA"] is False
    assert d["notBeforeEpoch"] == NOW - 20 and d["notAfterEpoch"] == NOW + DAY
    assert d["notAfter"] == "2027-01-16T08:00:00Z"
    assert d["serial"] == format(leaf.serial_number, "x")
    assert d["fingerprint"] == ca.fingerprint(leaf)
    assert describe_json(material.issuer.cert)["isCA"] is True


def describe_json(cert: x509.Certificate) -> dict[str, object]:
    d = ca.describe(cert)
    assert json.loads(json.dumps(d)) == d  # JSON-able
    return d


# -- material on disk ------------------------------------------------------------------------


def test_material_round_trips_through_disk(tmp_path: Path, material: Material) -> None:
    directory = tmp_path / "state" / "identity"
    assert ca.load_material(directory) is None
    old_umask = os.umask(0)  # the modes must not depend on the umask
    try:
        ca.save_material(directory, material)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    path = directory / ca.MATERIAL_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = ca.load_material(directory)
    assert loaded is not None
    assert loaded.bundle == material.bundle
    assert loaded.issuer.cert == material.issuer.cert
    assert ca.same_key(loaded.issuer.cert, loaded.issuer.key)
    assert set(loaded.anchor_keys) == set(material.anchor_keys)
    assert [p.name for p in directory.iterdir()] == [ca.MATERIAL_FILE]  # no temp files left


def test_private_dir_is_tightened(tmp_path: Path) -> None:
    loose = tmp_path / "identity"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    ca.ensure_private_dir(loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700


def test_write_private_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    ca.write_private(path, b"one")
    ca.write_private(path, b"two")
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"version": 2}', "unknown version"),
        (b'{"version": 1}', "malformed"),
    ],
)
def test_corrupt_material_is_an_error(tmp_path: Path, content: bytes, match: str) -> None:
    (tmp_path / ca.MATERIAL_FILE).write_bytes(content)
    with pytest.raises(CaError, match=match):
        ca.load_material(tmp_path)


def test_material_consistency_is_checked(material: Material) -> None:
    other = Material.generate(TD, now=NOW)
    with pytest.raises(CaError, match="not signed by any trust anchor"):
        Material(material.bundle, other.issuer)
    (fp,) = other.anchor_keys
    with pytest.raises(CaError, match="not in the bundle"):
        Material(material.bundle, material.issuer, other.anchor_keys)
    (own,) = material.anchor_keys
    with pytest.raises(CaError, match="does not match"):
        Material(material.bundle, material.issuer, {own: other.anchor_keys[fp]})
