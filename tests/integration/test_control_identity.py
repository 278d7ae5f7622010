"""Integration tests: the identity service wired into a real control plane on its unix socket,
driven by the real client: certification and its refusals, the trust watch, rotations, status,
persistence across restarts, and the pods' admin views."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from rich.console import Console

from weft.cli.commands.check import CheckWarning, ca_checks
from weft.cli.commands.identity import pod_lines, status_lines
from weft.control.client import ApiError, ControlClient
from weft.control.config import ControlConfig
from weft.control.httpserver import HttpError
from weft.control.identity import IdentityService, IdentitySettings
from weft.control.server import ControlPlane
from weft.control.store import Store
from weft.identity import ca
from weft.identity.ca import Authority, CaError, Material
from weft.identity.names import dns_identity, spiffe_id
from weft.identity.tokens import TokenClaims, TokenKey
from weft.testing.clock import FakeClock
from weft.testing.cluster import cluster_of

WAIT = 5.0  # generous bound for "arrives"; never asserted as a latency


@pytest.fixture
def state_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="weft-id-", dir="/tmp")  # unix socket paths are short
    yield path
    shutil.rmtree(path, ignore_errors=True)


@asynccontextmanager
async def identity_plane(
    state_dir: str, **kw: Any
) -> AsyncIterator[tuple[ControlPlane, IdentityService]]:
    """A control plane with the identity service wired as the lead wires it."""
    plane = ControlPlane(ControlConfig(state_dir=state_dir, scrape_interval=3600.0))
    kw.setdefault("heartbeat", 0.2)
    service = IdentityService(Path(state_dir) / "identity", plane.state, **kw)
    service.load_or_init()
    plane.api.handlers["identity"] = service.handle
    await plane.start()
    try:
        yield plane, service
    finally:
        await plane.stop(grace=1.0)


def pod(
    name: str,
    namespace: str = "default",
    *,
    sa: str | None = None,
    admin: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "command": ["sleep", "1000"]}]}
    if sa is not None:
        spec["serviceAccountName"] = sa
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if admin is not None:
        meta["annotations"] = {"weft.io/proxy-admin": admin}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def token_for(service: IdentityService, name: str, namespace: str = "default") -> str:
    """The token the runtime would write into the pod."""
    pod = service.state.get("Pod", namespace, name)
    assert pod is not None
    sa = pod["spec"].get("serviceAccountName") or "default"
    claims = TokenClaims(namespace, name, pod["metadata"]["uid"], sa, service.clock())
    return service.token_key.issue(claims)


def csr(namespace: str, sa: str) -> tuple[ca.PrivateKey, str]:
    key = ca.new_key()
    name, uri = dns_identity(namespace, sa), spiffe_id(namespace, sa)
    return key, ca.make_csr(key, name, uri).decode()


@pytest.fixture
async def env(state_dir: str) -> AsyncIterator[tuple[ControlClient, IdentityService]]:
    async with identity_plane(state_dir) as (plane, service):
        yield ControlClient(plane.endpoint), service


async def certify(client: ControlClient, token: str, csr_pem: str) -> dict[str, Any]:
    result: dict[str, Any] = await client.call(
        "POST", "/api/v1/identity/certify", {"token": token, "csr": csr_pem}
    )
    return result


async def status_of(client: ControlClient, method: str, path: str, body: Any = None) -> int:
    with pytest.raises(ApiError) as info:
        await client.call(method, path, body)
    return info.value.status


# -- certification ---------------------------------------------------------------------------


async def test_certify(env: tuple[ControlClient, IdentityService]) -> None:
    client, service = env
    await client.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}])
    await client.apply([pod("web-1", "shop", sa="web")])
    key, request = csr("shop", "web")
    got = await certify(client, token_for(service, "web-1", "shop"), request)
    name = "web.shop.serviceaccount.identity.cluster.local"
    assert got["identity"] == name
    assert got["spiffe"] == "spiffe://cluster.local/ns/shop/sa/web"
    leaf = x509.load_pem_x509_certificate(got["certificate"].encode())
    (issuer_pem,) = got["chain"]
    issuer = x509.load_pem_x509_certificate(issuer_pem.encode())
    assert ca.same_key(leaf, key)
    assert ca.sans_of(leaf) == [f"URI:{got['spiffe']}", f"DNS:{name}"]
    assert ca.issued_by(leaf, issuer)
    assert ca.TrustBundle.from_pem(got["trustAnchors"].encode()).anchor_of(issuer) is not None
    assert got["notAfter"] - got["notBefore"] == pytest.approx(86400 + 20, abs=2)
    assert got["notAfter"] == ca.not_after(leaf)


async def test_bad_tokens_are_401(env: tuple[ControlClient, IdentityService]) -> None:
    client, service = env
    await client.apply([pod("web-1", sa="web")])
    _, request = csr("default", "web")
    good = token_for(service, "web-1")
    uid = service.state.get("Pod", "default", "web-1")["metadata"]["uid"]  # type: ignore[index]
    now = time.time()
    cases = {
        "garbage": ("not-a-token", "not a weft token"),
        "other key": (
            TokenKey.generate().issue(TokenClaims("default", "web-1", uid, "web", now)),
            "signature does not match",
        ),
        "no such pod": (
            service.token_key.issue(TokenClaims("default", "ghost", uid, "web", now)),
            "pod default/ghost does not exist",
        ),
        "wrong account": (
            service.token_key.issue(TokenClaims("default", "web-1", uid, "admin", now)),
            "runs as 'web'",
        ),
        "expired": (
            service.token_key.issue(TokenClaims("default", "web-1", uid, "web", now - 25 * 3600)),
            "the token expired: issued 25.0 h ago (valid for 24 h)",
        ),
        "truncated": (good[:-5], "signature"),
    }
    for label, (token, reason) in cases.items():
        with pytest.raises(ApiError) as info:
            await certify(client, token, request)
        assert info.value.status == 401, label
        assert reason in info.value.message, (label, info.value.message)
    # a pod recreated under the same name has a new uid: the old token dies with the old pod
    await client.delete([pod("web-1")])
    await client.apply([pod("web-1", sa="web")])
    with pytest.raises(ApiError) as info:
        await certify(client, good, request)
    assert info.value.status == 401 and "earlier pod default/web-1" in info.value.message


async def test_bad_csrs_are_400_and_other_identities_403(
    env: tuple[ControlClient, IdentityService],
) -> None:
    client, service = env
    await client.apply([pod("web-1", sa="web")])
    token = token_for(service, "web-1")
    with pytest.raises(ApiError) as info:
        await certify(client, token, "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n")
    assert info.value.status == 400 and "invalid CSR" in info.value.message
    _, other = csr("default", "admin")
    with pytest.raises(ApiError) as info:
        await certify(client, token, other)
    assert info.value.status == 403
    assert "web.default.serviceaccount.identity.cluster.local" in info.value.message
    for body in ({"token": token}, {"csr": other}, {"token": 1, "csr": other}, [1]):
        assert await status_of(client, "POST", "/api/v1/identity/certify", body) == 400
    assert await status_of(client, "GET", "/api/v1/identity/certify") == 405
    assert await status_of(client, "GET", "/api/v1/identity/nope") == 404


# -- trust watch and rotations ---------------------------------------------------------------


async def next_item(stream: AsyncIterator[Any]) -> Any:
    while True:
        item = await asyncio.wait_for(anext(stream), WAIT)
        if item != {}:
            return item


async def test_trust_watch_sees_rotations(env: tuple[ControlClient, IdentityService]) -> None:
    client, service = env
    trust = await client.call("GET", "/api/v1/identity/trust")
    stream = client.stream("/api/v1/identity/trust?watch=1")
    first = await next_item(stream)
    assert first == trust
    assert first["issuer"]["fingerprint"] == ca.fingerprint(service.material.issuer.cert)
    # heartbeats keep the stream alive
    assert await asyncio.wait_for(anext(stream), WAIT) == {}

    rotated = await client.call("POST", "/api/v1/identity/issuer", {})
    after_issuer = await next_item(stream)
    assert after_issuer["issuer"]["fingerprint"] == rotated["issuer"]["fingerprint"]
    assert after_issuer["issuer"]["fingerprint"] != first["issuer"]["fingerprint"]
    assert after_issuer["trustAnchors"] == first["trustAnchors"]

    added = await client.call("POST", "/api/v1/identity/anchors", {"generate": True})
    assert added["added"] is True
    after_anchor = await next_item(stream)
    bundle = ca.TrustBundle.from_pem(after_anchor["trustAnchors"].encode())
    assert len(bundle) == 2 and added["fingerprint"] in bundle.fingerprints()
    await stream.aclose()


async def test_anchor_rotation_procedure(env: tuple[ControlClient, IdentityService]) -> None:
    """Add a new anchor, move the issuer to it, then remove the old anchor."""
    client, service = env
    (old,) = service.material.bundle.fingerprints()
    new = (await client.call("POST", "/api/v1/identity/anchors", {"generate": True}))["fingerprint"]
    # the issuer still chains to the old anchor
    assert await status_of(client, "DELETE", f"/api/v1/identity/anchors/{old}") == 409
    await client.call("POST", "/api/v1/identity/issuer", {})  # newest anchor with a key
    assert service.material.bundle.anchor_of(service.material.issuer.cert) == (
        service.material.bundle.find(new)
    )
    removed = await client.call("DELETE", f"/api/v1/identity/anchors/{old[:12]}")
    assert removed == {"fingerprint": old, "removed": True}
    assert service.material.bundle.fingerprints() == [new]
    assert set(service.material.anchor_keys) == {new}
    assert await status_of(client, "DELETE", f"/api/v1/identity/anchors/{old}") == 404
    assert await status_of(client, "DELETE", "/api/v1/identity/anchors/abc") == 404
    assert await status_of(client, "DELETE", f"/api/v1/identity/anchors/{new}") == 409


async def test_supplied_issuer_and_anchor(env: tuple[ControlClient, IdentityService]) -> None:
    client, service = env
    now = time.time()
    anchor = Authority.new_anchor("cluster.local", now=now)
    added = await client.call(
        "POST", "/api/v1/identity/anchors", {"certificate": ca.cert_pem(anchor.cert).decode()}
    )
    assert added["added"] is True and added["anchor"]["isCA"] is True
    again = await client.call(
        "POST", "/api/v1/identity/anchors", {"certificate": ca.cert_pem(anchor.cert).decode()}
    )
    assert again["added"] is False
    status = await client.call("GET", "/api/v1/identity/status")
    has_key = {a["fingerprint"]: a["hasKey"] for a in status["anchors"]}
    assert has_key[added["fingerprint"]] is False and sum(has_key.values()) == 1

    issuer = anchor.new_issuer("cluster.local", now=now)
    body = {
        "certificate": ca.cert_pem(issuer.cert).decode(),
        "key": ca.key_pem(issuer.key).decode(),
    }
    got = await client.call("POST", "/api/v1/identity/issuer", body)
    assert got["issuer"]["fingerprint"] == ca.fingerprint(issuer.cert)
    assert service.material.issuer.cert == issuer.cert

    # leaves are now signed by the supplied issuer
    await client.apply([pod("web-1")])
    _, request = csr("default", "default")
    leaf = await certify(client, token_for(service, "web-1"), request)
    assert leaf["chain"] == [ca.cert_pem(issuer.cert).decode()]

    foreign = Material.generate("cluster.local", now=now).issuer
    bad_bodies = [
        {
            "certificate": ca.cert_pem(foreign.cert).decode(),
            "key": ca.key_pem(foreign.key).decode(),
        },
        {"certificate": body["certificate"], "key": ca.key_pem(ca.new_key()).decode()},
        {"certificate": "nope", "key": "nope"},
        {"certificate": body["certificate"]},
        {"certificate": body["certificate"], "key": body["key"], "extra": 1},
    ]
    for bad in bad_bodies:
        assert await status_of(client, "POST", "/api/v1/identity/issuer", bad) == 400
    leaf_pem = leaf["certificate"]
    for bad in ({"certificate": leaf_pem}, {"certificate": "x"}, {"generate": "yes"}, {}):
        assert await status_of(client, "POST", "/api/v1/identity/anchors", bad) == 400
    assert service.material.issuer.cert == issuer.cert


async def test_generated_issuer_needs_an_anchor_key(state_dir: str) -> None:
    now = time.time()
    anchor = Authority.new_anchor("cluster.local", now=now)
    issuer = anchor.new_issuer("cluster.local", now=now)
    async with identity_plane(state_dir) as (plane, service):
        assert service.import_material(
            ca.cert_pem(anchor.cert), ca.cert_pem(issuer.cert), ca.key_pem(issuer.key)
        )
        client = ControlClient(plane.endpoint)
        assert await status_of(client, "POST", "/api/v1/identity/issuer", {}) == 409


# -- status ----------------------------------------------------------------------------------


async def test_status_warns_before_expiry(state_dir: str) -> None:
    clock = FakeClock(time.time())
    async with identity_plane(state_dir, clock=clock, leaf_lifetime=3600.0) as (plane, service):
        client = ControlClient(plane.endpoint)
        status = await client.call("GET", "/api/v1/identity/status")
        assert status["trustDomain"] == "cluster.local" and status["leafLifetime"] == 3600.0
        assert status["warnings"] == []
        (anchor,) = status["anchors"]
        assert anchor["hasKey"] is True and anchor["isCA"] is True
        assert status["issuer"]["anchor"] == anchor["fingerprint"]

        clock.advance(365 * 86400 - 59 * 86400)  # the issuer has 59 days left
        (warning,) = (await client.call("GET", "/api/v1/identity/status"))["warnings"]
        assert warning["kind"] == "issuer" and warning["expired"] is False
        assert "expires at" in warning["message"] and "59 days" in warning["message"]

        clock.advance(60 * 86400)
        (warning,) = (await client.call("GET", "/api/v1/identity/status"))["warnings"]
        assert warning["expired"] is True and "expired at" in warning["message"]
        # an expired issuer signs nothing: the proxies keep their leaves and the status says why
        await client.apply([pod("web-1")])
        _, request = csr("default", "default")
        with pytest.raises(ApiError) as info:
            await certify(client, token_for(service, "web-1"), request)
        assert info.value.status == 503 and "rotate it" in info.value.message

        clock.advance(10 * 365 * 86400)
        warnings = (await client.call("GET", "/api/v1/identity/status"))["warnings"]
        assert {(w["kind"], w["expired"]) for w in warnings} == {
            ("trust anchor", True),
            ("issuer", True),
        }


# -- persistence and import ------------------------------------------------------------------


async def test_material_persists_across_restarts(state_dir: str) -> None:
    async with identity_plane(state_dir) as (plane, service):
        client = ControlClient(plane.endpoint)
        await client.call("POST", "/api/v1/identity/anchors", {"generate": True})
        await client.call("POST", "/api/v1/identity/issuer", {})
        await client.apply([pod("web-1")])
        token = token_for(service, "web-1")
        before = await client.call("GET", "/api/v1/identity/trust")
    directory = Path(state_dir) / "identity"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for f in directory.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    async with identity_plane(state_dir) as (plane, service):
        client = ControlClient(plane.endpoint)
        assert await client.call("GET", "/api/v1/identity/trust") == before
        assert len(service.material.anchor_keys) == 2
        _, request = csr("default", "default")
        assert (await certify(client, token, request))["identity"] == dns_identity(
            "default", "default"
        )


async def test_import_material(state_dir: str) -> None:
    now = time.time()
    anchor = Authority.new_anchor("cluster.local", now=now)
    issuer = anchor.new_issuer("cluster.local", now=now)
    files = Path(state_dir) / "user"
    files.mkdir()
    (files / "anchors.pem").write_bytes(ca.cert_pem(anchor.cert))
    (files / "issuer.crt").write_bytes(ca.cert_pem(issuer.cert))
    (files / "issuer.key").write_bytes(ca.key_pem(issuer.key))
    paths = [str(files / n) for n in ("anchors.pem", "issuer.crt", "issuer.key")]
    settings = IdentitySettings(trust_anchors=paths[0], issuer_cert=paths[1], issuer_key=paths[2])
    assert settings.imports

    async with identity_plane(state_dir) as (plane, service):
        assert service.import_files(*paths) is True
        assert service.material.bundle.fingerprints() == [ca.fingerprint(anchor.cert)]
        assert service.material.anchor_keys == {}
        client = ControlClient(plane.endpoint)
        added = await client.call("POST", "/api/v1/identity/anchors", {"generate": True})
    # the same files at the next start keep what the API changed since
    async with identity_plane(state_dir) as (plane, service):
        assert service.import_files(*paths) is False
        assert added["fingerprint"] in service.material.bundle.fingerprints()
    # changed files win
    other = Authority.new_anchor("cluster.local", now=now)
    other_issuer = other.new_issuer("cluster.local", now=now)
    (files / "anchors.pem").write_bytes(ca.cert_pem(other.cert) + ca.cert_pem(anchor.cert))
    (files / "issuer.crt").write_bytes(ca.cert_pem(other_issuer.cert))
    (files / "issuer.key").write_bytes(ca.key_pem(other_issuer.key))
    async with identity_plane(state_dir) as (plane, service):
        assert service.import_files(*paths) is True
        assert service.material.issuer.cert == other_issuer.cert
        assert len(service.material.bundle) == 2


@pytest.mark.parametrize(
    ("which", "match"),
    [
        ("foreign issuer", "not signed by any trust anchor"),
        ("key mismatch", "does not match"),
        ("leaf as issuer", "not a CA"),
        ("garbage anchors", "trust anchors"),
        ("expired issuer", "expired"),
    ],
)
async def test_import_refuses_unusable_material(state_dir: str, which: str, match: str) -> None:
    now = time.time()
    anchor = Authority.new_anchor("cluster.local", now=now)
    issuer = anchor.new_issuer("cluster.local", now=now)
    anchors, cert, key = ca.cert_pem(anchor.cert), ca.cert_pem(issuer.cert), ca.key_pem(issuer.key)
    if which == "foreign issuer":
        foreign = Material.generate("cluster.local", now=now).issuer
        cert, key = ca.cert_pem(foreign.cert), ca.key_pem(foreign.key)
    elif which == "key mismatch":
        key = ca.key_pem(ca.new_key())
    elif which == "leaf as issuer":
        leaf_key, leaf_csr = csr("default", "web")
        name, uri = dns_identity("default", "web"), spiffe_id("default", "web")
        cert = ca.cert_pem(issuer.sign_leaf(leaf_csr.encode(), name, uri, now=now))
        key = ca.key_pem(leaf_key)
    elif which == "garbage anchors":
        anchors = b"garbage"
    elif which == "expired issuer":
        short = anchor.new_issuer("cluster.local", now=now - 7200, lifetime=3600)
        cert, key = ca.cert_pem(short.cert), ca.key_pem(short.key)
    service = IdentityService(Path(state_dir) / "identity", cluster_of(Store()))
    with pytest.raises(CaError, match=match):
        service.import_material(anchors, cert, key)
    with pytest.raises(CaError, match="cannot read"):
        service.import_files(str(Path(state_dir) / "missing.pem"), "x", "y")


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="all three or none"):
        IdentitySettings(trust_anchors="a.pem")
    with pytest.raises(ValueError, match="trust domain"):
        IdentitySettings(trust_domain="Not A Domain")
    with pytest.raises(ValueError, match="leaf-lifetime"):
        IdentitySettings(leaf_lifetime=0)
    assert not IdentitySettings().imports


async def test_corrupt_material_refuses_to_start(state_dir: str) -> None:
    directory = Path(state_dir) / "identity"
    directory.mkdir(mode=0o700)
    (directory / ca.MATERIAL_FILE).write_text("{broken")
    service = IdentityService(directory, cluster_of(Store()))
    with pytest.raises(CaError, match="not valid JSON"):
        service.load_or_init()
    assert (directory / ca.MATERIAL_FILE).read_text() == "{broken"  # never replaced silently


# -- the pods' admin views -------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_pod_view_errors(env: tuple[ControlClient, IdentityService]) -> None:
    client, _ = env
    with pytest.raises(ApiError) as info:
        await client.call("GET", "/api/v1/identity/pods/default/ghost")
    assert info.value.status == 404 and "Pod default/ghost not found" in info.value.message
    await client.apply(
        [
            pod("down", admin=f"127.0.0.1:{closed_port()}"),
            pod("far", admin="192.0.2.7:4191"),
            pod("new"),
            pod("bad", admin="nowhere"),
        ]
    )
    for name, reason in [
        ("down", "proxy of pod default/down at 127.0.0.1"),
        ("far", "outside the pod network"),
        ("new", "no IP address yet"),
        ("bad", "invalid proxy admin address"),
    ]:
        with pytest.raises(ApiError) as info:
            await client.call("GET", f"/api/v1/identity/pods/default/{name}")
        assert info.value.status == 502, name
        assert reason in info.value.message, (name, info.value.message)


async def test_pod_view_from_a_proxy_admin_port(
    env: tuple[ControlClient, IdentityService], proxy_factory: Any
) -> None:
    client, _ = env
    async with proxy_factory() as proxy:
        host, port = proxy.addresses["admin"]
        await client.apply([pod("web-1", admin=f"{host}:{port}")])
        with pytest.raises(ApiError) as info:  # a proxy without identity
            await client.call("GET", "/api/v1/identity/pods/default/web-1")
        assert info.value.status == 502 and "has no identity" in info.value.message
        proxy.admin_views["/identity"] = lambda: {"identity": "x", "chain": []}
        got = await client.call("GET", "/api/v1/identity/pods/default/web-1")
        assert got == {
            "pod": "default/web-1",
            "admin": f"{host}:{port}",
            "proxy": {"identity": "x", "chain": []},
        }


async def test_pod_view_of_a_proxy_that_never_answers(
    env: tuple[ControlClient, IdentityService], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = env
    monkeypatch.setattr("weft.control.identity.VIEW_TIMEOUT", 0.3)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    try:
        port = server.getsockname()[1]
        await client.apply([pod("stuck", admin=f"127.0.0.1:{port}")])
        with pytest.raises(ApiError) as info:
            await client.call("GET", "/api/v1/identity/pods/default/stuck")
        assert info.value.status == 502 and "no answer" in info.value.message
    finally:
        with contextlib.suppress(OSError):
            server.close()


# -- the CLI ---------------------------------------------------------------------------------


async def weft(*args: str, state_dir: str) -> tuple[int, str, str]:
    env = {**os.environ, "WEFT_STATE_DIR": state_dir, "COLUMNS": "200"}
    env.pop("WEFT_CONTROL", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "weft", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_status_and_rotations(state_dir: str, tmp_path: Path) -> None:
    async with identity_plane(state_dir) as (_, service):
        rc, out, err = await weft("identity", "status", state_dir=state_dir)
        assert rc == 0, err
        (anchor,) = service.material.bundle.fingerprints()
        assert "trust domain   cluster.local" in out and "leaf lifetime  24h" in out
        assert f"{anchor} (key held here)" in out
        assert "subject      CN=identity.cluster.local" in out and "Warnings" not in out

        rc, out, err = await weft("identity", "add-anchor", "--generate", state_dir=state_dir)
        assert rc == 0 and "added; proxies now trust it too" in out, err
        (new,) = set(service.material.bundle.fingerprints()) - {anchor}
        rc, out, err = await weft("identity", "rotate-issuer", state_dir=state_dir)
        assert rc == 0 and "issuer rotated" in out, err
        assert service.material.bundle.anchor_of(service.material.issuer.cert) == (
            service.material.bundle.find(new)
        )
        rc, out, err = await weft("identity", "remove-anchor", anchor[:16], state_dir=state_dir)
        assert rc == 0 and f"trust anchor {anchor} removed" in out, err

        # a supplied anchor and issuer, from files
        now = time.time()
        user_anchor = Authority.new_anchor("cluster.local", now=now)
        user_issuer = user_anchor.new_issuer("cluster.local", now=now)
        (tmp_path / "a.pem").write_bytes(ca.cert_pem(user_anchor.cert))
        (tmp_path / "i.pem").write_bytes(ca.cert_pem(user_issuer.cert))
        (tmp_path / "i.key").write_bytes(ca.key_pem(user_issuer.key))
        rc, out, err = await weft(
            "identity", "add-anchor", "--cert", str(tmp_path / "a.pem"), state_dir=state_dir
        )
        assert rc == 0, err
        rc, out, err = await weft(
            "identity", "rotate-issuer", "--cert", str(tmp_path / "i.pem"),
            "--key", str(tmp_path / "i.key"), "-o", "json", state_dir=state_dir,
        )  # fmt: skip
        assert rc == 0, err
        assert json.loads(out)["issuer"]["fingerprint"] == ca.fingerprint(user_issuer.cert)

        # refusals are one clear line and exit 1
        rc, out, err = await weft("identity", "remove-anchor", new, state_dir=state_dir)
        assert rc == 0, err  # the issuer now chains to the user's anchor
        user_fp = ca.fingerprint(user_anchor.cert)
        rc, out, err = await weft("identity", "remove-anchor", user_fp, state_dir=state_dir)
        assert rc == 1 and "the issuer chains to anchor" in err
        rc, out, err = await weft("identity", "rotate-issuer", state_dir=state_dir)
        assert rc == 1 and "holds no trust anchor's key" in err


async def test_cli_usage_errors(state_dir: str) -> None:
    cases = [
        (["identity", "remove-anchor"], "needs the anchor's FINGERPRINT"),
        (["identity", "add-anchor"], "takes --generate or --cert FILE"),
        (["identity", "rotate-issuer", "--cert", "x"], "--cert and --key together"),
        (["identity", "status", "--generate"], "--generate cannot be used with status"),
        (["identity", "web-1", "--key", "k"], "--key cannot be used with a pod"),
        (["identity", "add-anchor", "--cert", "/nonexistent.pem"], "cannot read the certificate"),
    ]
    for args, message in cases:
        rc, out, err = await weft(*args, state_dir=state_dir)
        assert rc != 0 and message in err, (args, err)
        assert out == ""
    rc, out, err = await weft("identity", "status", state_dir=state_dir)
    assert rc == 1 and "the mesh is not running" in err


async def test_cli_pod_errors(state_dir: str) -> None:
    async with identity_plane(state_dir) as (plane, _):
        await ControlClient(plane.endpoint).apply([pod("down", admin=f"127.0.0.1:{closed_port()}")])
        rc, _, err = await weft("identity", "ghost", state_dir=state_dir)
        assert rc == 1 and "Pod default/ghost not found" in err
        rc, _, err = await weft("identity", "pod/down", state_dir=state_dir)
        assert rc == 1 and "proxy of pod default/down" in err and "weft logs" in err


async def test_weft_control_identity_flags(state_dir: str, tmp_path: Path) -> None:
    key = tmp_path / "issuer.key"
    key.write_text("x")
    cases = [
        (["--trust-domain", "Not Valid"], "invalid trust domain"),
        (["--leaf-lifetime", "soon"], "invalid duration 'soon'"),
        (["--issuer-key", str(key)], "all three or none"),
        (["--trust-anchors", str(tmp_path / "missing.pem")], "--trust-anchors"),
    ]
    for flags, message in cases:
        rc, _, err = await weft("control", "--state-dir", state_dir, *flags, state_dir=state_dir)
        assert rc == 2 and message in err, (flags, err)


def test_identity_settings_from_flags(tmp_path: Path) -> None:
    from weft.cli.commands.control import identity_settings

    for name in ("a.pem", "i.pem", "i.key"):
        (tmp_path / name).write_text("x")
    args = argparse.Namespace(
        trust_domain="example.org",
        leaf_lifetime="1h30m",
        trust_anchors=str(tmp_path / "a.pem"),
        issuer_cert=str(tmp_path / "i.pem"),
        issuer_key=str(tmp_path / "i.key"),
    )
    settings = identity_settings(args)
    assert settings == IdentitySettings(
        trust_domain="example.org",
        leaf_lifetime=5400.0,
        trust_anchors=str(tmp_path / "a.pem"),
        issuer_cert=str(tmp_path / "i.pem"),
        issuer_key=str(tmp_path / "i.key"),
    )


def test_status_and_check_rendering() -> None:
    now = float(int(time.time()))  # certificates hold whole seconds
    clock = FakeClock(now)
    service = IdentityService(Path("/nonexistent"), cluster_of(Store()), clock=clock)
    service._material = Material.generate("cluster.local", now=now)
    clock.advance(365 * 86400 - 30 * 86400)  # the issuer has 30 days left
    status = service.status()
    checks = ca_checks(status, clock())
    anchor, issuer = checks
    assert anchor.ok and not isinstance(anchor, CheckWarning) and "left" in anchor.detail
    assert isinstance(issuer, CheckWarning) and issuer.ok and "in 30d" in issuer.detail
    assert "rotate-issuer" in issuer.hint
    text = "\n".join(status_lines(status, clock()))
    assert "Warnings" in text and "30 days" in text
    clock.advance(31 * 86400)
    expired = ca_checks(service.status(), clock())[1]
    assert not expired.ok and "expired at" in expired.detail
    assert "EXPIRED" in "\n".join(status_lines(service.status(), clock()))


def test_pod_report_rendering() -> None:
    now = 1_800_000_000.0
    material = Material.generate("cluster.local", now=now)
    key = ca.new_key()
    name, uri = dns_identity("shop", "web"), spiffe_id("shop", "web")
    leaf = material.issuer.sign_leaf(ca.make_csr(key, name, uri), name, uri, now=now)
    answer = {
        "pod": "shop/web-1",
        "admin": "10.244.0.5:4191",
        "proxy": {
            "identity": name,
            "spiffe": uri,
            "ready": True,
            "chain": [ca.describe(leaf), ca.describe(material.issuer.cert)],
            "trustAnchors": [ca.describe(a) for a in material.bundle.anchors],
            "refreshCount": 3,
            "lastError": "control plane answered 503: [rotate it]",
            "nextRenewal": now + 3600,
        },
    }
    console = Console(record=True, width=300, highlight=False)
    for line in pod_lines(answer, now + 60):
        console.print(line)
    text = console.export_text()
    assert "Pod shop/web-1" in text
    assert f"identity  {name}" in text and f"SPIFFE    {uri}" in text
    assert "certified 3 time(s); next renewal in 59m" in text
    assert "last error: control plane answered 503: [rotate it]" in text  # no markup eaten
    assert "[0] leaf" in text and "[1] issuer" in text and "Trust anchors (1)" in text
    assert f"SANs         URI:{uri}, DNS:{name}" in text
    assert "(23h left)" in text
    console = Console(record=True, width=300, highlight=False)
    for line in pod_lines(answer, now + 2 * 86400):
        console.print(line)
    assert "EXPIRED 24h ago" in console.export_text()


async def test_a_token_review_that_cannot_be_made_is_503_not_401(tmp_path: Path) -> None:
    """TokenReview with the API server unreachable: the proxy is told to try again later
    (503), not that its token is bad (401)."""
    from lightkube import AsyncClient
    from lightkube.config.kubeconfig import KubeConfig

    from weft.control.tokenreview import KubeTokenReviewer, ReviewUnavailable

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = KubeConfig.from_dict(
        {
            "clusters": [
                {
                    "name": "c",
                    "cluster": {
                        "server": f"https://127.0.0.1:{port}",
                        "insecure-skip-tls-verify": True,
                    },
                }
            ],
            "users": [{"name": "u", "user": {"token": "x"}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
    )
    reviewer = KubeTokenReviewer(AsyncClient(config))
    with pytest.raises(ReviewUnavailable, match="TokenReview failed"):
        await reviewer.review("a-token")
    service = IdentityService(tmp_path / "identity", cluster_of(Store()), reviewer=reviewer)
    service.load_or_init()
    _, request = csr("default", "web")
    with pytest.raises(HttpError) as info:
        await service.certify("a-token", request.encode())
    assert info.value.status == 503 and "cannot review the token now" in info.value.message
