"""HTTP/1.1 through a real proxy over real sockets: client -> proxy -> backend."""

from __future__ import annotations

import asyncio
import os

from prometheus_client.parser import text_string_to_metric_families

from weft.proxy.server import ProxyServer
from weft.testing import running_proxy
from weft.testing.servers import Backend, HttpClient, Request, Response, raw_exchange, sha256


def sample(proxy: ProxyServer, name: str, **labels: str) -> float:
    total = 0.0
    for fam in text_string_to_metric_families(proxy.metrics.expose().decode()):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


async def test_get_through_outbound_and_inbound_with_keepalive_pooling() -> None:
    async with (
        Backend() as backend,
        running_proxy(outbound_target=backend.address, inbound_target=backend.address) as proxy,
    ):
        for direction in ("outbound", "inbound"):
            async with HttpClient(proxy.addresses[direction]) as client:
                for i in range(5):
                    reply = await client.request("GET", f"/{direction}/{i}")
                    assert reply.status == 200
                    assert reply.body == f"GET /{direction}/{i}".encode()
        # 10 requests over 2 client connections reuse pooled upstream connections
        assert len(backend.requests) == 10
        assert backend.connections <= 2
        assert sample(proxy, "request_total", direction="outbound") == 5
        assert sample(proxy, "request_total", direction="inbound") == 5
        assert (
            sample(
                proxy,
                "response_total",
                direction="outbound",
                status_code="200",
                classification="success",
            )
            == 5
        )
        assert sample(proxy, "response_latency_ms_count", direction="inbound") == 5


async def test_failure_classification_and_status_codes() -> None:
    def handler(req: Request) -> Response:
        return Response(status=int(req.path.strip("/")))

    async with Backend(handler) as backend, running_proxy(outbound_target=backend.address) as proxy:
        async with HttpClient(proxy.addresses["outbound"]) as client:
            for code in (200, 404, 500, 503):
                assert (await client.request("GET", f"/{code}")).status == code
        assert sample(proxy, "response_total", classification="success") == 2
        assert sample(proxy, "response_total", classification="failure") == 2
        assert sample(proxy, "response_total", status_code="404", classification="success") == 1


async def test_large_content_length_body_streams_both_ways() -> None:
    payload = os.urandom(8 * 1024 * 1024)

    def handler(req: Request) -> Response:
        return Response(body=sha256(req.body).encode() + b"\n" + req.body)

    async with Backend(handler) as backend, running_proxy(outbound_target=backend.address) as proxy:
        async with HttpClient(proxy.addresses["outbound"]) as client:
            reply = await client.request("POST", "/up", body=payload, timeout=30)
        digest, _, echoed = reply.body.partition(b"\n")
        assert digest.decode() == sha256(payload)
        assert sha256(echoed) == sha256(payload)


async def test_chunked_request_and_response_with_trailers() -> None:
    def handler(req: Request) -> Response:
        assert req.header("transfer-encoding") == "chunked"
        return Response(chunks=[b"a" * 10, b"b" * 20000, b"c"], trailers=[("x-sum", "abc")])

    async with Backend(handler) as backend, running_proxy(outbound_target=backend.address) as proxy:
        body = b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-client-trailer: 1\r\n\r\n"
        async with HttpClient(proxy.addresses["outbound"]) as client:
            reply = await client.request(
                "POST",
                "/c",
                headers=[("host", "t"), ("transfer-encoding", "chunked")],
                body=body,
            )
        assert backend.requests[0].body == b"hello world"
        assert reply.body == b"a" * 10 + b"b" * 20000 + b"c"
        assert reply.header("transfer-encoding") == "chunked"
        assert ("x-sum", "abc") in reply.trailers


async def test_close_delimited_response_becomes_chunked_for_http11_clients() -> None:
    raw = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil-close"
    async with Backend(lambda r: Response(raw=raw, close=True)) as backend:
        async with running_proxy(outbound_target=backend.address) as proxy:
            async with HttpClient(proxy.addresses["outbound"]) as client:
                reply = await client.request("GET", "/")
                assert reply.body == b"until-close"
                again = await client.request("GET", "/")  # the client connection stays usable
                assert again.body == b"until-close"


async def test_hop_by_hop_headers_are_removed() -> None:
    async with Backend() as backend, running_proxy(outbound_target=backend.address) as proxy:
        async with HttpClient(proxy.addresses["outbound"]) as client:
            await client.request(
                "GET",
                "/",
                headers=[
                    ("host", "t"),
                    ("connection", "keep-alive, x-private"),
                    ("x-private", "secret"),
                    ("keep-alive", "timeout=5"),
                    ("te", "trailers"),
                    ("x-end-to-end", "kept"),
                ],
            )
        seen = {k.lower() for k, _ in backend.requests[0].headers}
        assert "x-end-to-end" in seen
        assert not seen & {"x-private", "keep-alive", "te", "proxy-connection"}
        assert backend.requests[0].header("connection") is None


async def test_pipelined_requests_are_answered_in_order() -> None:
    async def handler(req: Request) -> Response:
        # the first is slowest: order must still hold
        await asyncio.sleep({"/1": 0.05, "/2": 0.01}.get(req.path, 0))
        return Response(body=req.path.encode())

    async with Backend(handler) as backend, running_proxy(outbound_target=backend.address) as proxy:
        data = b"".join(b"GET /%d HTTP/1.1\r\nhost: t\r\n\r\n" % i for i in (1, 2, 3))
        out = await raw_exchange(
            proxy.addresses["outbound"],
            data + b"GET /4 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
        )
        bodies = [part.rsplit(b"\r\n\r\n", 1)[-1][:2] for part in out.split(b"HTTP/1.1 ")[1:]]
        assert bodies == [b"/1", b"/2", b"/3", b"/4"]


async def test_http10_client_gets_a_delimited_response_and_close() -> None:
    async with Backend() as backend, running_proxy(outbound_target=backend.address) as proxy:
        out = await raw_exchange(proxy.addresses["outbound"], b"GET /old HTTP/1.0\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200")
        assert b"connection: close" in out.lower()
        assert out.endswith(b"GET /old")
        assert backend.requests[0].version == "1.1"


async def test_expect_100_continue_is_relayed() -> None:
    async with Backend() as backend, running_proxy(outbound_target=backend.address) as proxy:
        reader, writer = await asyncio.open_connection(*proxy.addresses["outbound"])
        writer.write(
            b"POST /e HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100")
        writer.write(b"hello")
        final = await asyncio.wait_for(reader.readuntil(b"POST /e"), 5)
        assert final.startswith(b"HTTP/1.1 200")
        assert backend.requests[0].body == b"hello"
        writer.close()


async def test_head_response_does_not_hang() -> None:
    def handler(req: Request) -> Response:
        if req.method == "HEAD":
            return Response(headers=[("content-length", "1234")], body=b"")
        return Response(body=f"{req.method} {req.path}".encode())

    async with Backend(handler) as backend, running_proxy(outbound_target=backend.address) as proxy:
        async with HttpClient(proxy.addresses["outbound"]) as client:
            reply = await client.request("HEAD", "/h")
            assert reply.status == 200
            assert reply.header("content-length") == "1234"
            follow = await client.request("GET", "/after")
            assert follow.body == b"GET /after"


async def test_websocket_upgrade_becomes_a_tunnel() -> None:
    raw = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
    async with Backend(lambda r: Response(raw=raw)) as backend:
        async with running_proxy(outbound_target=backend.address) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.addresses["outbound"])
            writer.write(
                b"GET /ws HTTP/1.1\r\nhost: t\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 101")
            assert b"upgrade: websocket" in head.lower()
            writer.write(b"frames both ways")
            echoed = await asyncio.wait_for(reader.readexactly(16), 5)
            assert echoed == b"FRAMES BOTH WAYS"
            assert backend.requests[0].header("upgrade") == "websocket"
            assert sample(proxy, "tcp_open_connections", peer="src") == 1
            writer.close()
            for _ in range(50):  # the tunnel's end is the client connection's end, in metrics too
                if sample(proxy, "tcp_open_connections", peer="src") == 0:
                    break
                await asyncio.sleep(0.02)
            assert sample(proxy, "tcp_open_connections", peer="src") == 0


async def test_stale_pooled_connection_is_retried_transparently() -> None:
    async with Backend() as backend, running_proxy(outbound_target=backend.address) as proxy:
        async with HttpClient(proxy.addresses["outbound"]) as client:
            assert (await client.request("GET", "/a")).status == 200
            backend.close_idle()  # the server times out its idle keep-alive connection
            await asyncio.sleep(0.05)
            assert (await client.request("GET", "/b")).status == 200
        assert [r.path for r in backend.requests] == ["/a", "/b"]


async def test_access_log_is_json(caplog) -> None:  # type: ignore[no-untyped-def]
    import json
    import logging

    async with Backend() as backend:
        async with running_proxy(outbound_target=backend.address, access_log="-") as proxy:
            logger = logging.getLogger("weft.access")
            logger.setLevel(logging.INFO)
            with caplog.at_level(logging.INFO, logger="weft.access"):
                async with HttpClient(proxy.addresses["outbound"]) as client:
                    await client.request("GET", "/logged")
            entries = [
                json.loads(r.getMessage()) for r in caplog.records if r.name == "weft.access"
            ]
            assert entries and entries[0]["path"] == "/logged" and entries[0]["status"] == 200


async def test_connection_per_request_clients_do_not_grow_the_pool() -> None:
    async with Backend() as backend, running_proxy(outbound_target=backend.address) as proxy:
        for i in range(40):
            async with HttpClient(proxy.addresses["outbound"]) as client:
                assert (await client.request("GET", f"/{i}")).status == 200
        await asyncio.sleep(0.05)
        (concrete,) = proxy.outbound.concretes.values()
        idle = sum(len(s.idle) for s in concrete.endpoints.values())
        assert idle <= 2
        assert backend.connections <= 3


async def test_large_response_to_a_slow_reader_keeps_proxy_buffers_bounded() -> None:
    block = os.urandom(64 * 1024)
    total_blocks = 512  # 32 MiB

    def handler(req: Request) -> Response:
        return Response(chunks=[block] * total_blocks)

    async with Backend(handler) as backend, running_proxy(outbound_target=backend.address) as proxy:
        reader, writer = await asyncio.open_connection(*proxy.addresses["outbound"], limit=65536)
        writer.write(b"GET /big HTTP/1.1\r\nhost: t\r\n\r\n")
        got = 0
        peak = 0
        reads = 0
        while got < total_blocks * len(block):
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            assert chunk
            got += len(chunk)  # counts chunk framing too; close enough to the payload size
            reads += 1
            if reads % 64 == 0:
                await asyncio.sleep(0.01)  # a slow reader
                for conn in proxy.outbound.http.connections:
                    peak = max(peak, conn.transport.get_write_buffer_size())
        # the proxy holds at most about one high-water mark plus one read, never the body
        assert peak < 2 * 1024 * 1024
        writer.close()
