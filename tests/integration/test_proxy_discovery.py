"""Outbound resolution and balancing over real sockets, with a watched discovery file (or the
fake feed of weft.testing, where a test changes the endpoints while the proxy runs)."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import yaml

from tests.integration.test_proxy_http1 import sample
from weft.proxy.static_discovery import StaticDiscovery
from weft.testing import FakeDiscovery, endpoint, running_proxy
from weft.testing.servers import Backend, HttpClient, Request, Response

TARGET = ("127.0.0.1", 9)  # the "service address" the app dials; nothing listens there


def write_discovery(path: Path, endpoints: list[tuple[str, int]], *, target=TARGET) -> None:  # type: ignore[no-untyped-def]
    doc = {
        "destinations": [
            {
                "target": f"{target[0]}:{target[1]}",
                "labels": {"service": "web", "namespace": "default"},
                "endpoints": [
                    {"address": f"{h}:{p}", "labels": {"pod": f"web-{p}", "namespace": "default"}}
                    for h, p in endpoints
                ],
            }
        ]
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    tmp.replace(path)


def tagged(name: str, delay: float = 0.0):  # type: ignore[no-untyped-def]
    async def handler(req: Request) -> Response:
        if delay:
            await asyncio.sleep(delay)
        return Response(body=name.encode())

    return handler


async def test_requests_balance_across_discovered_endpoints_with_dst_labels(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    async with Backend(tagged("a")) as a, Backend(tagged("b")) as b:
        write_discovery(f, [a.address, b.address])
        disc = StaticDiscovery(str(f), interval=0.05)
        async with running_proxy(disc, outbound_target=TARGET) as proxy:
            async with HttpClient(proxy.addresses["outbound"]) as client:
                seen = collections.Counter(
                    [(await client.request("GET", "/")).body for _ in range(200)]
                )
            assert set(seen) == {b"a", b"b"}
            # per request: one client connection reaches both (how evenly depends on latency:
            # peak-EWMA rightly avoids an endpoint that had a slow moment)
            assert min(seen.values()) >= 1
            assert sample(proxy, "request_total", dst_service="web", dst_namespace="default") == 200
            assert sample(proxy, "request_total", dst_pod=f"web-{a.port}") == seen[b"a"]


async def test_a_client_that_waits_before_speaking_does_not_make_an_endpoint_look_slow(
    tmp_path: Path,
) -> None:
    """The sidecar dials an endpoint as a client connects (to see whether the server speaks
    first). The balancer takes that dial's connect time as the endpoint's latency, never the
    time until the client speaks: a client that connects and thinks for half a second must not
    mark the endpoint as a 500 ms one (peak EWMA would then starve it for tens of seconds)."""
    f = tmp_path / "d.yaml"
    async with Backend(tagged("a")) as a, Backend(tagged("b")) as b:
        write_discovery(f, [a.address, b.address])
        disc = StaticDiscovery(str(f), interval=0.05)
        async with running_proxy(disc, outbound_target=TARGET) as proxy:
            host, port = proxy.addresses["outbound"]
            reader, writer = await asyncio.open_connection(host, port)
            await asyncio.sleep(0.5)  # the early dial is long connected; the client thinks
            writer.write(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"content-length: 1\r\n" in head
            first = await reader.readexactly(1)
            writer.close()
            concrete = proxy.outbound.concretes[next(iter(proxy.outbound.concretes))]
            estimates = {addr: est for addr, _, est, _ in concrete.balancer.stats()}
            assert set(estimates) == {a.address, b.address}
            assert max(estimates.values()) < 0.25, estimates
            # the endpoint that did not serve the first request is unmeasured: it gets the next
            async with HttpClient(proxy.addresses["outbound"]) as client:
                second = (await client.request("GET", "/")).body
            assert {first, second} == {b"a", b"b"}


async def test_unknown_destination_is_forwarded_as_is(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    async with Backend(tagged("direct")) as direct:
        write_discovery(f, [])  # knows only TARGET, not the backend's address
        disc = StaticDiscovery(str(f), interval=0.05)
        async with running_proxy(disc, outbound_target=direct.address) as proxy:
            async with HttpClient(proxy.addresses["outbound"]) as client:
                assert (await client.request("GET", "/")).body == b"direct"


def web_endpoints(feed: FakeDiscovery, endpoints: list[tuple[str, int]]) -> None:
    eps = [endpoint(a, pod=f"web-{a[1]}", namespace="default") for a in endpoints]
    feed.set_endpoints(TARGET, eps, service="web", namespace="default")


async def test_endpoint_set_changes_under_load_with_zero_failures() -> None:
    backends = [Backend(tagged(f"b{i}", delay=0.002)) for i in range(4)]
    for b in backends:
        await b.start()
    try:
        addrs = [b.address for b in backends]
        feed = FakeDiscovery()
        web_endpoints(feed, addrs[:2])
        async with running_proxy(feed, outbound_target=TARGET) as proxy:
            failures: list[str] = []
            done = 0
            stop = asyncio.Event()

            async def client_loop() -> None:
                nonlocal done
                async with HttpClient(proxy.addresses["outbound"]) as client:
                    for _ in range(2000):  # bounded
                        if stop.is_set():
                            return
                        reply = await client.request("GET", "/")
                        if reply.status != 200:
                            failures.append(f"{reply.status} {reply.body!r}")
                        done += 1

            clients = [asyncio.create_task(client_loop()) for _ in range(8)]
            # rotate the endpoint set while requests are in flight
            for members in ([0, 1, 2], [1, 2], [2, 3], [3], [0, 3], [0, 1, 2, 3], [1]):
                await asyncio.sleep(0.15)
                web_endpoints(feed, [addrs[i] for i in members])
            await asyncio.sleep(0.3)
            served_before = {i: len(b.requests) for i, b in enumerate(backends)}
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*clients)
            assert failures == []
            assert done > 200
            # after the last change only b1 gets new requests
            for i, b in enumerate(backends):
                if i != 1:
                    assert len(b.requests) == served_before[i], f"b{i} still served"
    finally:
        for b in backends:
            await b.stop()


async def test_dead_endpoint_costs_no_failed_request_and_is_avoided(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    async with Backend(tagged("alive")) as alive:
        dead = ("127.0.0.1", 1)  # refuses connections
        write_discovery(f, [alive.address, dead])
        disc = StaticDiscovery(str(f), interval=0.05)
        async with running_proxy(disc, outbound_target=TARGET) as proxy:
            async with HttpClient(proxy.addresses["outbound"]) as client:
                replies = [await client.request("GET", "/") for _ in range(100)]
            assert all(r.status == 200 for r in replies)
            assert len(alive.requests) == 100


async def test_slow_endpoint_gets_markedly_less_traffic(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    async with Backend(tagged("fast")) as fast, Backend(tagged("slow", delay=0.05)) as slow:
        write_discovery(f, [fast.address, slow.address])
        disc = StaticDiscovery(str(f), interval=0.05)
        async with running_proxy(disc, outbound_target=TARGET) as proxy:

            async def run() -> None:
                async with HttpClient(proxy.addresses["outbound"]) as client:
                    for _ in range(60):
                        await client.request("GET", "/")

            await asyncio.gather(*(run() for _ in range(4)))
        assert len(slow.requests) < 0.25 * (len(fast.requests) + len(slow.requests))


async def test_no_endpoints_fails_fast_with_503_then_recovers() -> None:
    feed = FakeDiscovery()
    async with Backend(tagged("late")) as late:
        web_endpoints(feed, [])
        async with running_proxy(feed, outbound_target=TARGET, fail_fast_outbound=0.3) as proxy:
            async with HttpClient(proxy.addresses["outbound"]) as client:
                reply = await client.request("GET", "/")
                assert reply.status == 503
                assert reply.header("weft-proxy-error") == "no-endpoints"
                # a request waiting when endpoints appear is served
                pending = asyncio.create_task(client.request("GET", "/"))
                await asyncio.sleep(0.05)
                web_endpoints(feed, [late.address])
                assert (await pending).status == 200


async def test_graceful_shutdown_finishes_in_flight_and_closes_idle() -> None:
    async def handler(req: Request) -> Response:
        if req.path == "/slow":
            await asyncio.sleep(0.5)
        return Response(body=req.path.encode())

    async with Backend(handler) as backend, running_proxy(outbound_target=backend.address) as proxy:
        idle = await HttpClient(proxy.addresses["outbound"]).connect()
        assert (await idle.request("GET", "/warm")).status == 200
        busy = await HttpClient(proxy.addresses["outbound"]).connect()
        slow = asyncio.create_task(busy.request("GET", "/slow"))
        await asyncio.sleep(0.1)
        shutdown = asyncio.create_task(proxy.shutdown(grace=5))
        await asyncio.sleep(0.1)
        # new connections are refused while draining
        try:
            await asyncio.wait_for(asyncio.open_connection(*proxy.addresses["outbound"]), 1)
            refused = False
        except OSError:
            refused = True
        assert refused
        # the idle keep-alive connection was closed
        assert await asyncio.wait_for(idle.reader.read(), 2) == b""  # type: ignore[union-attr]
        reply = await slow
        assert reply.status == 200 and reply.body == b"/slow"
        assert reply.header("connection") == "close"
        await asyncio.wait_for(shutdown, 5)
        await idle.close()
        await busy.close()


async def test_a_client_that_leaves_while_waiting_for_endpoints_leaves_no_waiter(
    tmp_path: Path,
) -> None:
    f = tmp_path / "d.yaml"
    write_discovery(f, [])
    disc = StaticDiscovery(str(f), interval=0.05)
    async with running_proxy(disc, outbound_target=TARGET, fail_fast_outbound=0.2) as proxy:
        for _ in range(5):
            _, w = await asyncio.open_connection(*proxy.addresses["outbound"])
            w.write(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
            await w.drain()
            await asyncio.sleep(0.05)
            w.close()
        await asyncio.sleep(0.5)  # past the fail-fast timeout of every request
        (concrete,) = proxy.outbound.concretes.values()
        assert concrete.waiters == []
