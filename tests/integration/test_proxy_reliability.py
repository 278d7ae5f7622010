"""Retries, budgets, timeouts, splits, header routing, filters and circuit breaking, over real
sockets: policies arrive in discovery snapshots (a watched file here, the control plane in a mesh).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from pathlib import Path
from typing import Any

import yaml

from tests.integration.conftest import running_proxy
from tests.integration.test_proxy_http1 import sample
from weft.proxy.server import ProxyServer
from weft.proxy.static_discovery import StaticDiscovery
from weft.testing.servers import Backend, HttpClient, Request, Response

SERVICE = ("127.0.0.1", 9)  # the address the app dials; only discovery knows it
CANARY = "canary.default.svc.cluster.local:80"
STABLE = "stable.default.svc.cluster.local:80"


def write(path: Path, policy: dict[str, Any] | None, eps: list[tuple[str, int]],
          backends: dict[str, list[tuple[str, int]]] | None = None) -> None:  # fmt: skip
    def dest(target: str, endpoints: list[tuple[str, int]], name: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": target,
            "labels": {"service": name, "namespace": "default"},
            "endpoints": [
                {"address": f"{h}:{p}", "labels": {"pod": f"{name}-{p}"}} for h, p in endpoints
            ],
        }
        return out

    doc = [dest(f"{SERVICE[0]}:{SERVICE[1]}", eps, "web")]
    if policy is not None:
        doc[0]["policy"] = policy
    for target, endpoints in (backends or {}).items():
        doc.append(dest(target, endpoints, target.split(".")[0]))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"destinations": doc}))
    tmp.replace(path)


def failing_every(n: int):  # type: ignore[no-untyped-def]
    counter = itertools.count(1)

    def handler(req: Request) -> Response:
        if next(counter) % n == 0:
            return Response(status=503, body=b"fail")
        return Response(body=b"ok")

    return handler


async def run_requests(proxy: ProxyServer, n: int, *, method: str = "GET", path: str = "/",
                       headers: list[tuple[str, str]] | None = None) -> list[int]:  # fmt: skip
    async with HttpClient(proxy.addresses["outbound"]) as client:
        return [
            (
                await client.request(method, path, headers=headers or [("host", "web")], body=None)
            ).status
            for _ in range(n)
        ]


async def test_retries_hide_a_flaky_backend_within_the_budget(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    async with Backend(failing_every(3)) as backend:  # a third of requests fail
        write(f, {"retry": {"statuses": [[500, 599]], "limit": 3}}, [backend.address])
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE
        ) as proxy:
            statuses = await run_requests(proxy, 150)
            assert statuses.count(200) == 150
            effective = sample(proxy, "route_response_total", route="default")
            actual = sample(proxy, "route_actual_response_total", route="default")
            assert effective == 150
            assert actual == len(backend.requests) > 150  # retries are visible as actual traffic
            assert sample(proxy, "route_actual_response_total", classification="failure") > 0


async def test_budget_caps_the_extra_load_of_a_failing_backend(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    async with Backend(lambda r: Response(status=500)) as backend:
        budget = {"ratio": 0.2, "min_per_second": 0.0, "ttl": 10.0}
        write(f, {"retry": {"limit": 3, "budget": budget}}, [backend.address])
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE
        ) as proxy:
            statuses = await run_requests(proxy, 200)
            assert set(statuses) == {500}
            # at most 20% more attempts than requests, whatever the retry limit
            assert len(backend.requests) <= 200 * 1.2 + 1


async def test_post_is_not_retried_without_a_route_that_allows_it(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    async with Backend(lambda r: Response(status=503)) as backend:
        write(f, {"retry": {"limit": 3}}, [backend.address])
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE
        ) as proxy:
            statuses = await run_requests(proxy, 10, method="POST")
            assert statuses == [503] * 10
            assert len(backend.requests) == 10
            await run_requests(proxy, 10, method="GET")
            assert len(backend.requests) > 20  # GETs were retried


async def test_request_timeout_answers_504_and_cancels_the_attempt(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"

    async def slow(req: Request) -> Response:
        await asyncio.sleep(2)
        return Response()

    async with Backend(slow) as backend:
        write(f, {"timeouts": {"request": 0.2}}, [backend.address])
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE
        ) as proxy:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            async with HttpClient(proxy.addresses["outbound"]) as client:
                reply = await client.request("GET", "/")
            elapsed = loop.time() - t0
            assert reply.status == 504
            assert reply.header("weft-proxy-error") == "response-timeout"
            assert elapsed < 1.5  # well before the backend would have answered
            await asyncio.sleep(0.05)
            assert not backend.live or all(c.transport.is_closing() for c in backend.live)  # type: ignore[union-attr]


async def test_attempt_timeout_combines_with_retries(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    calls = itertools.count()

    async def first_slow(req: Request) -> Response:
        if next(calls) == 0:
            await asyncio.sleep(2)
        return Response(body=b"second try")

    async with Backend(first_slow) as backend:
        write(f, {"retry": {"limit": 2, "timeout": 0.2}}, [backend.address])
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE
        ) as proxy:
            async with HttpClient(proxy.addresses["outbound"]) as client:
                reply = await client.request("GET", "/")
            assert reply.status == 200 and reply.body == b"second try"


async def test_weighted_split_and_live_weight_changes(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    async with Backend(lambda r: Response(body=b"stable")) as stable, \
            Backend(lambda r: Response(body=b"canary")) as canary:  # fmt: skip

        def policy(canary_weight: int) -> dict[str, Any]:
            return {"routes": [{"name": "default/split", "rules": [{"backends": [
                {"target": STABLE, "weight": 100 - canary_weight, "name": "stable"},
                {"target": CANARY, "weight": canary_weight, "name": "canary"},
            ]}]}]}  # fmt: skip

        backends = {STABLE: [stable.address], CANARY: [canary.address]}
        write(f, policy(10), [stable.address], backends)
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.02), outbound_target=SERVICE
        ) as proxy:
            async with HttpClient(proxy.addresses["outbound"]) as client:
                seen = collections.Counter([(await client.request()).body for _ in range(1000)])
                assert abs(seen[b"canary"] / 1000 - 0.10) <= 0.03
                for weight in (50, 100):
                    write(f, policy(weight), [stable.address], backends)
                    await asyncio.sleep(0.2)
                    seen = collections.Counter([(await client.request()).body for _ in range(400)])
                    assert abs(seen[b"canary"] / 400 - weight / 100) <= 0.03
                    assert sum(seen.values()) == 400  # no failed request across the change


async def test_header_routing_sends_marked_requests_to_the_canary(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    async with Backend(lambda r: Response(body=b"stable")) as stable, \
            Backend(lambda r: Response(body=b"canary")) as canary:  # fmt: skip
        policy = {"routes": [{"name": "default/canary", "rules": [{
            "matches": [{"headers": [{"name": "x-canary", "value": "1"}]}],
            "backends": [{"target": CANARY, "name": "canary"}],
        }]}]}  # fmt: skip
        write(f, policy, [stable.address], {CANARY: [canary.address]})
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE
        ) as proxy:
            async with HttpClient(proxy.addresses["outbound"]) as client:
                assert (await client.request()).body == b"stable"
                marked = await client.request(headers=[("host", "web"), ("x-canary", "1")])
                assert marked.body == b"canary"
            assert sample(proxy, "route_request_total", route="default/canary") == 1
            assert sample(proxy, "route_request_total", route="default") == 1


async def test_redirect_and_header_modifiers(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    async with Backend() as backend:
        policy = {"routes": [{"name": "default/filters", "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
             "redirect": {"path": "/new", "status_code": 301}},
            {"request_headers": {"set": [["x-env", "mesh"]], "remove": ["x-secret"]},
             "response_headers": {"add": [["x-served-by", "weft"]]}},
        ]}]}  # fmt: skip
        write(f, policy, [backend.address])
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE
        ) as proxy:
            async with HttpClient(proxy.addresses["outbound"]) as client:
                moved = await client.request("GET", "/old/page", headers=[("host", "web")])
                assert moved.status == 301
                assert moved.header("location") == "http://web:9/new"  # the port it was sent to
                reply = await client.request(
                    "GET", "/x", headers=[("host", "web"), ("x-secret", "s"), ("x-env", "dev")]
                )
                assert reply.header("x-served-by") == "weft"
            seen = backend.requests[-1]
            assert seen.header("x-env") == "mesh"
            assert seen.header("x-secret") is None
            assert [r.path for r in backend.requests] == ["/x"]  # the redirect never went up


async def test_failing_endpoint_is_ejected_then_all_ejected_fails_fast(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    accrual = {"max_failures": 3, "min_penalty": 30.0, "max_penalty": 60.0, "jitter": 0.0}
    async with Backend(lambda r: Response(body=b"good")) as good1, \
            Backend(lambda r: Response(body=b"good")) as good2, \
            Backend(lambda r: Response(status=500)) as bad:  # fmt: skip
        write(f, {"failure_accrual": accrual}, [good1.address, good2.address, bad.address])
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE
        ) as proxy:
            statuses = await run_requests(proxy, 300)
            assert len(bad.requests) <= 3  # ejected after 3 consecutive failures
            assert statuses.count(200) >= 297
            text = proxy.metrics.expose().decode()
            assert f'endpoint="127.0.0.1:{bad.port}",state="ejected"' in text
        # every endpoint failing: once all are ejected, the proxy answers 503 itself, at once
        write(f, {"failure_accrual": accrual}, [bad.address])
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE
        ) as proxy:
            before = len(bad.requests)
            statuses = await run_requests(proxy, 10)
            assert statuses[:3] == [500, 500, 500]
            assert len(bad.requests) - before == 3
            async with HttpClient(proxy.addresses["outbound"]) as client:
                reply = await client.request()
            assert reply.status == 503
            assert reply.header("weft-proxy-error") == "endpoints-ejected"


async def test_idle_timeout_ends_a_stalled_exchange(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"

    async def silent(req: Request) -> Response:
        await asyncio.sleep(10)
        return Response()

    async with Backend(silent) as backend:
        write(f, {"timeouts": {"idle": 1.0}}, [backend.address])
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE
        ) as proxy:
            async with HttpClient(proxy.addresses["outbound"]) as client:
                reply = await client.request("GET", "/", timeout=5)
            assert reply.status == 504
            assert reply.header("weft-proxy-error") == "idle-timeout"

    # a response that starts, then stalls: the client connection is cut, not left hanging
    async with Backend(lambda r: Response(chunks=[b"first", b"never"])) as backend:
        backend.chunk_delay = 8.0
        write(f, {"timeouts": {"idle": 1.0}}, [backend.address])
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE
        ) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.addresses["outbound"])
            writer.write(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), 5)  # EOF well before the 8 s stall
            assert data.startswith(b"HTTP/1.1 200") and b"first" in data
            writer.close()


async def test_a_backend_discovery_does_not_know_answers_500(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    async with Backend() as backend:
        policy = {"routes": [{"name": "default/ghost", "rules": [{
            "backends": [{"target": "ghost.default.svc.cluster.local:80", "name": "ghost"}],
        }]}]}  # fmt: skip
        write(f, policy, [backend.address])  # the ghost service is listed nowhere
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE
        ) as proxy:
            async with HttpClient(proxy.addresses["outbound"]) as client:
                reply = await client.request()
            assert reply.status == 500
            assert reply.header("weft-proxy-error") == "backend-not-found"
            assert backend.requests == []
