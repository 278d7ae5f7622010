"""weft.testing.relay: every fault of the relay, over real loopback sockets, against an echo."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from weft.addr import Address
from weft.testing import Relay, wait_until

NOTHING = 0.3  # how long "nothing arrives" is watched: a lower bound, never a timing claim


@dataclass
class Echo:
    """A TCP echo server that counts its connections and how each ended."""

    address: Address = ("", 0)
    connections: int = 0
    resets: int = 0
    ended: int = 0
    received: bytearray = field(default_factory=bytearray)

    async def serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while data := await r.read(65536):
                self.received += data
                w.write(data)
                await w.drain()
        except ConnectionResetError:
            self.resets += 1
        finally:
            self.ended += 1
            w.close()


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    e = Echo()
    server = await asyncio.start_server(e.serve, "127.0.0.1", 0)
    e.address = server.sockets[0].getsockname()[:2]
    try:
        yield e
    finally:
        server.close()


@contextlib.asynccontextmanager
async def client(relay: Relay) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    r, w = await asyncio.open_connection(*relay.address)
    try:
        yield r, w
    finally:
        w.close()


async def roundtrip(w: asyncio.StreamWriter, r: asyncio.StreamReader, data: bytes) -> bytes:
    w.write(data)
    await w.drain()
    return await asyncio.wait_for(r.readexactly(len(data)), 5.0)


async def test_forwards_both_ways_counts_records_and_passes_a_half_close(echo: Echo) -> None:
    async with Relay(echo.address, record=True) as relay, client(relay) as (r, w):
        assert await roundtrip(w, r, b"hello") == b"hello"
        w.write(b" world")
        w.write_eof()  # half-close: the echo still answers, then ends
        assert await asyncio.wait_for(r.read(), 5.0) == b" world"
        await wait_until(lambda: relay.active == 0, what="the relay to close the connection")
        assert (relay.accepted, relay.forwarded, relay.dial_failures) == (1, 1, 0)
        assert relay.bytes_up == relay.bytes_down == 11
        assert relay.recorded_up() == relay.recorded_down() == b"hello world"
        assert echo.resets == 0


async def test_latency_is_added_to_every_chunk(echo: Echo) -> None:
    async with Relay(echo.address) as relay, client(relay) as (r, w):
        relay.delay(0.2, "up")
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await roundtrip(w, r, b"slow") == b"slow"
        assert loop.time() - started >= 0.19  # uvloop's clock counts whole milliseconds
        relay.delay(0.0)
        assert await roundtrip(w, r, b"fast") == b"fast"


async def test_refuse_stops_listening_and_forward_takes_the_same_port_again(echo: Echo) -> None:
    async with Relay(echo.address) as relay:
        async with client(relay) as (r, w):  # an open connection survives the refusal
            relay.refuse()
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(*relay.address)
            assert await roundtrip(w, r, b"still") == b"still"
        relay.forward()
        async with client(relay) as (r, w):
            assert await roundtrip(w, r, b"again") == b"again"
        assert relay.accepted == 2


async def test_close_new_closes_at_once_without_dialing(echo: Echo) -> None:
    async with Relay(echo.address) as relay:
        relay.close_new()
        async with client(relay) as (r, _):
            assert await asyncio.wait_for(r.read(), 5.0) == b""
        assert (relay.accepted, relay.forwarded, echo.connections) == (1, 0, 0)


async def test_reset_new_resets_at_once(echo: Echo) -> None:
    async with Relay(echo.address) as relay:
        relay.reset_new()
        with pytest.raises(ConnectionResetError):  # uvloop may see it while connecting
            async with client(relay) as (r, _):
                await asyncio.wait_for(r.read(), 5.0)
        assert relay.forwarded == 0


async def test_reset_open_resets_both_sides_of_open_connections(echo: Echo) -> None:
    async with Relay(echo.address) as relay, client(relay) as (r, w):
        assert await roundtrip(w, r, b"up") == b"up"
        assert await relay.reset_open() == 1
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(r.read(), 5.0)
        await wait_until(lambda: echo.ended == 1, what="the echo to see its connection end")
        assert echo.resets == 1
        assert relay.active == 0


async def test_close_open_closes_both_sides_with_a_fin(echo: Echo) -> None:
    async with Relay(echo.address) as relay, client(relay) as (r, w):
        assert await roundtrip(w, r, b"up") == b"up"
        assert await relay.close_open() == 1
        assert await asyncio.wait_for(r.read(), 5.0) == b""
        await wait_until(lambda: echo.ended == 1, what="the echo to see its connection end")
        assert echo.resets == 0


async def test_blackhole_accepts_swallows_and_never_answers(echo: Echo) -> None:
    async with Relay(echo.address) as relay, client(relay) as (r, w):
        relay.blackhole()
        async with client(relay) as (r2, w2):
            w2.write(b"anyone there?")
            await w2.drain()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(r2.read(1), NOTHING)
            assert relay.active == 2 and relay.forwarded == 1 and echo.connections == 1
            assert await roundtrip(w, r, b"old") == b"old"  # opened before: still forwarded
            await relay.reset_open()
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(r2.read(), 5.0)
        assert echo.received == b"old"


@pytest.mark.parametrize(("direction", "reset"), [("down", False), ("up", False), ("down", True)])
async def test_close_after_bytes_cuts_exactly_there(
    echo: Echo, direction: str, reset: bool
) -> None:
    async with Relay(echo.address) as relay, client(relay) as (r, w):
        relay.close_after_bytes(5, direction, reset=reset)  # type: ignore[arg-type]
        w.write(b"0123456789")
        await w.drain()
        got = bytearray()
        with contextlib.suppress(ConnectionResetError):
            async with asyncio.timeout(5.0):
                while data := await r.read(65536):
                    got += data
        if direction == "down":
            assert bytes(got) == b"01234"
        else:  # the connection ends once 5 bytes went up: the echo's answer may not be back
            assert b"01234".startswith(bytes(got))
        await wait_until(lambda: relay.active == 0 and echo.ended == 1)
        assert echo.received == (b"01234" if direction == "up" else b"0123456789")
        assert echo.resets == (1 if reset else 0)


async def test_pause_holds_bytes_until_resume(echo: Echo) -> None:
    async with Relay(echo.address) as relay, client(relay) as (r, w):
        relay.pause()
        w.write(b"held")
        await w.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.read(1), NOTHING)
        assert echo.received == b""
        relay.resume()
        assert await asyncio.wait_for(r.readexactly(4), 5.0) == b"held"


async def test_a_target_that_refuses_resets_the_client() -> None:
    async with Relay(("127.0.0.1", 1)) as relay:
        with pytest.raises(ConnectionResetError):
            async with client(relay) as (r, _):
                await asyncio.wait_for(r.read(), 5.0)
        assert (relay.accepted, relay.forwarded, relay.dial_failures) == (1, 0, 1)


async def test_heal_undoes_every_fault_and_the_target_can_move(echo: Echo) -> None:
    other = Echo()
    server = await asyncio.start_server(other.serve, "127.0.0.1", 0)
    try:
        async with Relay(echo.address) as relay:
            relay.refuse()
            relay.delay(1.0)
            relay.close_after_bytes(1)
            relay.pause()
            relay.heal()
            relay.target = server.sockets[0].getsockname()[:2]
            async with client(relay) as (r, w):
                assert await roundtrip(w, r, b"healed") == b"healed"
            assert other.received == b"healed" and echo.connections == 0
    finally:
        server.close()


async def test_close_ends_every_connection(echo: Echo) -> None:
    relay = await Relay(echo.address).start()
    async with client(relay) as (r, w):
        assert await roundtrip(w, r, b"x") == b"x"
        relay.blackhole()
        async with client(relay) as (r2, _):
            await wait_until(lambda: relay.active == 2)
            await relay.close()
            assert relay.active == 0
            assert await asyncio.wait_for(r.read(), 5.0) == b""
            assert await asyncio.wait_for(r2.read(), 5.0) == b""
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(*relay.address)


async def test_reset_open_reaches_a_connection_still_dialing_its_target() -> None:
    # a target whose backlog is full: connects to it hang (SYN_SENT) until they time out
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(0)
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(upstream.getsockname())
            fillers.append(s)
        async with Relay(upstream.getsockname(), connect_timeout=30.0) as relay:
            async with client(relay) as (r, _):
                await wait_until(lambda: relay.active == 1)
                assert relay.forwarded == 0  # still dialing
                assert await relay.reset_open() == 1
                with pytest.raises(ConnectionResetError):
                    await asyncio.wait_for(r.read(), 5.0)
    finally:
        for s in fillers:
            s.close()
        upstream.close()
