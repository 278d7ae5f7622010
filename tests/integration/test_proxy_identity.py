"""Integration tests: ProxyIdentity against a real control plane (unix socket) with the identity
service wired in: first certificate, renewal, renewal on issuer rotation, new anchors, serving
through a control-plane outage, metrics and the admin view, and mutual TLS between two proxies'
identities over real sockets."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_control_identity import identity_plane, pod, token_for, weft
from weft.control.client import ControlClient
from weft.control.identity import IdentityService, describe_view
from weft.core.backoff import ExponentialBackoff
from weft.identity import ca
from weft.identity.names import dns_identity, peer_identity
from weft.metrics import ProxyMetrics
from weft.proxy.identity import IdentityError, ProxyIdentity
from weft.testing import wait_until

WAIT = 10.0  # generous bound for "happens"; never asserted as a latency
FAST = ExponentialBackoff(base=0.05, maximum=0.3)


@pytest.fixture
def state_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="weft-pid-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def described(identity: ProxyIdentity) -> dict[str, Any]:
    """The identity's admin view as the control plane describes it."""
    view: dict[str, Any] = describe_view(identity.view())
    return view


def public_key(chain_pem: str) -> bytes:
    leaf = ca.load_certs_pem(chain_pem.encode())[0]
    return leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


class Workload:
    """A pod in the store and its token file, as the runtime would make them."""

    def __init__(self, state_dir: str, name: str, sa: str, namespace: str = "default") -> None:
        self.name, self.sa, self.namespace = name, sa, namespace
        self.token_file = Path(state_dir) / f"{name}.token"

    async def create(self, client: ControlClient, service: IdentityService) -> None:
        await client.apply([pod(self.name, self.namespace, sa=self.sa)])
        self.token_file.write_text(token_for(service, self.name, self.namespace) + "\n")

    def identity(self, endpoint: str, **kw: Any) -> ProxyIdentity:
        kw.setdefault("backoff", FAST)
        return ProxyIdentity(
            endpoint,
            namespace=self.namespace,
            service_account=self.sa,
            token_file=str(self.token_file),
            **kw,
        )


@asynccontextmanager
async def started(identity: ProxyIdentity, timeout: float = WAIT) -> AsyncIterator[ProxyIdentity]:
    try:
        await identity.start(timeout)
        yield identity
    finally:
        await identity.close()


async def test_first_certificate_view_and_metrics(state_dir: str) -> None:
    async with identity_plane(state_dir) as (plane, service):
        web = Workload(state_dir, "web-1", "web")
        await web.create(ControlClient(plane.endpoint), service)
        metrics = ProxyMetrics(process=False)
        changes: list[int] = []
        identity = web.identity(plane.endpoint, metrics=metrics)
        identity.on_change.append(lambda: changes.append(1))
        assert not identity.ready
        assert identity.server_context is None and identity.client_context is None
        async with started(identity):
            assert identity.ready and changes == [1]
            assert identity.name == dns_identity("default", "web")
            assert identity.spiffe == "spiffe://cluster.local/ns/default/sa/web"
            server, client = identity.server_context, identity.client_context
            assert server is not None and client is not None
            assert server.minimum_version == client.minimum_version == ssl.TLSVersion.TLSv1_3
            assert server.verify_mode == ssl.CERT_OPTIONAL
            assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname

            raw = identity.view()
            assert raw["identity"] == identity.name and raw["ready"] is True
            assert "chain" not in raw and "trustAnchors" not in raw  # PEM only, from the proxy
            view = describe_view(raw)
            leaf, issuer = view["chain"]
            assert raw["notBefore"] == leaf["notBeforeEpoch"]
            assert raw["notAfter"] == leaf["notAfterEpoch"]
            assert f"DNS:{identity.name}" in leaf["sans"]
            assert issuer["fingerprint"] == ca.fingerprint(service.material.issuer.cert)
            assert "PRIVATE KEY" not in view["pem"] and view["pem"].count("CERTIFICATE") == 4
            assert [a["fingerprint"] for a in view["trustAnchors"]] == (
                service.material.bundle.fingerprints()
            )
            assert view["refreshCount"] == 1 and view["lastError"] is None
            assert view["nextRenewal"] == pytest.approx(
                time.time() + 0.7 * 86400, abs=60
            )  # 70% of the lifetime

            families = {
                f.name: f for f in text_string_to_metric_families(metrics.expose().decode())
            }
            expiry = families["identity_cert_expiration_timestamp_seconds"]
            assert expiry.type == "gauge"
            assert expiry.samples[0].value == pytest.approx(leaf["notAfterEpoch"])
            refresh = families["identity_cert_refresh_count"]
            assert refresh.type == "counter" and refresh.samples[0].value == 1


async def test_renews_before_expiry(state_dir: str) -> None:
    async with identity_plane(state_dir, leaf_lifetime=3.0) as (plane, service):
        web = Workload(state_dir, "web-1", "web")
        await web.create(ControlClient(plane.endpoint), service)
        async with started(web.identity(plane.endpoint)) as identity:
            first, first_pem = described(identity)["chain"][0], identity.view()["pem"]
            assert first["notAfterEpoch"] - time.time() <= 3.0
            await wait_until(lambda: identity.refresh_count >= 3, WAIT, what="two renewals")
            latest = described(identity)["chain"][0]
            assert latest["serial"] != first["serial"]
            # a new key for every renewal
            assert public_key(identity.view()["pem"]) != public_key(first_pem)
            assert latest["notAfterEpoch"] > first["notAfterEpoch"]


async def test_renews_on_issuer_rotation_and_takes_new_anchors(state_dir: str) -> None:
    async with identity_plane(state_dir) as (plane, service):
        client = ControlClient(plane.endpoint)
        web = Workload(state_dir, "web-1", "web")
        await web.create(client, service)
        async with started(web.identity(plane.endpoint)) as identity:
            changes: list[ssl.SSLContext | None] = []
            identity.on_change.append(lambda: changes.append(identity.client_context))
            before = identity.client_context
            await asyncio.sleep(0.3)  # the trust watch is connected
            rotated = await client.call("POST", "/api/v1/identity/issuer", {})
            fp = rotated["issuer"]["fingerprint"]
            await wait_until(
                lambda: described(identity)["chain"][1]["fingerprint"] == fp,
                WAIT,
                what="a leaf of the new issuer",
            )
            assert identity.refresh_count == 2
            assert changes and changes[-1] is identity.client_context is not before

            added = await client.call("POST", "/api/v1/identity/anchors", {"generate": True})
            await wait_until(
                lambda: (
                    added["fingerprint"]
                    in [a["fingerprint"] for a in described(identity)["trustAnchors"]]
                ),
                WAIT,
                what="the new anchor in the proxy's bundle",
            )
            assert identity.refresh_count == 2  # new anchors need no new leaf


async def test_serves_with_its_certificate_while_the_control_plane_is_down(
    state_dir: str,
) -> None:
    async with identity_plane(state_dir, leaf_lifetime=8.0) as (plane, service):
        client = ControlClient(plane.endpoint)
        web, api = Workload(state_dir, "web-1", "web"), Workload(state_dir, "api-1", "api")
        await web.create(client, service)
        await api.create(client, service)
        web_id = web.identity(plane.endpoint)
        api_id = api.identity(plane.endpoint)
        await web_id.start(WAIT)
        await api_id.start(WAIT)
    try:
        # the control plane is gone: renewal (due after 5.6 s) fails and is retried
        held = described(web_id)["chain"][0]
        await wait_until(lambda: web_id.last_error is not None, WAIT, what="a failed renewal")
        assert "cannot reach the control plane" in (web_id.last_error or "")
        assert web_id.ready and described(web_id)["chain"][0] == held
        # ... while the current certificate still serves
        assert time.time() < held["notAfterEpoch"]
        got = await mtls_exchange(web_id, api_id, web_id.name)
        assert got == api_id.name

        async with identity_plane(state_dir, leaf_lifetime=8.0):
            await wait_until(
                lambda: web_id.last_error is None and web_id.refresh_count >= 2,
                WAIT,
                what="renewal once the control plane is back",
            )
            assert described(web_id)["chain"][0]["serial"] != held["serial"]
    finally:
        await web_id.close()
        await api_id.close()


async def test_first_certificate_failures(state_dir: str) -> None:
    async with identity_plane(state_dir) as (plane, service):
        client = ControlClient(plane.endpoint)
        web = Workload(state_dir, "web-1", "web")
        missing = web.identity(plane.endpoint)
        with pytest.raises(IdentityError, match="No such file"):
            await missing.start(0.5)
        await web.create(client, service)
        # the proxy claims another service account than its pod runs as: 403
        wrong = Workload(state_dir, "web-1", "admin")
        # (the first attempt includes the key generator's child process: a few seconds)
        with pytest.raises(IdentityError, match="answered 403"):
            await wrong.identity(plane.endpoint).start(3.0)
        web.token_file.write_text("v1.forged.token")
        with pytest.raises(IdentityError, match="answered 401: invalid token"):
            await web.identity(plane.endpoint).start(3.0)
        web.token_file.write_text("")
        with pytest.raises(IdentityError, match="is empty"):
            await web.identity(plane.endpoint).start(0.5)
    web.token_file.write_text("v1.some.token")
    nowhere = web.identity(f"unix:{state_dir}/none.sock")
    with pytest.raises(IdentityError, match="cannot reach the control plane"):
        await nowhere.start(0.5)


async def test_waits_for_a_token_that_appears_later(state_dir: str) -> None:
    async with identity_plane(state_dir) as (plane, service):
        web = Workload(state_dir, "web-1", "web")
        identity = web.identity(plane.endpoint)
        starting = asyncio.create_task(identity.start(WAIT))
        await asyncio.sleep(0.3)
        assert not starting.done()
        await web.create(ControlClient(plane.endpoint), service)
        await asyncio.wait_for(starting, WAIT)
        assert identity.ready
        await identity.close()


# -- mutual TLS between two identities -------------------------------------------------------


async def mtls_exchange(
    server_id: ProxyIdentity,
    client_id: ProxyIdentity | None,
    expected: str,
    client_ctx: ssl.SSLContext | None = None,
) -> str | None:
    """Connect over TLS to a server using ``server_id``; returns the client identity the server
    saw (None: unauthenticated)."""
    seen: list[str | None] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            seen.append(peer_identity(writer.get_extra_info("peercert"), "cluster.local"))
            writer.write(b"ok:" + (await reader.readexactly(4)))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_id.server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        ctx = client_ctx if client_ctx is not None else client_id.client_context  # type: ignore[union-attr]
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=expected), WAIT
        )
        try:
            server_cert = writer.get_extra_info("peercert")
            assert peer_identity(server_cert, "cluster.local") == server_id.name
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(7), WAIT) == b"ok:ping"
        finally:
            writer.close()
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), WAIT)
    return seen[0]


async def test_mutual_tls_between_two_identities(state_dir: str) -> None:
    async with identity_plane(state_dir) as (plane, service):
        client = ControlClient(plane.endpoint)
        web, api = Workload(state_dir, "web-1", "web"), Workload(state_dir, "api-1", "api")
        await web.create(client, service)
        await api.create(client, service)
        async with started(web.identity(plane.endpoint)) as web_id:
            async with started(api.identity(plane.endpoint)) as api_id:
                # each side knows the other's identity
                assert await mtls_exchange(web_id, api_id, web_id.name) == api_id.name
                assert await mtls_exchange(api_id, web_id, api_id.name) == web_id.name
                # the client refuses a server that is not the identity it expects
                with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
                    await mtls_exchange(web_id, api_id, dns_identity("default", "payments"))
                # a client without a certificate gets TLS, unauthenticated
                plain = ssl.create_default_context(cadata=service.material.bundle.to_pem().decode())
                assert await mtls_exchange(web_id, None, web_id.name, plain) is None
                # after an issuer rotation, old and new leaves still trust each other
                await client.call("POST", "/api/v1/identity/issuer", {})
                fp = ca.fingerprint(service.material.issuer.cert)
                await wait_until(
                    lambda: described(web_id)["chain"][1]["fingerprint"] == fp,
                    WAIT,
                    what="web renewed",
                )
                if described(api_id)["chain"][1]["fingerprint"] != fp:
                    assert await mtls_exchange(web_id, api_id, web_id.name) == api_id.name
                await wait_until(
                    lambda: described(api_id)["chain"][1]["fingerprint"] == fp,
                    WAIT,
                    what="api renewed",
                )
                assert await mtls_exchange(api_id, web_id, api_id.name) == web_id.name


async def test_admin_view_through_the_control_plane(state_dir: str, proxy_factory: Any) -> None:
    """The path ``weft identity POD`` takes: control plane -> proxy admin ``/identity``."""
    async with identity_plane(state_dir) as (plane, service):
        client = ControlClient(plane.endpoint)
        web = Workload(state_dir, "web-1", "web")
        async with started_with_admin(web, client, service, plane.endpoint, proxy_factory) as (
            identity
        ):
            got = await client.call("GET", "/api/v1/identity/pods/default/web-1")
            assert got["proxy"]["identity"] == identity.name
            leaf_fp = described(identity)["chain"][0]["fingerprint"]
            assert got["proxy"]["chain"][0]["fingerprint"] == leaf_fp
            rc, out, err = await weft("identity", "web-1", "-n", "default", state_dir=state_dir)
            assert rc == 0, err
            assert "Pod default/web-1" in out and f"identity  {identity.name}" in out
            assert "[0] leaf" in out and "[1] issuer" in out and "Trust anchors (1)" in out
            assert f"fingerprint  {leaf_fp}" in out
            assert "(23h left)" in out


@asynccontextmanager
async def started_with_admin(
    web: Workload,
    client: ControlClient,
    service: IdentityService,
    endpoint: str,
    proxy_factory: Callable[..., Any],
) -> AsyncIterator[ProxyIdentity]:
    async with proxy_factory() as proxy:
        host, port = proxy.addresses["admin"]
        await client.apply([pod(web.name, sa=web.sa, admin=f"{host}:{port}")])
        web.token_file.write_text(token_for(service, web.name))
        async with started(web.identity(endpoint)) as identity:
            proxy.admin_views["/identity"] = identity.view
            yield identity
