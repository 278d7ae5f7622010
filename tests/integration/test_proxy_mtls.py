"""Mutual TLS between two real proxies over loopback: client proxy -> mTLS -> server proxy.

Identity comes from files here (:class:`~weft.proxy.static_identity.StaticIdentity` with a
throwaway CA from :mod:`weft.testing.pki`); the control-plane path is tested in
test_proxy_identity.py and end to end. A recording relay (:class:`weft.testing.Relay`) between
the two proxies shows what is on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_proxy_http1 import sample
from weft.core.detect import parse_client_hello
from weft.metrics import ProxyMetrics
from weft.proxy.config import ProxyConfig
from weft.proxy.server import ProxyServer
from weft.proxy.static_discovery import StaticDiscovery
from weft.proxy.static_identity import StaticIdentity
from weft.testing import Relay
from weft.testing.pki import LeafFiles, Pki
from weft.testing.servers import Backend, HttpClient, Request, Response, raw_exchange

TARGET = ("127.0.0.1", 9)  # the service address the app dials


def identity(leaf: LeafFiles) -> StaticIdentity:
    return StaticIdentity(chain_file=leaf.chain, key_file=leaf.key, anchors_file=leaf.anchors)


@contextlib.asynccontextmanager
async def proxy(identity: StaticIdentity | None, **fields: Any) -> AsyncIterator[ProxyServer]:
    config = {
        "outbound": ("127.0.0.1", 0),
        "inbound": ("127.0.0.1", 0),
        "admin": ("127.0.0.1", 0),
        "shutdown_grace": 1.0,
    }
    discovery = fields.pop("discovery", None)
    config.update(fields)
    server = ProxyServer(
        ProxyConfig(**config),
        metrics=ProxyMetrics(process=False),
        discovery=discovery,
        identity=identity,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(grace=0.2)


def discovery_file(path: Path, endpoint: tuple[str, int], *, identity: str | None,
                   opaque: bool = False) -> StaticDiscovery:  # fmt: skip
    ep: dict[str, Any] = {
        "address": f"{endpoint[0]}:{endpoint[1]}",
        "labels": {"pod": "server-0", "namespace": "app"},
    }
    if identity is not None:
        ep.update(meshed=True, identity=identity)
    doc = {
        "destinations": [
            {
                "target": f"{TARGET[0]}:{TARGET[1]}",
                "labels": {"service": "server", "namespace": "app"},
                "opaque": opaque,
                "endpoints": [ep],
            }
        ]
    }
    path.write_text(yaml.safe_dump(doc))
    return StaticDiscovery(str(path), interval=0.05)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.create(tmp_path / "pki")


async def echo(req: Request) -> Response:
    return Response(body=b"secret answer to " + req.path.encode())


async def test_http_between_meshed_proxies_is_mutual_tls_with_identities(
    pki: Pki, tmp_path: Path
) -> None:
    server_leaf, client_leaf = pki.leaf("app", "server"), pki.leaf("app", "client")
    async with (
        Backend(echo) as backend,
        proxy(identity(server_leaf), inbound_target=backend.address) as server,
        Relay(server.addresses["inbound"], record=True) as tap,
        proxy(
            identity(client_leaf),
            outbound_target=TARGET,
            discovery=discovery_file(tmp_path / "d.yaml", tap.address, identity=server_leaf.name),
        ) as client,
        HttpClient(client.addresses["outbound"]) as app,
    ):
        for i in range(20):
            reply = await app.request("GET", f"/plaintext-{i}")
            assert reply.status == 200
            assert reply.body == f"secret answer to /plaintext-{i}".encode()
        # one pooled TLS connection between the proxies carried every request
        assert tap.accepted == 1
        wire = tap.recorded_up() + tap.recorded_down()
        assert b"plaintext-" not in wire and b"secret answer" not in wire
        assert (
            tap.recorded_up()[:1] == b"\x16" and tap.recorded_down()[:1] == b"\x16"
        )  # TLS handshake records
        # HTTP/1 between them, and the ClientHello says so
        assert {parse_client_hello(bytes(c.up)).alpn for c in tap.connections if c.up} == {
            ("http/1.1",)
        }
        outbound = {"direction": "outbound", "tls": "true", "server_id": server_leaf.name}
        assert sample(client, "request_total", **outbound) == 20
        inbound = {"direction": "inbound", "tls": "true", "client_id": client_leaf.name}
        assert sample(server, "request_total", **inbound) == 20


async def test_client_refuses_a_server_with_the_wrong_identity(pki: Pki, tmp_path: Path) -> None:
    # the server's certificate is valid (same CA) but names another workload
    impostor, client_leaf = pki.leaf("app", "impostor"), pki.leaf("app", "client")
    expected = pki.leaf("app", "server").name
    async with (
        Backend(echo) as backend,
        proxy(identity(impostor), inbound_target=backend.address) as server,
        proxy(
            identity(client_leaf),
            outbound_target=TARGET,
            discovery=discovery_file(
                tmp_path / "d.yaml", server.addresses["inbound"], identity=expected
            ),
        ) as client,
        HttpClient(client.addresses["outbound"]) as app,
    ):
        reply = await app.request("GET", "/")
        assert reply.status == 502
        assert reply.header("weft-proxy-error") is not None


@pytest.mark.parametrize("forgery", ["foreign-ca", "expired"])
async def test_server_refuses_forged_client_certificates(
    pki: Pki, tmp_path: Path, forgery: str
) -> None:
    server_leaf = pki.leaf("app", "server")
    if forgery == "foreign-ca":
        bad = pki.leaf("app", "client", issuer=pki.foreign_issuer(), tag="-forged")
    else:
        import time

        bad = pki.leaf("app", "client", now=time.time() - 7200, lifetime=3600, tag="-expired")
    # the forger trusts our anchor, so only the server's check can stop it
    forger = StaticIdentity(chain_file=bad.chain, key_file=bad.key, anchors_file=pki.anchors_file)
    async with (
        Backend(echo) as backend,
        proxy(identity(server_leaf), inbound_target=backend.address) as server,
        proxy(
            forger,
            outbound_target=TARGET,
            discovery=discovery_file(
                tmp_path / "d.yaml", server.addresses["inbound"], identity=server_leaf.name
            ),
        ) as client,
        HttpClient(client.addresses["outbound"]) as app,
    ):
        reply = await app.request("GET", "/")
        assert reply.status == 502
        assert sample(server, "request_total", direction="inbound") == 0


async def test_opaque_tcp_between_meshed_proxies_is_encrypted(pki: Pki, tmp_path: Path) -> None:
    server_leaf, client_leaf = pki.leaf("app", "server"), pki.leaf("app", "client")

    async def echo_tcp(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            w.write(data.upper())
            await w.drain()
        w.close()

    backend = await asyncio.start_server(echo_tcp, "127.0.0.1", 0)
    try:
        address = backend.sockets[0].getsockname()[:2]
        async with (
            proxy(identity(server_leaf), inbound_target=address) as server,
            Relay(server.addresses["inbound"], record=True) as tap,
            proxy(
                identity(client_leaf),
                outbound_target=TARGET,
                discovery=discovery_file(
                    tmp_path / "d.yaml", tap.address, identity=server_leaf.name, opaque=True
                ),
            ) as client,
        ):
            # the client half-closes: the server app sees the end of the stream across mesh TLS
            # and closes, so the exchange ends well before the 5 s timeout
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            got = await raw_exchange(
                client.addresses["outbound"], b"\x00opaque words", shutdown=True, timeout=5.0
            )
            assert got == b"\x00OPAQUE WORDS"
            assert loop.time() - t0 < 3.0
            assert b"opaque words" not in tap.recorded_up()
            assert b"OPAQUE WORDS" not in tap.recorded_down()
            assert tap.recorded_up()[:1] == b"\x16"
    finally:
        backend.close()


async def test_tls_an_app_starts_itself_passes_through_untouched(pki: Pki, tmp_path: Path) -> None:
    """A ClientHello whose SNI is not the proxy's identity reaches the app byte for byte."""
    server_leaf = pki.leaf("app", "server")
    received = bytearray()
    done = asyncio.Event()

    async def record(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        received.extend(await r.read(65536))
        done.set()
        w.close()

    backend = await asyncio.start_server(record, "127.0.0.1", 0)
    try:
        address = backend.sockets[0].getsockname()[:2]
        async with proxy(identity(server_leaf), inbound_target=address) as server:
            ctx = ssl.create_default_context()
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            obj = ctx.wrap_bio(incoming, outgoing, server_hostname="app.example.com")
            with contextlib.suppress(ssl.SSLWantReadError):
                obj.do_handshake()
            hello = outgoing.read()
            _, w = await asyncio.open_connection(*server.addresses["inbound"])
            w.write(hello)
            await w.drain()
            await asyncio.wait_for(done.wait(), 5.0)
            w.close()
            assert bytes(received) == hello
    finally:
        backend.close()


async def test_plaintext_clients_still_reach_a_meshed_server(pki: Pki) -> None:
    server_leaf = pki.leaf("app", "server")
    async with (
        Backend(echo) as backend,
        proxy(identity(server_leaf), inbound_target=backend.address) as server,
        HttpClient(server.addresses["inbound"]) as app,
    ):
        reply = await app.request("GET", "/x")
        assert reply.status == 200
        assert sample(server, "request_total", direction="inbound", tls="no_identity") == 1


async def test_a_call_to_its_own_pod_is_not_wrapped_in_tls(pki: Pki, tmp_path: Path) -> None:
    """A pod calling a service whose endpoint is itself reaches its app directly (iptables does
    not send the proxy's own connections to its inbound listener), so no TLS is attempted."""
    own = pki.leaf("app", "server")
    async with (
        Backend(echo) as backend,
        proxy(
            identity(own),
            outbound_target=TARGET,
            discovery=discovery_file(tmp_path / "d.yaml", backend.address, identity=own.name),
        ) as client,
        HttpClient(client.addresses["outbound"]) as app,
    ):
        reply = await app.request("GET", "/self")
        assert reply.status == 200
        assert reply.body == b"secret answer to /self"


async def test_grpc_between_meshed_proxies_is_per_call_over_mutual_tls(
    pki: Pki, tmp_path: Path
) -> None:
    """grpcio client -> client proxy (h2c, per call) -> h2 over mTLS -> server proxy -> grpcio."""
    import grpc.aio

    from tests.integration.test_proxy_http2 import METHOD_UNARY, GrpcServer

    server_leaf, client_leaf = pki.leaf("app", "server"), pki.leaf("app", "client")
    async with (
        GrpcServer("g0") as backend,
        proxy(identity(server_leaf), inbound_target=backend.address) as server,
        Relay(server.addresses["inbound"], record=True) as tap,
        proxy(
            identity(client_leaf),
            outbound_target=TARGET,
            discovery=discovery_file(tmp_path / "d.yaml", tap.address, identity=server_leaf.name),
        ) as client,
    ):
        host, port = client.addresses["outbound"]
        async with grpc.aio.insecure_channel(f"{host}:{port}") as ch:
            call = ch.unary_unary(METHOD_UNARY)
            for i in range(10):
                assert await call(b"secret-%d" % i, timeout=5)
        assert b"secret-" not in tap.recorded_up()
        assert tap.recorded_up()[:1] == b"\x16"
        # the calls ride a connection that negotiated ALPN h2 (an HTTP/1 one may have been dialed
        # early, before the client spoke: see server.py's early dial)
        assert ("h2",) in {parse_client_hello(bytes(c.up)).alpn for c in tap.connections if c.up}
        inbound = {"direction": "inbound", "tls": "true", "client_id": client_leaf.name}
        assert sample(server, "request_total", **inbound) == 10
        text = server.metrics.expose().decode()
        assert 'grpc_status_code="0"' in text


@pytest.mark.parametrize("greets", [False, True])
async def test_opaque_port_between_meshed_proxies_one_app_connection(
    pki: Pki, tmp_path: Path, greets: bool
) -> None:
    """An opaque port (as 3306 is by default) on the server side still terminates mesh TLS; the
    early connection to the app is handed over, so the app sees exactly one connection, and a
    server that greets first (MySQL-like) is answered through TLS."""
    server_leaf, client_leaf = pki.leaf("app", "server"), pki.leaf("app", "client")
    connections = 0

    async def app(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        if greets:
            w.write(b"\x0agreeting")
            await w.drain()
        while data := await r.read(65536):
            w.write(data.upper())
            await w.drain()
        w.close()

    backend = await asyncio.start_server(app, "127.0.0.1", 0)
    try:
        address = backend.sockets[0].getsockname()[:2]
        async with (
            proxy(
                identity(server_leaf), inbound_target=address, opaque_ports=frozenset({address[1]})
            ) as server,
            Relay(server.addresses["inbound"], record=True) as tap,
            proxy(
                identity(client_leaf),
                outbound_target=TARGET,
                discovery=discovery_file(
                    tmp_path / "d.yaml", tap.address, identity=server_leaf.name, opaque=True
                ),
            ) as client,
        ):
            r, w = await asyncio.open_connection(*client.addresses["outbound"])
            if greets:
                assert await asyncio.wait_for(r.readexactly(9), 5) == b"\x0agreeting"
            w.write(b"\x00ping")
            await w.drain()
            assert await asyncio.wait_for(r.readexactly(5), 5) == b"\x00PING"
            w.write_eof()
            assert await asyncio.wait_for(r.read(), 5) == b""
            w.close()
            assert tap.recorded_up()[:1] == b"\x16"
            assert b"ping" not in tap.recorded_up()
            assert connections == 1
            inbound = {"direction": "inbound", "tls": "true", "client_id": client_leaf.name}
            assert sample(server, "tcp_open_total", peer="src", **inbound) == 1
    finally:
        backend.close()


async def _late_h2_call(address: tuple[str, int], delay: float) -> bytes:
    """A unary gRPC call whose client sends its preface only after ``delay`` (the server's
    SETTINGS greeting has reached the proxy by then); the grpc-status it gets."""
    import h2.config
    import h2.connection
    import h2.events

    from tests.integration.test_proxy_http2 import METHOD_UNARY

    reader, writer = await asyncio.open_connection(*address)
    try:
        await asyncio.sleep(delay)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        headers = [(":method", "POST"), (":scheme", "http"), (":path", METHOD_UNARY),
                   (":authority", "app"), ("content-type", "application/grpc"),
                   ("te", "trailers")]  # fmt: skip
        conn.send_headers(1, headers)
        conn.send_data(1, b"\x00\x00\x00\x00\x02hi", end_stream=True)
        writer.write(conn.data_to_send())
        async with asyncio.timeout(10):
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.TrailersReceived):
                        return dict(event.headers)[b"grpc-status"]
                writer.write(conn.data_to_send())
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    raise AssertionError("no trailers")


async def test_a_grpc_servers_settings_greeting_does_not_make_the_connection_opaque(
    pki: Pki, tmp_path: Path
) -> None:
    """grpcio sends SETTINGS as it accepts: while the sidecar dials the app early (it has not
    seen HTTP on the port yet), that greeting must not count as a server speaking first, or
    the calls would be relayed as opaque TCP (no per-call metrics, policy or balancing)."""
    from tests.integration.test_proxy_http2 import GrpcServer

    server_leaf, client_leaf = pki.leaf("app", "server"), pki.leaf("app", "client")
    async with GrpcServer("g0") as backend, proxy(None, inbound_target=backend.address) as plain:
        assert await _late_h2_call(plain.addresses["inbound"], 0.3) == b"0"
        assert sample(plain, "request_total", direction="inbound") == 1
        assert sample(plain, "tcp_open_total", direction="inbound") >= 1
    # the same behind mesh TLS: the early connection is handed to the inner side
    async with (
        GrpcServer("g1") as backend,
        proxy(identity(server_leaf), inbound_target=backend.address) as server,
        proxy(
            identity(client_leaf),
            outbound_target=TARGET,
            discovery=discovery_file(
                tmp_path / "d.yaml", server.addresses["inbound"], identity=server_leaf.name
            ),
        ) as client,
    ):
        assert await _late_h2_call(client.addresses["outbound"], 0.3) == b"0"
        inbound = {"direction": "inbound", "tls": "true", "client_id": client_leaf.name}
        assert sample(server, "request_total", **inbound) == 1
