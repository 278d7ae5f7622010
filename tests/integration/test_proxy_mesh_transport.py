"""The mesh transport between two real proxies over loopback: a client proxy sends a meshed
endpoint's connections to the server proxy's inbound port (the endpoint's ``proxy_port``), with
mutual TLS and then a transport header naming the app's port.

The server proxy runs as a sidecar with interception does (no ``--inbound-target``), so a
connection to its inbound port that was not redirected is a mesh proxy's. The race this
transport removes: the server proxy used to dial the app as it accepted, and an app that greets
first (SMTP, MySQL) could answer before the client proxy's ClientHello arrived, which made the
server proxy relay the greeting in plaintext to a peer in the middle of a TLS handshake. A relay
that holds the client's first bytes makes the ClientHello late on every connection here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_proxy_http1 import sample
from tests.integration.test_proxy_mtls import TARGET, echo, identity, proxy
from weft.core.detect import parse_client_hello
from weft.proxy.inbound.tls import connect
from weft.proxy.static_discovery import StaticDiscovery
from weft.testing import Relay
from weft.testing.pki import Pki
from weft.testing.servers import Backend, HttpClient

BANNER = b"220 greeter ready\r\n"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.create(tmp_path / "pki")


@contextlib.asynccontextmanager
async def greeter() -> AsyncIterator[tuple[str, int]]:
    """A server-speaks-first app: a banner at once on accept, then an echo."""

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            w.write(BANNER)
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=1024)
    try:
        host, port = server.sockets[0].getsockname()[:2]
        yield (host, port)
    finally:
        server.close()


class LateClient:
    """A relay that connects upstream at once but holds what the client sends for ``delay``
    seconds: the server side sees every connection's first bytes (the ClientHello) late, while
    an app dialed at accept answers within a millisecond."""

    def __init__(self, upstream: tuple[str, int], delay: float) -> None:
        self.upstream = upstream
        self.delay = delay
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> LateClient:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0, backlog=1024)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for t in list(self.tasks):
            t.cancel()

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(*self.upstream)
        except OSError:
            w.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, wait: float) -> None:
            await asyncio.sleep(wait)
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
                dst.write_eof()

        for coro in (pump(r, uw, self.delay), pump(ur, w, 0.0)):
            task = asyncio.get_running_loop().create_task(coro)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)


def mesh_discovery(
    path: Path, app: tuple[str, int], proxy_port: int, server_id: str
) -> StaticDiscovery:
    """The target resolves to one meshed endpoint: the app's address, its proxy's port."""
    ep: dict[str, Any] = {
        "address": f"{app[0]}:{app[1]}",
        "labels": {"pod": "server-0", "namespace": "app"},
        "meshed": True,
        "identity": server_id,
        "proxy_port": proxy_port,
    }
    doc = {
        "destinations": [
            {
                "target": f"{TARGET[0]}:{TARGET[1]}",
                "labels": {"service": "server", "namespace": "app"},
                "endpoints": [ep],
            }
        ]
    }
    path.write_text(yaml.safe_dump(doc))
    return StaticDiscovery(str(path), interval=0.05)


async def greeted(address: tuple[str, int], i: int) -> bool:
    """One client connection: the banner first, then an echo of what it sends."""
    try:
        async with asyncio.timeout(30):
            r, w = await asyncio.open_connection(*address)
            try:
                if await r.readexactly(len(BANNER)) != BANNER:
                    return False
                line = b"hello %d\n" % i
                w.write(line)
                return await r.readexactly(len(line)) == line
            finally:
                w.close()
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False


async def test_a_greeting_app_is_served_every_time_over_mutual_tls(
    pki: Pki, tmp_path: Path
) -> None:
    """1,000 connections, app port not opaque, ClientHello always late: 1,000 greetings."""
    server_leaf, client_leaf = pki.leaf("app", "server"), pki.leaf("app", "client")
    n, parallel = 1000, 50
    async with (
        greeter() as app,
        proxy(identity(server_leaf)) as server,  # a sidecar that intercepts: no inbound target
        LateClient(server.addresses["inbound"], delay=0.2) as late,
        proxy(
            identity(client_leaf),
            outbound_target=TARGET,
            discovery=mesh_discovery(tmp_path / "d.yaml", app, late.port, server_leaf.name),
        ) as client,
    ):
        gate = asyncio.Semaphore(parallel)

        async def one(i: int) -> bool:
            async with gate:
                return await greeted(client.addresses["outbound"], i)

        results = await asyncio.gather(*(one(i) for i in range(n)))
        assert sum(results) == n, f"{n - sum(results)} of {n} connections got no greeting"
        target = f"{app[0]}:{app[1]}"
        inbound = {"direction": "inbound", "peer": "src", "target_addr": target}
        assert sample(server, "tcp_open_total", tls="true", client_id=client_leaf.name,
                      **inbound) == n  # fmt: skip
        assert sample(server, "tcp_open_total", tls="no_identity", **inbound) == 0
        outbound = {"direction": "outbound", "peer": "dst", "tls": "true"}
        assert sample(client, "tcp_open_total", server_id=server_leaf.name, **outbound) == n


async def test_http1_and_http2_are_pooled_over_the_transport(pki: Pki, tmp_path: Path) -> None:
    import grpc.aio

    from tests.integration.test_proxy_http2 import METHOD_UNARY, GrpcServer

    server_leaf, client_leaf = pki.leaf("app", "server"), pki.leaf("app", "client")
    async with (
        Backend(echo) as backend,
        proxy(identity(server_leaf)) as server,
        Relay(server.addresses["inbound"], record=True) as tap,
        proxy(
            identity(client_leaf),
            outbound_target=TARGET,
            discovery=mesh_discovery(
                tmp_path / "d.yaml", backend.address, tap.address[1], server_leaf.name
            ),
        ) as client,
        HttpClient(client.addresses["outbound"]) as http,
    ):
        for i in range(20):
            reply = await http.request("GET", f"/one-{i}")
            assert reply.status == 200 and reply.body == f"secret answer to /one-{i}".encode()
        # at most the early dial and the pooled connection
        assert 1 <= len(tap.connections) <= 2
        assert b"one-" not in tap.recorded_up() and tap.recorded_up()[:1] == b"\x16"
        inbound = {"direction": "inbound", "tls": "true", "client_id": client_leaf.name}
        target = f"{backend.address[0]}:{backend.address[1]}"
        assert sample(server, "request_total", target_addr=target, **inbound) == 20
    async with (
        GrpcServer("g0") as grpc_app,
        proxy(identity(server_leaf)) as server,
        Relay(server.addresses["inbound"], record=True) as tap,
        proxy(
            identity(client_leaf),
            outbound_target=TARGET,
            discovery=mesh_discovery(
                tmp_path / "d2.yaml", grpc_app.address, tap.address[1], server_leaf.name
            ),
        ) as client,
    ):
        host, port = client.addresses["outbound"]
        async with grpc.aio.insecure_channel(f"{host}:{port}") as ch:
            call = ch.unary_unary(METHOD_UNARY)
            for i in range(10):
                assert await call(b"secret-%d" % i, timeout=5)
        assert b"secret-" not in tap.recorded_up()
        assert ("h2",) in {parse_client_hello(bytes(c.up)).alpn for c in tap.connections if c.up}
        inbound = {"direction": "inbound", "tls": "true", "client_id": client_leaf.name}
        assert sample(server, "request_total", **inbound) == 10


async def test_the_inbound_port_takes_only_mesh_tls_with_a_transport_header(
    pki: Pki, tmp_path: Path
) -> None:
    """Plaintext, a malformed header or a header-less mesh connection to the inbound port of an
    intercepting proxy is closed; the app never sees a connection."""
    server_leaf, client_leaf = pki.leaf("app", "server"), pki.leaf("app", "client")
    accepted = 0

    async def app_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        w.close()

    app = await asyncio.start_server(app_conn, "127.0.0.1", 0)
    client_identity = identity(client_leaf)
    try:
        async with proxy(identity(server_leaf)) as server:
            inbound = server.addresses["inbound"]
            r, w = await asyncio.open_connection(*inbound)
            w.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            with contextlib.suppress(ConnectionResetError):  # closed, or reset: no answer
                assert await asyncio.wait_for(r.read(), 10) == b""
            w.close()
            context = client_identity.client_context
            assert context is not None
            for preamble in (b"weft\x02\x03\x00\x50\x00", b"GET / HTTP/1.1\r\n\r\n"):
                tls, _ = await connect(
                    asyncio.Protocol, *inbound, context, server_leaf.name, preamble=preamble
                )
                for _ in range(100):  # the server closes it (bounded wait)
                    if tls.is_closing():
                        break
                    await asyncio.sleep(0.05)
                assert tls.is_closing()
                tls.abort()
            assert accepted == 0
    finally:
        app.close()
