"""Route matching, weighted backends, redirects and header filters, over HTTP/1.1 and HTTP/2:
the same policy must route the same request the same way whatever protocol carries it
(docs/resources.md, HTTPRoute; ``weft.core.routes`` decides, each protocol path applies)."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

from tests.integration.l7.conftest import DualBackend, Request, Response, mesh, sample

CANARY = "canary.default.svc.cluster.local:80"
STABLE = "stable.default.svc.cluster.local:80"


def tagged(name: str) -> Any:
    def handler(req: Request) -> Response:
        return Response(body=name.encode())

    return handler


def route(name: str, *rules: dict[str, Any], hostnames: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "rules": list(rules)}
    if hostnames:
        out["hostnames"] = hostnames
    return out


async def test_a_request_no_route_matches_goes_to_the_service_on_the_default_route(
    tmp_path: Path, protocol: str
) -> None:
    async with DualBackend() as web:
        async with mesh(tmp_path, None, [web.address]) as m, m.client(protocol) as client:
            reply = await client.request("GET", "/hello?x=1", headers=[("x-a", "1")])
            assert (reply.status, reply.body, reply.error) == (200, b"GET /hello?x=1", None)
            assert sample(m.proxy, "route_request_total", route="default") == 1
            assert sample(m.proxy, "route_response_total", route="default", status_code="200") == 1
        (seen,) = web.requests
        assert seen.version == ("1.1" if protocol == "http1" else "2")  # protocol kept
        assert seen.header("x-a") == "1"
        assert seen.header("host") == "web"


async def test_header_path_query_and_method_matches_pick_their_rule(
    tmp_path: Path, protocol: str
) -> None:
    async with DualBackend(tagged("web")) as web, DualBackend(tagged("canary")) as canary:
        to_canary = [{"target": CANARY, "name": "canary"}]
        policy = {"routes": [route("default/matches", {
            "matches": [
                {"headers": [{"name": "x-canary", "value": "1"}]},
                {"path": {"type": "PathPrefix", "value": "/api"}},
                {"path": {"type": "Exact", "value": "/q"},
                 "query_params": [{"name": "v", "value": "2"}]},
                {"path": {"type": "Exact", "value": "/m"}, "method": "DELETE"},
            ],
            "backends": to_canary,
        })]}  # fmt: skip
        async with mesh(tmp_path, policy, [web.address], {CANARY: [canary.address]}) as m:
            async with m.client(protocol) as client:
                cases = [
                    ("GET", "/", [], b"web"),
                    ("GET", "/", [("x-canary", "1")], b"canary"),
                    ("GET", "/", [("x-canary", "2")], b"web"),
                    ("GET", "/api/v1", [], b"canary"),
                    ("GET", "/apix", [], b"web"),  # a prefix matches whole segments
                    ("GET", "/q?v=2", [], b"canary"),
                    ("GET", "/q?v=3", [], b"web"),
                    ("DELETE", "/m", [], b"canary"),
                    ("GET", "/m", [], b"web"),
                ]
                got = [
                    (await client.request(method, path, headers=headers)).body
                    for method, path, headers, _ in cases
                ]
            assert got == [want for *_, want in cases]
            assert sample(m.proxy, "route_request_total", route="default/matches") == 4
            assert sample(m.proxy, "route_request_total", route="default") == 5


async def test_route_hostnames_select_by_authority(tmp_path: Path, protocol: str) -> None:
    async with DualBackend(tagged("web")) as web, DualBackend(tagged("canary")) as canary:
        policy = {"routes": [route(
            "default/host", {"backends": [{"target": CANARY, "name": "canary"}]},
            hostnames=["canary.example"],
        )]}  # fmt: skip
        async with mesh(tmp_path, policy, [web.address], {CANARY: [canary.address]}) as m:
            async with m.client(protocol) as client:
                other = await client.request("GET", "/", headers=[("host", "web")])
                named = await client.request("GET", "/", headers=[("host", "canary.example")])
        assert (other.body, named.body) == (b"web", b"canary")


async def test_weighted_backends_split_and_a_zero_weight_gets_nothing(
    tmp_path: Path, protocol: str
) -> None:
    async with DualBackend(tagged("stable")) as stable, \
            DualBackend(tagged("canary")) as canary:  # fmt: skip

        def policy(stable_weight: int, canary_weight: int) -> dict[str, Any]:
            return {"routes": [route("default/split", {"backends": [
                {"target": STABLE, "weight": stable_weight, "name": "stable"},
                {"target": CANARY, "weight": canary_weight, "name": "canary"},
            ]})]}  # fmt: skip

        backends = {STABLE: [stable.address], CANARY: [canary.address]}
        async with mesh(tmp_path, policy(1, 1), [stable.address], backends) as m:
            async with m.client(protocol) as client:
                seen = collections.Counter([(await client.request()).body for _ in range(200)])
            assert seen[b"stable"] + seen[b"canary"] == 200
            assert min(seen[b"stable"], seen[b"canary"]) >= 50, seen  # 1:1 (p < 1e-12 to fail)
        async with mesh(tmp_path, policy(0, 1), [stable.address], backends) as m:
            async with m.client(protocol) as client:
                seen = collections.Counter([(await client.request()).body for _ in range(50)])
            assert seen == {b"canary": 50}


async def test_every_backend_at_weight_zero_is_answered_500(tmp_path: Path, protocol: str) -> None:
    async with DualBackend() as web:
        policy = {"routes": [route("default/none", {"backends": [
            {"target": CANARY, "weight": 0, "name": "canary"}]})]}  # fmt: skip
        async with mesh(tmp_path, policy, [web.address], {CANARY: [web.address]}) as m:
            async with m.client(protocol) as client:
                reply = await client.request()
            assert reply.status == 500
            assert reply.header("weft-proxy-error") == "no-backends"
            assert sample(m.proxy, "route_response_total", route="default/none",
                          status_code="500", classification="failure") == 1  # fmt: skip
        assert web.requests == []


async def test_a_backend_discovery_does_not_know_is_answered_500(
    tmp_path: Path, protocol: str
) -> None:
    async with DualBackend() as web:
        policy = {"routes": [route("default/ghost", {"backends": [
            {"target": "ghost.default.svc.cluster.local:80", "name": "ghost"}]})]}  # fmt: skip
        async with mesh(tmp_path, policy, [web.address]) as m, m.client(protocol) as client:
            reply = await client.request()
            assert reply.status == 500
            assert reply.header("weft-proxy-error") == "backend-not-found"
            assert sample(m.proxy, "route_response_total", route="default/ghost",
                          status_code="500") == 1  # fmt: skip
        assert web.requests == []


async def test_redirects_answer_without_going_upstream(tmp_path: Path, protocol: str) -> None:
    async with DualBackend() as web:
        policy = {"routes": [route(
            "default/moves",
            {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
             "redirect": {"path": "/new", "status_code": 301}},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/away"}}],
             "redirect": {"hostname": "elsewhere.example", "port": 8080}},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/secure"}}],
             "redirect": {"scheme": "https", "status_code": 308}},
        )]}  # fmt: skip
        async with mesh(tmp_path, policy, [web.address]) as m, m.client(protocol) as client:
            moved = await client.request("GET", "/old/page?a=1")
            away = await client.request("GET", "/away/x")
            secure = await client.request("GET", "/secure/y")
            after = await client.request("GET", "/still-served")
            assert (moved.status, moved.header("location")) == (301, "http://web:9/new?a=1")
            assert (away.status, away.header("location")) == (
                302, "http://elsewhere.example:8080/away/x")  # fmt: skip
            assert secure.status == 308
            assert secure.header("location") == "https://web/secure/y"
            assert [r.body for r in (moved, away, secure)] == [b"", b"", b""]
            assert all(r.error is None for r in (moved, away, secure))
            assert after.status == 200  # the connection goes on after a redirect
            assert sample(m.proxy, "route_response_total", route="default/moves",
                          status_code="301", classification="success") == 1  # fmt: skip
            assert sample(m.proxy, "route_request_total", route="default/moves") == 3
        assert web.paths() == ["/still-served"]  # no redirect went up


async def test_request_header_modifier_sets_adds_and_removes(tmp_path: Path, protocol: str) -> None:
    async with DualBackend() as web:
        policy = {"routes": [route("default/filters", {
            "request_headers": {"set": [["x-env", "mesh"]], "add": [["x-added", "yes"]],
                                "remove": ["x-secret"]},
        })]}  # fmt: skip
        async with mesh(tmp_path, policy, [web.address]) as m, m.client(protocol) as client:
            headers = [("x-secret", "s"), ("x-env", "dev"), ("x-keep", "k")]
            reply = await client.request("GET", "/x", headers=headers)
            assert reply.status == 200
        (seen,) = web.requests
        assert seen.header("x-env") == "mesh"
        assert seen.header("x-added") == "yes"
        assert seen.header("x-secret") is None
        assert seen.header("x-keep") == "k"
        assert [k for k, _ in seen.headers].count("x-env") == 1


async def test_response_header_modifier_sets_adds_and_removes(
    tmp_path: Path, protocol: str
) -> None:
    def answer(req: Request) -> Response:
        headers = [("x-internal", "1"), ("x-version", "old"), ("x-keep", "k")]
        return Response(body=b"ok", headers=headers)

    async with DualBackend(answer) as web:
        policy = {"routes": [route("default/filters", {
            "response_headers": {"set": [["x-version", "new"]], "add": [["x-served-by", "weft"]],
                                 "remove": ["x-internal"]},
        })]}  # fmt: skip
        async with mesh(tmp_path, policy, [web.address]) as m, m.client(protocol) as client:
            reply = await client.request("GET", "/")
        assert (reply.status, reply.body) == (200, b"ok")
        assert reply.header("x-version") == "new"
        assert reply.header("x-served-by") == "weft"
        assert reply.header("x-internal") is None
        assert reply.header("x-keep") == "k"


async def test_a_routed_request_keeps_its_method_body_and_trailers(
    tmp_path: Path, protocol: str
) -> None:
    def echo(req: Request) -> Response:
        return Response(chunks=[req.method.encode(), b":", req.body], trailers=[("x-sum", "3")])

    async with DualBackend(echo) as canary, DualBackend() as web:
        policy = {"routes": [route("default/echo", {"backends": [
            {"target": CANARY, "name": "canary"}]})]}  # fmt: skip
        async with mesh(tmp_path, policy, [web.address], {CANARY: [canary.address]}) as m:
            async with m.client(protocol) as client:
                reply = await client.request("POST", "/e", body=b"abc")
        assert (reply.status, reply.body) == (200, b"POST:abc")
        assert ("x-sum", "3") in reply.trailers
        assert web.requests == []
