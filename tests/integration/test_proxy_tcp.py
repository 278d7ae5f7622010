"""Opaque TCP through the proxy: relay, half-close, server-speaks-first, opaque ports, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.test_proxy_http1 import sample
from weft.testing import running_proxy


@contextlib.asynccontextmanager
async def tcp_server(handler) -> AsyncIterator[tuple[str, int]]:  # type: ignore[no-untyped-def]
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[:2]
    finally:
        server.close()


async def echo_until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.read()  # until the client's FIN
    writer.write(b"echo:" + data)
    await writer.drain()
    writer.close()


async def test_opaque_relay_with_half_close_and_byte_counts() -> None:
    async with tcp_server(echo_until_eof) as addr, running_proxy(outbound_target=addr) as proxy:
        reader, writer = await asyncio.open_connection(*proxy.addresses["outbound"])
        payload = b"\x00\x01binary-not-http" * 1000
        writer.write(payload)
        writer.write_eof()  # half-close: the reply must still come back
        reply = await asyncio.wait_for(reader.read(), 10)
        assert reply == b"echo:" + payload
        writer.close()
        await asyncio.sleep(0.05)
        assert sample(proxy, "tcp_write_bytes_total", peer="dst") == len(payload)
        assert sample(proxy, "tcp_read_bytes_total", peer="dst") == len(payload) + 5
        assert sample(proxy, "tcp_open_total", peer="dst") == 1
        assert sample(proxy, "tcp_close_total", peer="dst") == 1
        assert sample(proxy, "tcp_open_connections", peer="dst") == 0


async def test_server_speaks_first_needs_no_detection_timeout() -> None:
    async def smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mail.example ESMTP ready\r\n")
        line = await reader.readline()
        writer.write(b"250 hello " + line)
        await writer.drain()
        writer.close()

    # detect timeout far beyond the wait below: the greeting must not wait for it
    async with (
        tcp_server(smtp) as addr,
        running_proxy(outbound_target=addr, detect_timeout=60) as proxy,
    ):
        reader, writer = await asyncio.open_connection(*proxy.addresses["outbound"])
        greeting = await asyncio.wait_for(reader.readline(), 5)
        assert greeting == b"220 mail.example ESMTP ready\r\n"
        writer.write(b"EHLO client\r\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"250 hello EHLO client\r\n"
        writer.close()


async def test_opaque_port_skips_detection() -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(18))
        await writer.drain()
        writer.close()

    async with tcp_server(server) as addr:
        async with running_proxy(outbound_target=addr, opaque_ports=frozenset({addr[1]})) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.addresses["outbound"])
            # looks like HTTP, but the port is opaque: relayed byte for byte, never parsed
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            assert await asyncio.wait_for(reader.readexactly(18), 5) == b"GET / HTTP/1.1\r\n\r\n"
            writer.close()
            assert sample(proxy, "request_total") == 0


async def test_client_tls_passes_through_untouched(tmp_path: Path) -> None:
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    await asyncio.to_thread(
        subprocess.run,
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=app.test",
         "-addext", "subjectAltName=DNS:app.test"],
        check=True, capture_output=True,
    )  # fmt: skip
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def tls_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"secure:" + await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(tls_echo, "127.0.0.1", 0, ssl=server_ctx)
    addr = server.sockets[0].getsockname()[:2]
    try:
        async with running_proxy(outbound_target=addr) as proxy:
            client_ctx = ssl.create_default_context(cafile=str(cert))
            reader, writer = await asyncio.open_connection(
                *proxy.addresses["outbound"], ssl=client_ctx, server_hostname="app.test"
            )
            writer.write(b"hi\n")
            assert await asyncio.wait_for(reader.readline(), 5) == b"secure:hi\n"
            writer.close()
            assert sample(proxy, "request_total") == 0
    finally:
        server.close()


async def test_large_opaque_stream_with_slow_reader_stays_bounded() -> None:
    total = 32 * 1024 * 1024

    async def firehose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        block = os.urandom(65536)
        sent = 0
        while sent < total:
            writer.write(block)
            await writer.drain()
            sent += len(block)
        writer.close()

    async with tcp_server(firehose) as addr, running_proxy(outbound_target=addr) as proxy:
        reader, writer = await asyncio.open_connection(*proxy.addresses["outbound"], limit=65536)
        writer.write(b"\x16")  # not HTTP: opaque
        got = 0
        peak = 0
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            if not chunk:
                break
            got += len(chunk)
            if got % (4 * 1024 * 1024) < 65536:
                await asyncio.sleep(0.02)  # a slow reader
                for relay in proxy.outbound.relays:
                    peak = max(peak, relay.transports[0].get_write_buffer_size())
        assert got == total
        # backpressure: the proxy never holds more than a few write buffers' worth
        assert peak < 4 * 1024 * 1024
        writer.close()


@pytest.mark.parametrize("greeting_first", [True, False])
async def test_unreachable_opaque_destination_closes_the_client(greeting_first: bool) -> None:
    sock_addr = ("127.0.0.1", 1)  # nothing listens on port 1
    async with running_proxy(outbound_target=sock_addr, connect_timeout_outbound=0.5) as proxy:
        reader, writer = await asyncio.open_connection(*proxy.addresses["outbound"])
        if not greeting_first:
            writer.write(b"\x00opaque")
        data = await asyncio.wait_for(reader.read(), 10)
        assert data == b""
        writer.close()


async def test_byte_counts_are_live_on_open_keepalive_connections() -> None:
    from weft.testing.servers import Backend, HttpClient

    async with Backend() as backend, running_proxy(outbound_target=backend.address) as proxy:
        async with HttpClient(proxy.addresses["outbound"]) as client:
            await client.request("GET", "/live")
            # the connection is still open: its bytes are already counted
            assert sample(proxy, "tcp_open_connections", peer="src") == 1
            assert sample(proxy, "tcp_read_bytes_total", peer="src") > 0
            assert sample(proxy, "tcp_write_bytes_total", peer="src") > 0
