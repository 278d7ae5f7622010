"""Unit and property tests for metrics aggregation (stat math) and its CLI formatting."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.cli.commands.stat import fmt_latency, fmt_row, parse_duration
from weft.control.metrics import Stats, histogram_quantile, increase, parse_metrics
from weft.control.store import Store
from weft.testing.clock import FakeClock

T0 = 1_700_000_000.0
BOUNDS = [1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1000]


def metrics_text(
    ok: int = 0,
    fail: int = 0,
    latencies: list[float] | None = None,
    conns: int = 0,
    read: int = 0,
    write: int = 0,
) -> str:
    """What a proxy's /metrics shows after ``ok`` + ``fail`` inbound responses."""
    lines = [
        "# TYPE request_total counter",
        f'request_total{{direction="inbound",authority="web:8080"}} {ok + fail}',
        f'request_total{{direction="outbound",authority="api:80"}} {7 * (ok + fail)}',
        "# TYPE response_total counter",
        f'response_total{{direction="inbound",status_code="200",classification="success"}} {ok}',
        f'response_total{{direction="inbound",status_code="500",classification="failure"}} {fail}',
        'response_total{direction="outbound",status_code="200",classification="success"} 999',
        "# TYPE response_latency_ms histogram",
    ]
    obs = latencies if latencies is not None else [1.5] * (ok + fail)
    for b in BOUNDS:
        n = sum(1 for v in obs if v <= b)
        lines.append(f'response_latency_ms_bucket{{direction="inbound",le="{b}"}} {n}')
    lines.append(f'response_latency_ms_bucket{{direction="inbound",le="+Inf"}} {len(obs)}')
    lines.append(f'response_latency_ms_count{{direction="inbound"}} {len(obs)}')
    lines.append(f'response_latency_ms_sum{{direction="inbound"}} {sum(obs)}')
    lines += [
        "# TYPE tcp_open_connections gauge",
        f'tcp_open_connections{{direction="inbound",peer="src"}} {conns}',
        f'tcp_open_connections{{direction="inbound",peer="dst"}} {conns + 5}',
        "# TYPE tcp_read_bytes_total counter",
        f'tcp_read_bytes_total{{direction="inbound",peer="src"}} {read}',
        "# TYPE tcp_write_bytes_total counter",
        f'tcp_write_bytes_total{{direction="inbound",peer="src"}} {write}',
    ]
    return "\n".join(lines) + "\n"


# -- increase ------------------------------------------------------------------------------


def test_increase_counts_rises_resets_and_gaps() -> None:
    assert increase([10, 15, 30], from_zero=False) == 20
    assert increase([10, 15, 30], from_zero=True) == 30
    assert increase([10, 40, 5, 8], from_zero=False) == 30 + 5 + 3  # reset: the 5 counts
    assert increase([None, 10, None, 12], from_zero=False) == 2
    assert increase([None, 4], from_zero=False) == 0  # first observation is the baseline
    assert increase([], from_zero=True) == 0


def test_series_first_seen_after_the_baseline_counts_from_zero() -> None:
    # absent at the baseline, then 7: all 7 happened inside the window
    assert increase([None, 7, 9], from_zero=False) == 0 + 2
    # the baseline sample exists (first=False once any sample was seen) ... modelled by Stats:
    assert increase([0, 7, 9], from_zero=False) == 9


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=30))
def test_increase_of_a_monotonic_counter_is_last_minus_first(values: list[int]) -> None:
    values.sort()
    assert increase(values, from_zero=False) == values[-1] - values[0]
    assert increase(values, from_zero=True) == values[-1]


# -- histogram_quantile --------------------------------------------------------------------


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = [(1.0, 10.0), (2.0, 50.0), (5.0, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(2.0)
    assert histogram_quantile(0.95, buckets) == pytest.approx(2.0 + 3.0 * 45 / 50)
    assert histogram_quantile(0.05, buckets) == pytest.approx(0.5)
    assert histogram_quantile(0.99, [(1.0, 0.0), (math.inf, 10.0)]) == 1.0
    assert histogram_quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]) is None
    assert histogram_quantile(0.5, [(1.0, 3.0)]) is None  # no +Inf bucket
    assert histogram_quantile(0.5, []) is None
    assert histogram_quantile(-1, buckets) == -math.inf
    assert histogram_quantile(2, buckets) == math.inf


def test_histogram_quantile_unsorted_and_non_monotonic_input() -> None:
    buckets = [(math.inf, 100.0), (5.0, 100.0), (1.0, 10.0), (2.0, 9.0)]  # 9 < 10: fixed to 10
    assert histogram_quantile(0.5, buckets) == pytest.approx(2.0 + 3.0 * 40 / 90)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 1000), min_size=len(BOUNDS) + 1, max_size=len(BOUNDS) + 1),
    st.floats(0, 1),
    st.floats(0, 1),
)
def test_histogram_quantile_is_monotonic_and_bounded(
    counts: list[int], q1: float, q2: float
) -> None:
    cumulative = list(itertools.accumulate(counts))
    buckets = list(zip([*map(float, BOUNDS), math.inf], map(float, cumulative), strict=True))
    a, b = histogram_quantile(min(q1, q2), buckets), histogram_quantile(max(q1, q2), buckets)
    if cumulative[-1] == 0:
        assert a is None and b is None
        return
    assert a is not None and b is not None
    assert 0 <= a <= b <= BOUNDS[-1]


# -- parsing -------------------------------------------------------------------------------


def test_parse_keeps_inbound_series_only() -> None:
    values = parse_metrics(metrics_text(ok=3, fail=1))
    names = {name for name, _ in values}
    assert "response_latency_ms_count" not in names
    assert all(dict(labels)["direction"] == "inbound" for _, labels in values)
    ok = ("response_total", (("classification", "success"), ("direction", "inbound"),
                             ("status_code", "200")))  # fmt: skip
    assert values[ok] == 3
    with pytest.raises(ValueError):
        parse_metrics("this is { not prometheus")


# -- window queries ------------------------------------------------------------------------


class World:
    """A store with a deployment, a service and pods, plus Stats on a fake clock."""

    def __init__(self) -> None:
        self.clock = FakeClock(T0)
        n = itertools.count(1)
        self.store = Store(clock=self.clock, uid=lambda: f"uid-{next(n)}")
        self.stats = Stats(self.store, clock=self.clock)
        self.store.apply(
            [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": "web"},
                    "spec": {
                        "selector": {"matchLabels": {"app": "web"}},
                        "template": {
                            "metadata": {"labels": {"app": "web"}},
                            "spec": {"containers": [{"name": "a", "command": ["x"]}]},
                        },
                    },
                },
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": "web-svc"},
                    "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
                },
            ]
        )

    def pod(self, name: str, *, meshed: bool = True, app: str = "web") -> dict[str, Any]:
        annotations = {"weft.io/deployment": app}
        if meshed:
            annotations["weft.io/proxy-admin"] = "127.0.0.1:4191"
        (r,) = self.store.apply(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": name, "labels": {"app": app}, "annotations": annotations},
                    "spec": {"containers": [{"name": "a", "command": ["x"]}]},
                    "status": {"phase": "Running", "podIP": "10.244.0.2", "ready": True},
                }
            ]
        )
        return dict(r.object)

    def scrape(self, pod: dict[str, Any], text: str) -> None:
        self.stats.record(pod, self.clock(), parse_metrics(text))

    def row(self, kind: str = "deploy", name: str = "web", window: float = 60.0) -> dict[str, Any]:
        (r,) = self.stats.stat(kind, name, "default", window)
        return r


def test_100_requests_20_failures_is_80_percent_exactly() -> None:
    w = World()
    p = w.pod("web-1")
    w.clock.advance(100)  # the pod is older than the window
    w.scrape(p, metrics_text())
    for i in range(1, 11):
        w.clock.advance(5)
        w.scrape(p, metrics_text(ok=8 * i, fail=2 * i, conns=1, read=100 * i, write=300 * i))
    row = w.row()
    assert row["requests"] == 100 and row["successes"] == 80
    assert row["success"] == 0.8
    assert row["rps"] == pytest.approx(100 / 60, abs=1e-6)
    assert row["latency_ms_p50"] == pytest.approx(1.5)
    assert row["latency_ms_p99"] == pytest.approx(1.99)
    assert row["meshed"] == "1/1"
    assert row["tcp_open_connections"] == 1
    assert row["tcp_read_bytes_rate"] == pytest.approx(1000 / 60, abs=1e-6)
    assert row["tcp_write_bytes_rate"] == pytest.approx(3000 / 60, abs=1e-6)
    assert fmt_row(row) == ["web", "1/1", "80.00%", "1.7rps", "2ms", "2ms", "2ms", "1"]


def test_window_excludes_traffic_before_its_start() -> None:
    w = World()
    p = w.pod("web-1")
    w.clock.advance(100)
    w.scrape(p, metrics_text(ok=1000))
    w.clock.advance(30)
    w.scrape(p, metrics_text(ok=1030, fail=10))
    w.clock.advance(30)
    w.scrape(p, metrics_text(ok=1060, fail=10))
    short = w.row(window=20.0)  # baseline: the sample 30 s ago
    assert (short["requests"], short["successes"]) == (30, 30)
    assert short["rps"] == 1.5
    mid = w.row(window=40.0)  # baseline: the last sample before the window, 60 s ago
    assert (mid["requests"], mid["successes"]) == (70, 60)
    full = w.row(window=60.0)  # baseline: the sample exactly 60 s ago
    assert (full["requests"], full["successes"]) == (70, 60)
    assert full["success"] == pytest.approx(60 / 70, abs=1e-6)


def test_counter_reset_counts_the_new_value() -> None:
    w = World()
    p = w.pod("web-1")
    w.clock.advance(100)
    w.scrape(p, metrics_text(ok=50))
    w.clock.advance(10)
    w.scrape(p, metrics_text(ok=70))
    w.clock.advance(10)
    w.scrape(p, metrics_text(ok=5))  # the proxy restarted
    w.clock.advance(10)
    w.scrape(p, metrics_text(ok=15))
    assert w.row()["requests"] == 20 + 5 + 10


def test_pod_created_inside_the_window_counts_from_zero() -> None:
    w = World()
    w.clock.advance(100)
    p = w.pod("web-1")  # created now: its counters started inside the window
    w.clock.advance(20)
    w.scrape(p, metrics_text(ok=40, fail=10))
    row = w.row()
    assert (row["requests"], row["successes"]) == (50, 40)


def test_pod_older_than_the_window_first_scraped_inside_it_is_a_baseline() -> None:
    w = World()
    p = w.pod("web-1")
    w.clock.advance(600)  # e.g. the control plane restarted: no sample from before
    w.scrape(p, metrics_text(ok=5000))
    assert w.row()["requests"] == 0
    assert w.row()["success"] is None
    w.clock.advance(10)
    w.scrape(p, metrics_text(ok=5012))
    assert w.row()["requests"] == 12


def test_departed_pods_still_count_for_their_deployment_but_not_for_meshed() -> None:
    w = World()
    old = w.pod("web-old")
    w.clock.advance(100)
    w.scrape(old, metrics_text())
    w.clock.advance(10)
    w.scrape(old, metrics_text(ok=30, conns=2))
    w.store.delete([{"kind": "Pod", "metadata": {"name": "web-old"}}])
    new = w.pod("web-new")
    w.clock.advance(10)
    w.scrape(new, metrics_text(ok=20, conns=1))
    row = w.row()
    assert row["requests"] == 50
    assert row["meshed"] == "1/1"
    assert row["tcp_open_connections"] == 1  # only current pods hold connections


def test_svc_pod_and_unmeshed_rows() -> None:
    w = World()
    a = w.pod("web-1")
    w.pod("web-2", meshed=False)
    other = w.pod("api-1", app="api")
    w.clock.advance(5)
    w.scrape(a, metrics_text(ok=6))
    w.scrape(other, metrics_text(ok=99))
    svc = w.row("svc", "web-svc")
    assert (svc["kind"], svc["meshed"], svc["requests"]) == ("service", "1/2", 6)
    pod_row = w.row("pod", "web-1")
    assert (pod_row["kind"], pod_row["meshed"], pod_row["requests"]) == ("pod", "1/1", 6)
    silent = w.row("pod", "web-2")
    assert silent["meshed"] == "0/1"
    assert fmt_row(silent) == ["web-2", "0/1", "-", "-", "-", "-", "-", "-"]
    assert [r["name"] for r in w.stats.stat("pod", None, None, 60)] == ["api-1", "web-1", "web-2"]
    assert w.stats.stat("deploy", "nope", "default", 60) == []
    with pytest.raises(ValueError, match="kind must be deploy, svc or pod"):
        w.stats.stat("gadget", None, None, 60)


def test_latency_quantiles_from_bucket_deltas() -> None:
    w = World()
    p = w.pod("web-1")
    w.clock.advance(100)
    w.scrape(p, metrics_text(ok=100, latencies=[400.0] * 100))  # before the window: excluded
    w.clock.advance(10)
    lat = [400.0] * 100 + [3.5] * 50 + [7.0] * 45 + [45.0] * 5
    w.scrape(p, metrics_text(ok=200, latencies=lat))
    row = w.row()
    assert row["requests"] == 100
    assert row["latency_ms_p50"] == pytest.approx(4.0)  # rank 50: top of the (3, 4] bucket
    assert row["latency_ms_p95"] == pytest.approx(10.0)  # rank 95: top of (5, 10]
    assert row["latency_ms_p99"] == pytest.approx(40 + 10 * 4 / 5)  # (40, 50]: 4 of 5
    assert fmt_row(row, wide=True)[4:] == ["4ms", "10ms", "48ms", "0", "0.0B/s", "0.0B/s"]


def test_old_samples_are_pruned_keeping_a_baseline() -> None:
    w = World()
    w.stats.retention = 100.0
    p = w.pod("web-1")
    for i in range(50):
        w.clock.advance(10)
        w.scrape(p, metrics_text(ok=i))
    (hist,) = w.stats.histories()
    assert len(hist.samples) == 11
    w.store.delete([{"kind": "Pod", "metadata": {"name": "web-1"}}])
    w.clock.advance(200)
    w.stats.prune(w.clock())
    assert w.stats.histories() == []


# -- formatting ----------------------------------------------------------------------------


def test_linkerd_style_formatting() -> None:
    row = {
        "name": "web",
        "meshed": "1/1",
        "success": 0.96666,
        "rps": 2.0,
        "latency_ms_p50": 2.0,
        "latency_ms_p95": 3.2,
        "latency_ms_p99": 4.6,
        "tcp_open_connections": 1,
    }
    assert " ".join(fmt_row(row)) == "web 1/1 96.67% 2.0rps 2ms 3ms 5ms 1"
    assert fmt_latency(0.5) == "0.5ms"
    assert fmt_latency(None) == "-"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1m", 60), ("30s", 30), ("1m30s", 90), ("2h", 7200), ("90", 90), ("500ms", 0.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-1m", "1x", "m", "1m 30s", "s1"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)
