"""The accept path over real sockets (issue 12): connections that never speak are closed at the
detection timeout with no dial; the accept path's dials are bounded; connections are accepted in
batches, not one per event-loop iteration."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator

from tests.integration.test_proxy_http1 import sample
from weft.core.accept import DialGate
from weft.testing import running_proxy

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


@contextlib.asynccontextmanager
async def http_backend() -> AsyncIterator[tuple[tuple[str, int], list[int]]]:
    """A keep-alive HTTP/1.1 origin answering ``ok``; the list counts its accepted connections."""
    accepted = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(OK)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[:2], accepted
    finally:
        server.close()


async def get(address: tuple[str, int]) -> bytes:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    body = await asyncio.wait_for(reader.readexactly(2), 10)
    writer.close()
    return head.split(b"\r\n", 1)[0] + b" " + body


async def test_silent_connections_are_closed_at_the_detection_timeout_with_no_dial() -> None:
    async with (
        http_backend() as (addr, accepted),
        running_proxy(outbound_target=addr, detect_timeout=0.5) as proxy,
    ):
        out = proxy.addresses["outbound"]
        # a client spoke HTTP to this destination: later connections wait for their client
        assert await get(out) == b"HTTP/1.1 200 OK ok"
        before = accepted[0]
        silent = [await asyncio.open_connection(*out) for _ in range(20)]
        for reader, _ in silent:
            # closed by the proxy (not relayed: a relay would wait on the backend forever)
            assert await asyncio.wait_for(reader.read(), 10) == b""
        assert accepted[0] == before, "the proxy dialed for connections that never spoke"
        assert sample(proxy, "tcp_detect_timeout_closed_total", direction="outbound") == 20
        for _, writer in silent:
            writer.close()
        # other clients are served throughout
        assert await get(out) == b"HTTP/1.1 200 OK ok"


async def test_a_client_that_closes_without_a_byte_is_not_relayed() -> None:
    async with (
        http_backend() as (addr, accepted),
        running_proxy(outbound_target=addr) as proxy,
    ):
        out = proxy.addresses["outbound"]
        assert await get(out) == b"HTTP/1.1 200 OK ok"
        before = accepted[0]
        for _ in range(10):
            reader, writer = await asyncio.open_connection(*out)
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
        await asyncio.sleep(0.2)  # a dial, had there been one, has reached the backend
        assert accepted[0] == before, "the proxy dialed to relay an empty connection"


def _syn_sent_to(port: int) -> int:
    """Sockets of this network namespace still connecting (SYN_SENT) to 127.0.0.1:``port``."""
    count = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            remote, state = fields[2], fields[3]
            if state == "02" and int(remote.split(":")[1], 16) == port:
                count += 1
    return count


async def test_early_dials_are_bounded() -> None:
    # an upstream that never accepts: once its backlog is full, connects hang in SYN_SENT
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(0)
    port = upstream.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # fill the backlog ourselves
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            fillers.append(s)
        async with running_proxy(
            outbound_target=("127.0.0.1", port),
            detect_timeout=30,
            connect_timeout_outbound=30,
        ) as proxy:
            baseline = _syn_sent_to(port)
            proxy.outbound.dials = DialGate(3)
            out = proxy.addresses["outbound"]
            clients = [await asyncio.open_connection(*out) for _ in range(30)]
            seen = 0
            for _ in range(20):  # a second: every connection has been accepted by then
                await asyncio.sleep(0.05)
                seen = max(seen, _syn_sent_to(port) - baseline)
            assert 0 < seen <= 3, f"{seen} dials under way at once (limit 3)"
            assert proxy.outbound.dials.active == 3
            assert len(proxy.outbound.accepting) == 30
            for _, writer in clients:
                writer.close()
    finally:
        for s in fillers:
            s.close()
        upstream.close()


async def test_a_burst_of_connections_is_accepted_in_one_go() -> None:
    async with (
        http_backend() as (addr, _),
        running_proxy(outbound_target=addr) as proxy,
    ):
        out = proxy.addresses["outbound"]
        clients = []
        try:
            for _ in range(50):  # connected by the kernel, waiting in the listen backlog
                s = socket.create_connection(out)
                clients.append(s)
            accepted = 0
            for _ in range(10):  # event-loop iterations
                await asyncio.sleep(0)
                accepted = len(proxy.outbound.accepting)
                if accepted == 50:
                    break
            # uvloop's server accepts one connection per iteration: 10 at most by now
            assert accepted == 50, f"{accepted} of 50 accepted after 10 loop iterations"
        finally:
            for s in clients:
                s.close()


async def test_churned_connections_leave_no_descriptor_behind() -> None:
    """Each accepted socket's descriptor is handed to its transport (the accept loop's socket
    object is detached) and closed once, when the connection closes."""
    async with (
        http_backend() as (addr, _),
        running_proxy(outbound_target=addr) as proxy,
    ):
        out = proxy.addresses["outbound"]
        assert await get(out) == b"HTTP/1.1 200 OK ok"  # the upstream connection is pooled
        await asyncio.sleep(0.1)
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(200):
            assert await get(out) == b"HTTP/1.1 200 OK ok"

        def settled() -> bool:
            return not proxy.outbound.accepting and not proxy.outbound.http.connections

        for _ in range(200):  # bounded: the proxy closes its side soon after each answer
            if settled() and len(os.listdir("/proc/self/fd")) <= before:
                break
            await asyncio.sleep(0.05)
        assert settled()
        assert len(os.listdir("/proc/self/fd")) <= before
