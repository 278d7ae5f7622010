"""weft.testing.discovery: the fake feed, alone and driving a real proxy."""

from __future__ import annotations

import asyncio

from tests.integration.test_proxy_http1 import sample
from weft.discovery import Destination, Endpoint
from weft.policy import ServicePolicy
from weft.testing import FakeDiscovery, endpoint, running_proxy, wait_until
from weft.testing.servers import Backend, HttpClient, Response

TARGET = ("127.0.0.1", 9)  # the service address the app dials; nothing listens there
SERVICE = "127.0.0.1:9"


def answering(name: str) -> Backend:
    return Backend(lambda req: Response(body=name.encode()))


async def test_updates_reach_subscribers_before_the_call_returns() -> None:
    feed = FakeDiscovery([Destination(target="localhost:80", labels={"service": "web"})])
    res = await feed.resolve("localhost:80")
    assert res.current is not None and res.current.labels["service"] == "web"
    seen: list[Destination | None] = []
    res.subscribe(seen.append)
    assert feed.subscribers("localhost:80") == 1

    feed.set_endpoints("localhost:80", [("127.0.0.1", 1), "127.0.0.1:2"])
    assert seen[-1] is not None
    assert [e.address for e in seen[-1].endpoints] == [("127.0.0.1", 1), ("127.0.0.1", 2)]
    assert seen[-1].labels["service"] == "web"  # the other fields are kept
    feed.clear_endpoints("localhost:80")
    assert seen[-1] is not None and seen[-1].endpoints == ()
    feed.set_policy("localhost:80", {"timeouts": {"request": 1.5}})
    assert seen[-1] is not None and seen[-1].policy == ServicePolicy.from_json(
        {"timeouts": {"request": 1.5}}
    )
    feed.set_opaque("localhost:80")
    assert seen[-1] is not None and seen[-1].opaque
    feed.remove("localhost:80")
    assert seen[-1] is None and res.current is None
    assert len(seen) == 5
    assert feed.resolved == ["localhost:80"]

    unknown = await feed.resolve("10.0.0.1:80")
    assert unknown.current is None  # unknown until set
    feed.set_endpoints(("10.0.0.1", 80), [endpoint("127.0.0.1:3", pod="p")])
    assert unknown.current is not None
    assert unknown.current.endpoints[0].labels == {"pod": "p"}


async def test_hold_makes_resolve_wait_until_release() -> None:
    feed = FakeDiscovery()
    feed.hold()
    pending = asyncio.create_task(feed.resolve("127.0.0.1:9"))
    await asyncio.sleep(0.05)
    assert not pending.done() and feed.resolved == ["127.0.0.1:9"]
    feed.release()
    assert (await asyncio.wait_for(pending, 5.0)).current is None


async def test_a_running_proxy_routes_to_the_endpoint_the_feed_sets_next() -> None:
    feed = FakeDiscovery()
    async with answering("a") as a, answering("b") as b:
        feed.set_endpoints(SERVICE, [endpoint(a.address, pod="a-0")], service="web")
        async with (
            running_proxy(feed, outbound_target=TARGET, fail_fast_outbound=1.0) as proxy,
            HttpClient(proxy.addresses["outbound"]) as client,
        ):
            assert (await client.request("GET", "/")).body == b"a"
            assert feed.subscribers(SERVICE) >= 1
            # the next request after the update goes to the new endpoint: no poll to wait for
            feed.set_endpoints(SERVICE, [Endpoint(b.address, labels={"pod": "b-0"})])
            replies = [await client.request("GET", "/") for _ in range(5)]
            assert [r.body for r in replies] == [b"b"] * 5
            assert sample(proxy, "request_total", dst_pod="b-0", dst_service="web") == 5

            feed.clear_endpoints(SERVICE)
            reply = await client.request("GET", "/")
            assert reply.status == 503
            assert reply.header("weft-proxy-error") == "no-endpoints"

            # a request waiting for endpoints is served when the feed gives one
            pending = asyncio.create_task(client.request("GET", "/late"))
            (concrete,) = proxy.outbound.concretes.values()
            await wait_until(lambda: bool(concrete.waiters), what="the request to wait")
            feed.set_endpoints(SERVICE, [a.address])
            late = await asyncio.wait_for(pending, 5.0)
            assert (late.status, late.body) == (200, b"a")
        assert feed.closed  # the proxy closed its discovery on shutdown
