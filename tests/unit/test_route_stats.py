"""Unit tests for per-route stats (``weft routes``): effective vs actual, window math, format."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from weft.cli.commands.routes import fmt_row, route_name, table
from weft.control.metrics import Stats, parse_metrics, series_increase
from weft.control.store import Store
from weft.testing.clock import FakeClock

T0 = 1_700_000_000.0
BOUNDS = [1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1000]


class RouteCounters:
    """One client proxy's route counters, rendered as its /metrics text."""

    def __init__(self) -> None:
        # (route, dst_service, dst_namespace) -> [ok, fail, actual_ok, actual_fail, latencies]
        self.routes: dict[tuple[str, str, str], list[Any]] = {}

    def add(
        self,
        route: str,
        *,
        ok: int = 0,
        fail: int = 0,
        retried: int = 0,
        latency_ms: float = 3.5,
        service: str = "web",
        namespace: str = "default",
    ) -> None:
        """``ok`` + ``fail`` client requests; ``retried`` of the ok ones failed once first."""
        c = self.routes.setdefault((route, service, namespace), [0, 0, 0, 0, []])
        c[0] += ok
        c[1] += fail
        c[2] += ok
        c[3] += fail + retried
        c[4] += [latency_ms] * (ok + fail)

    def text(self, direction: str | None = "outbound") -> str:
        d = f'direction="{direction}",' if direction else ""
        lines = ["# TYPE route_response_total counter"]
        for (route, svc, ns), (ok, fail, _, _, _) in self.routes.items():
            base = f'{d}route="{route}",dst_service="{svc}",dst_namespace="{ns}"'
            lines.append(
                f'route_response_total{{{base},status_code="200",classification="success"}} {ok}'
            )
            lines.append(
                f'route_response_total{{{base},status_code="503",classification="failure"}} {fail}'
            )
        lines.append("# TYPE route_actual_response_total counter")
        for (route, svc, ns), (_, _, aok, afail, _) in self.routes.items():
            base = f'{d}route="{route}",dst_service="{svc}",dst_namespace="{ns}"'
            lines.append(
                f'route_actual_response_total{{{base},status_code="200",'
                f'classification="success"}} {aok}'
            )
            lines.append(
                f'route_actual_response_total{{{base},status_code="503",'
                f'classification="failure"}} {afail}'
            )
        lines.append("# TYPE route_response_latency_ms histogram")
        for (route, svc, ns), (_, _, _, _, obs) in self.routes.items():
            base = f'{d}route="{route}",dst_service="{svc}",dst_namespace="{ns}"'
            for b in BOUNDS:
                n = sum(1 for v in obs if v <= b)
                lines.append(f'route_response_latency_ms_bucket{{{base},le="{b}"}} {n}')
            lines.append(f'route_response_latency_ms_bucket{{{base},le="+Inf"}} {len(obs)}')
            lines.append(f"route_response_latency_ms_count{{{base}}} {len(obs)}")
            lines.append(f"route_response_latency_ms_sum{{{base}}} {sum(obs)}")
        # inbound golden series of the same proxy must not leak into route rows
        lines.append("# TYPE response_total counter")
        lines.append(
            'response_total{direction="inbound",status_code="200",classification="success"} 7'
        )
        return "\n".join(lines) + "\n"


class World:
    def __init__(self) -> None:
        self.clock = FakeClock(T0)
        n = itertools.count(1)
        self.store = Store(clock=self.clock, uid=lambda: f"uid-{next(n)}")
        self.stats = Stats(self.store, clock=self.clock)
        self.pods: list[dict[str, Any]] = []

    def client(self, name: str) -> dict[str, Any]:
        (r,) = self.store.apply(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": name,
                        "labels": {"app": "client"},
                        "annotations": {"weft.io/proxy-admin": "127.0.0.1:4191"},
                    },
                    "spec": {"containers": [{"name": "a", "command": ["x"]}]},
                    "status": {"phase": "Running", "podIP": "10.244.0.9", "ready": True},
                }
            ]
        )
        return dict(r.object)

    def scrape(self, pod: dict[str, Any], counters: RouteCounters, **kw: Any) -> None:
        self.stats.record(pod, self.clock(), parse_metrics(counters.text(**kw)))

    def rows(self, configured: tuple[str, ...] = (), window: float = 60.0) -> dict[str, Any]:
        return {r["route"]: r for r in self.stats.routes("web", "default", window, configured)}


def test_effective_and_actual_from_two_clients() -> None:
    w = World()
    a, b = w.client("client-a"), w.client("client-b")
    ca, cb = RouteCounters(), RouteCounters()
    w.clock.advance(100)  # clients older than the window: the first scrape is the baseline
    ca.add("default/web-api", ok=1000)  # before the window: not counted
    w.scrape(a, ca)
    w.scrape(b, cb)
    w.clock.advance(30)
    ca.add("default/web-api", ok=590, fail=10, retried=150)
    cb.add("default/web-api", ok=400, retried=50, latency_ms=15)
    cb.add("default", ok=60, fail=60)
    cb.add("default/web-api", ok=5, service="other")  # another service: not in these rows
    w.scrape(a, ca)
    w.scrape(b, cb)
    rows = w.rows(configured=("default/web-api", "default/idle-route"))
    assert list(rows) == ["default/idle-route", "default/web-api", "default"]
    api = rows["default/web-api"]
    assert (api["requests"], api["successes"]) == (1000, 990)
    assert api["success"] == pytest.approx(0.99)
    assert api["rps"] == pytest.approx(1000 / 60)
    # every attempt the servers saw: 1000 requests + 200 retries, 210 of them failed
    assert (api["actual_requests"], api["actual_successes"]) == (1200, 990)
    assert api["actual_success"] == pytest.approx(990 / 1200)
    assert api["actual_rps"] == pytest.approx(1200 / 60)
    # 600 observations in (3, 4] and 400 in (10, 20]: p50 is in the first bucket
    assert api["latency_ms_p50"] == pytest.approx(3 + 500 / 600)
    assert api["latency_ms_p95"] == pytest.approx(10 + 10 * (950 - 600) / 400)
    default = rows["default"]
    assert (default["requests"], default["success"]) == (120, 0.5)
    idle = rows["default/idle-route"]
    assert idle["requests"] == 0
    assert idle["success"] is idle["rps"] is idle["latency_ms_p50"] is idle["actual_rps"] is None


def test_routes_not_configured_but_seen_in_the_window_are_listed() -> None:
    w = World()
    a = w.client("client-a")
    c = RouteCounters()
    w.clock.advance(100)
    w.scrape(a, c)
    w.clock.advance(10)
    c.add("default/deleted-route", ok=10)
    w.scrape(a, c)
    assert list(w.rows()) == ["default/deleted-route", "default"]
    # once the window has moved past its traffic, an unconfigured route is gone
    w.clock.advance(120)
    w.scrape(a, c)
    assert list(w.rows()) == ["default"]


def test_series_without_a_direction_count_and_inbound_ones_do_not() -> None:
    w = World()
    a = w.client("client-a")
    c = RouteCounters()
    w.clock.advance(100)
    w.scrape(a, c, direction=None)
    w.clock.advance(10)
    c.add("default/r", ok=10)
    w.scrape(a, c, direction=None)
    assert w.rows()["default/r"]["requests"] == 10
    values = parse_metrics(c.text(direction="inbound"))
    assert not any(name.startswith("route_") for name, _ in values)


def test_a_proxy_restart_counts_the_new_values() -> None:
    w = World()
    a = w.client("client-a")
    c = RouteCounters()
    w.clock.advance(100)
    c.add("default/r", ok=50)
    w.scrape(a, c)
    w.clock.advance(10)
    c.add("default/r", ok=50)
    w.scrape(a, c)
    w.clock.advance(10)
    fresh = RouteCounters()  # the proxy restarted: counters start again
    fresh.add("default/r", ok=7)
    w.scrape(a, fresh)
    assert w.rows()["default/r"]["requests"] == 57


def test_formatting_as_linkerd_does() -> None:
    row = {
        "route": "default/web-api",
        "service": "web",
        "success": 0.995,
        "rps": 20.0,
        "latency_ms_p50": 2.4,
        "latency_ms_p95": 5.0,
        "latency_ms_p99": 0.5,
        "actual_success": 0.8,
        "actual_rps": 25.0,
    }
    assert fmt_row(row) == ["web-api", "web", "99.50%", "20.0rps", "2ms", "5ms", "0.5ms"]
    assert fmt_row(row, wide=True)[7:] == ["99.50%", "20.0rps", "80.00%", "25.0rps"]
    empty = {"route": "default", "service": "web"}
    assert fmt_row(empty) == ["[default]", "web", "-", "-", "-", "-", "-"]
    columns, _ = table([row], wide=True)
    assert columns[-4:] == ["EFFECTIVE_SUCCESS", "EFFECTIVE_RPS", "ACTUAL_SUCCESS", "ACTUAL_RPS"]
    assert route_name("shop/a") == "a"


def test_a_series_absent_from_the_baseline_counts_from_zero() -> None:
    key = ("route_response_total", (("route", "r"),))
    other = ("route_response_total", (("route", "s"),))
    samples = [{other: 5.0}, {other: 6.0, key: 7.0}, {other: 8.0, key: 9.0}]
    assert series_increase(samples, key, from_zero=False) == 9
    assert series_increase(samples, other, from_zero=False) == 3
    assert series_increase([], key, from_zero=False) == 0
