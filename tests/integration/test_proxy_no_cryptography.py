"""The proxy process never imports ``cryptography`` (the sidecar's RSS budget), with identity
still checked: a proxy with a ProxyIdentity certified by a real control plane, in a child
process, then the ``ssl``-only building blocks, the key generator, and StaticIdentity's checks."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.integration.test_control_identity import identity_plane, pod, token_for
from weft.control.client import ControlClient
from weft.identity import ca
from weft.identity.keygen import KeygenError, generate, parse_output
from weft.proxy.identity import pem_tls_contexts, self_handshake, split_certs
from weft.proxy.static_identity import StaticIdentity
from weft.testing.pki import Pki

CHILD = """
import asyncio, json, sys
from weft.metrics import ProxyMetrics
from weft.proxy.config import ProxyConfig
from weft.proxy.identity import ProxyIdentity
from weft.proxy.server import ProxyServer
import weft.proxy.inbound.policy, weft.proxy.static_identity

async def main():
    metrics = ProxyMetrics(process=False)
    identity = ProxyIdentity(sys.argv[1], namespace="default", service_account="web",
                             token_file=sys.argv[2], metrics=metrics)
    config = ProxyConfig(outbound=("127.0.0.1", 0), inbound=("127.0.0.1", 0),
                         admin=("127.0.0.1", 0), shutdown_grace=0.5)
    proxy = ProxyServer(config, metrics=metrics, identity=identity)
    await proxy.start()
    try:
        await identity.start(30.0)
        ready = identity.ready and identity.server_context is not None
    finally:
        await identity.close()
        await proxy.shutdown(grace=0.2)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] == "cryptography")
    print(json.dumps({"ready": ready, "cryptography": loaded}))

asyncio.run(main())
"""


@pytest.fixture
def state_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="weft-nc-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_a_certified_proxy_never_imports_cryptography(state_dir: str) -> None:
    async with identity_plane(state_dir) as (plane, service):
        await ControlClient(plane.endpoint).apply([pod("web-1", sa="web")])
        token = Path(state_dir) / "token"
        token.write_text(token_for(service, "web-1"))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, plane.endpoint, str(token),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, err.decode()
    got = json.loads(out.decode().strip().splitlines()[-1])
    assert got == {"ready": True, "cryptography": []}


async def test_keygen_makes_a_key_and_csr_in_a_child() -> None:
    keys = await generate("web.default.serviceaccount.identity.cluster.local", "spiffe://x/y")
    key = serialization.load_pem_private_key(keys.key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    csr = ca.check_csr(
        keys.csr_pem.encode(), "web.default.serviceaccount.identity.cluster.local", "spiffe://x/y"
    )
    assert csr.public_key() == key.public_key()
    assert "PRIVATE" not in repr(keys)


async def test_keygen_failures_are_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with pytest.raises(KeygenError, match="cannot start the key generator"):
        await generate("a", "b")
    monkeypatch.setattr(sys, "executable", shutil.which("false") or "/bin/false")
    with pytest.raises(KeygenError, match="exited with status 1"):
        await generate("a", "b")
    for data, match in [
        (b"not json", "other than JSON"),
        (b"[]", "no PEM private key"),
        (b'{"key": "-----BEGIN PRIVATE KEY-----"}', "no PEM certificate request"),
        (b" " * 70000, "more than"),
    ]:
        with pytest.raises(KeygenError, match=match):
            parse_output(data)


def test_ssl_only_checks(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    web = pki.leaf("default", "web")
    chain = Path(web.chain).read_bytes()
    anchors = Path(web.anchors).read_bytes()
    key = Path(web.key).read_bytes()
    server, client = pem_tls_contexts(chain, key, anchors)
    peer = self_handshake(server, client, web.name)
    assert ("DNS", web.name) in peer["subjectAltName"]
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        self_handshake(server, client, "api.default.serviceaccount.identity.cluster.local")
    other = ca.key_pem(ca.new_key())
    with pytest.raises(ssl.SSLError) as info:
        pem_tls_contexts(chain, other, anchors)
    assert info.value.reason == "KEY_VALUES_MISMATCH"
    old = pki.leaf("default", "old", now=time.time() - 7200, lifetime=3600)
    server, client = pem_tls_contexts(
        Path(old.chain).read_bytes(), Path(old.key).read_bytes(), anchors
    )
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        self_handshake(server, client, old.name)
    foreign = pki.leaf("default", "evil", issuer=pki.foreign_issuer())
    server, client = pem_tls_contexts(
        Path(foreign.chain).read_bytes(), Path(foreign.key).read_bytes(), anchors
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        self_handshake(server, client, foreign.name)
    with pytest.raises(ValueError, match="no PEM certificate"):
        split_certs(b"garbage", "x.pem")


def test_static_identity_checks(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    web, api = pki.leaf("default", "web"), pki.leaf("default", "api")
    ok = StaticIdentity(chain_file=web.chain, key_file=web.key, anchors_file=web.anchors)
    assert ok.name == web.name and ok.server_context is not None
    named = StaticIdentity(
        chain_file=web.chain, key_file=web.key, anchors_file=web.anchors, name=web.name
    )
    assert named.name == web.name

    def bad(match: str, **kw: str) -> None:
        files = {"chain_file": web.chain, "key_file": web.key, "anchors_file": web.anchors}
        with pytest.raises(ValueError, match=match):
            StaticIdentity(**{**files, **kw})

    bad("is not the key of", key_file=api.key)
    bad("does not name", name=api.name)
    bad("is not of the form", name="web.example.com")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    bad("no PEM certificate", chain_file=str(garbage))
    bad("no PEM certificate", anchors_file=str(garbage))
    bad("no PEM private key", key_file=str(garbage))
    rsa_key = tmp_path / "rsa.key"
    rsa_key.write_bytes(
        rsa.generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    bad("must be an ECDSA key", key_file=str(rsa_key))
    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(
        ca.new_key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    bad("must be an unencrypted ECDSA key", key_file=str(encrypted))
    other_domain = Pki.create(tmp_path / "other", trust_domain="example.org").leaf("default", "x")
    bad("no DNS name of the form", chain_file=other_domain.chain, key_file=other_domain.key)
