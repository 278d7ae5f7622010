"""weft.proxy.inbound.tls.TlsConnection over real sockets: handshake outcomes, half-close, large
streams with backpressure, and bad input (garbage, a silent peer, a peer that vanishes
mid-handshake)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from weft.proxy.inbound.tls import TlsConnection, connect
from weft.proxy.static_identity import StaticIdentity
from weft.testing.pki import Pki


class Collect(asyncio.Protocol):
    """Collects what it reads; answers ``ping`` with ``pong``; optional half-close echo."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = asyncio.Event()
        self.made = asyncio.Event()
        self.lost = asyncio.Event()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.made.set()

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.eof.set()
        return True  # keep writing: a half-close

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()


@pytest.fixture
def ids(tmp_path: Path) -> tuple[StaticIdentity, StaticIdentity]:
    pki = Pki.create(tmp_path)
    s, c = pki.leaf("t", "server"), pki.leaf("t", "client")
    return (
        StaticIdentity(chain_file=s.chain, key_file=s.key, anchors_file=s.anchors),
        StaticIdentity(chain_file=c.chain, key_file=c.key, anchors_file=c.anchors),
    )


async def serve(server: StaticIdentity, app: Collect) -> tuple[asyncio.Server, int]:
    assert server.server_context is not None
    ctx = server.server_context
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(
        lambda: TlsConnection(ctx, app, server_side=True),  # type: ignore[arg-type,return-value]
        "127.0.0.1",
        0,
    )
    return srv, srv.sockets[0].getsockname()[1]


async def test_half_close_each_way_keeps_the_other_direction(
    ids: tuple[StaticIdentity, StaticIdentity],
) -> None:
    server, client = ids
    remote = Collect()
    srv, port = await serve(server, remote)
    try:
        assert client.client_context is not None
        tls, app = await connect(Collect, "127.0.0.1", port, client.client_context, server.name)
        assert isinstance(app, Collect)
        tls.write(b"request")
        tls.write_eof()
        await asyncio.wait_for(remote.eof.wait(), 5)
        assert bytes(remote.data) == b"request"
        # the server still answers after the client's half-close
        assert remote.transport is not None
        remote.transport.write(b"answer")
        remote.transport.write_eof()
        await asyncio.wait_for(app.eof.wait(), 5)
        assert bytes(app.data) == b"answer"
        peer = remote.transport.get_extra_info("peercert")
        assert ("DNS", client.name) in peer["subjectAltName"]
        tls.close()
    finally:
        srv.close()


async def test_large_stream_both_ways_is_intact(
    ids: tuple[StaticIdentity, StaticIdentity],
) -> None:
    server, client = ids
    remote = Collect()
    srv, port = await serve(server, remote)
    try:
        assert client.client_context is not None
        tls, _ = await connect(Collect, "127.0.0.1", port, client.client_context, server.name)
        payload = bytes(range(256)) * (8 * 4096)  # 8 MiB
        for i in range(0, len(payload), 1 << 20):
            tls.write(payload[i : i + (1 << 20)])
        tls.write_eof()
        await asyncio.wait_for(remote.eof.wait(), 30)
        assert hashlib.sha256(remote.data).digest() == hashlib.sha256(payload).digest()
        tls.close()
    finally:
        srv.close()


async def test_wrong_server_identity_fails_the_handshake(
    ids: tuple[StaticIdentity, StaticIdentity],
) -> None:
    server, client = ids
    remote = Collect()
    srv, port = await serve(server, remote)
    try:
        assert client.client_context is not None
        with pytest.raises(OSError):
            await connect(
                Collect,
                "127.0.0.1",
                port,
                client.client_context,
                "other.t.serviceaccount.identity.cluster.local",
            )
        assert not remote.made.is_set()
    finally:
        srv.close()


async def test_garbage_instead_of_a_handshake_is_closed(
    ids: tuple[StaticIdentity, StaticIdentity],
) -> None:
    server, _ = ids
    remote = Collect()
    srv, port = await serve(server, remote)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"\x16\x03\x01\x00\x05hello, this is not TLS at all\r\n" * 4)
        await w.drain()
        assert await asyncio.wait_for(r.read(), 5) is not None  # closed (an alert, or nothing)
        assert r.at_eof()
        w.close()
        assert not remote.made.is_set()
    finally:
        srv.close()


async def test_silent_client_times_out_and_vanishing_client_is_cleaned_up(
    ids: tuple[StaticIdentity, StaticIdentity],
) -> None:
    server, _ = ids
    assert server.server_context is not None
    ctx = server.server_context
    made: list[TlsConnection] = []

    def factory() -> TlsConnection:
        conn = TlsConnection(ctx, Collect(), server_side=True, handshake_timeout=0.3)
        made.append(conn)
        return conn

    loop = asyncio.get_running_loop()
    srv = await loop.create_server(factory, "127.0.0.1", 0)  # type: ignore[arg-type]
    port = srv.sockets[0].getsockname()[1]
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(r.read(), 5) == b""  # cut after the handshake timeout
        w.close()
        with pytest.raises(TimeoutError):
            await made[0].handshake
        _, w2 = await asyncio.open_connection("127.0.0.1", port)
        w2.write(b"\x16\x03\x01")  # the start of a record, then gone
        await w2.drain()
        w2.close()
        with pytest.raises((ConnectionError, TimeoutError)):
            await asyncio.wait_for(made[1].handshake, 5)
    finally:
        srv.close()
