"""Per-proxy metric series and their Prometheus exposition.

Series are keyed by their label values and handed to the data path once (per connection or per
endpoint), so a request costs a few attribute increments. Idle series (no update for
``idle_expiry`` seconds, 10 min as Linkerd) are dropped at scrape time.

Families (names as Linkerd's proxy, so dashboards carry over):

- ``request_total``, ``response_total`` (``status_code``, ``classification``),
  ``response_latency_ms`` histogram (time to response headers);
- ``tcp_open_total``, ``tcp_close_total``, ``tcp_open_connections``, ``tcp_read_bytes_total``,
  ``tcp_write_bytes_total``;
- process metrics (``process_*``) from prometheus_client.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.process_collector import ProcessCollector

LATENCY_BUCKETS_MS: tuple[float, ...] = (
    1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500,
    1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000,
)  # fmt: skip

LabelItems = tuple[tuple[str, str], ...]

_bisect = bisect.bisect_left


class ResponseSeries:
    """Responses with one status code and classification: count and latency histogram."""

    __slots__ = ("buckets", "count", "sum_ms")

    def __init__(self) -> None:
        self.count = 0
        self.sum_ms = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)

    def observe(self, latency_ms: float) -> None:
        self.count += 1
        self.sum_ms += latency_ms
        self.buckets[_bisect(LATENCY_BUCKETS_MS, latency_ms)] += 1


class HttpSeries:
    """HTTP metrics for one label set (direction, authority, target labels)."""

    __slots__ = ("expired", "labels", "last_seen", "last_used", "requests", "responses")

    def __init__(self, labels: LabelItems) -> None:
        self.labels = labels
        self.expired = False
        self.last_seen = -1
        self.requests = 0
        self.responses: dict[tuple[int, bool], ResponseSeries] = {}
        self.last_used = 0.0

    def response(self, status: int, success: bool) -> ResponseSeries:
        key = (status, success)
        series = self.responses.get(key)
        if series is None:
            series = self.responses[key] = ResponseSeries()
        return series


class TcpSeries:
    """Connection and byte counts for one label set (direction, peer, target labels)."""

    __slots__ = (
        "closes", "expired", "labels", "last_seen", "last_used", "open", "opens", "read_bytes",
        "write_bytes",
    )  # fmt: skip

    def __init__(self, labels: LabelItems) -> None:
        self.labels = labels
        self.expired = False
        self.last_seen = -1
        self.opens = 0
        self.closes = 0
        self.open = 0
        self.read_bytes = 0
        self.write_bytes = 0
        self.last_used = 0.0

    def opened(self) -> None:
        self.opens += 1
        self.open += 1

    def closed(self, read: int, written: int) -> None:
        self.closes += 1
        self.open -= 1
        self.read_bytes += read
        self.write_bytes += written


class ProxyMetrics:
    """All series of one proxy, plus a registry for exposition.

    ``registry`` is created fresh per instance (tests make their own proxies and assert on
    sample values); pass ``process=False`` to leave out process metrics.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        idle_expiry: float = 600.0,
        process: bool = True,
    ) -> None:
        self._clock = clock
        self.idle_expiry = idle_expiry
        self._http: dict[LabelItems, HttpSeries] = {}
        self._tcp: dict[LabelItems, TcpSeries] = {}
        self.extra: list[Callable[[], Iterable[Metric]]] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        if process:
            ProcessCollector(registry=self.registry)

    def http(self, labels: LabelItems) -> HttpSeries:
        """The HTTP series for ``labels`` (created on first use)."""
        series = self._http.get(labels)
        if series is None:
            series = self._http[labels] = HttpSeries(labels)
            series.last_used = self._clock()
        return series

    def tcp(self, labels: LabelItems) -> TcpSeries:
        """The TCP series for ``labels`` (created on first use)."""
        series = self._tcp.get(labels)
        if series is None:
            series = self._tcp[labels] = TcpSeries(labels)
            series.last_used = self._clock()
        return series

    def expose(self) -> bytes:
        """The Prometheus text exposition of every live series."""
        self._expire()
        return bytes(generate_latest(self.registry))

    def _expire(self) -> None:
        """Drop series with no activity for ``idle_expiry`` seconds.

        The data path holds series objects and bumps plain counters without touching clocks, so
        activity is detected here, at scrape time, by comparing counts with the last scrape.
        A dropped series is marked ``expired`` so that holders fetch a fresh one.
        """
        now = self._clock()
        deadline = now - self.idle_expiry
        for table in (self._http, self._tcp):
            stale = []
            for key, series in table.items():
                seen = _activity(series)
                if seen != series.last_seen or getattr(series, "open", 0) > 0:
                    series.last_seen = seen
                    series.last_used = now
                elif series.last_used < deadline:
                    stale.append(key)
            for key in stale:
                table.pop(key).expired = True

    def collect(self) -> Iterator[Metric]:
        yield from self._collect_http()
        yield from self._collect_tcp()
        for extra in self.extra:
            yield from extra()

    def _collect_http(self) -> Iterator[Metric]:
        if not self._http:
            return
        req = Metric("request", "Total HTTP requests", "counter")
        rsp = Metric("response", "Total HTTP responses", "counter")
        lat = Metric(
            "response_latency_ms",
            "Elapsed times between a request's headers being received and its response's "
            "headers being sent, in milliseconds",
            "histogram",
        )
        for s in list(self._http.values()):
            labels = dict(s.labels)
            req.add_sample("request_total", labels, s.requests)
            by_status: dict[int, list[ResponseSeries]] = {}
            for (status, success), r in s.responses.items():
                cls = "success" if success else "failure"
                rsp.add_sample(
                    "response_total",
                    {**labels, "status_code": str(status), "classification": cls},
                    r.count,
                )
                by_status.setdefault(status, []).append(r)
            for status, parts in by_status.items():
                slabels = {**labels, "status_code": str(status)}
                running = 0
                for i, bound in enumerate(_BOUNDS_TEXT):
                    running += sum(p.buckets[i] for p in parts)
                    lat.add_sample("response_latency_ms_bucket", {**slabels, "le": bound}, running)
                lat.add_sample("response_latency_ms_count", slabels, running)
                lat.add_sample("response_latency_ms_sum", slabels, sum(p.sum_ms for p in parts))
        yield req
        yield rsp
        yield lat

    def _collect_tcp(self) -> Iterator[Metric]:
        if not self._tcp:
            return
        fams = (
            ("opens", Metric("tcp_open", "Total TCP connections opened", "counter"), "_total"),
            ("closes", Metric("tcp_close", "Total TCP connections closed", "counter"), "_total"),
            ("open", Metric("tcp_open_connections", "TCP connections open", "gauge"), ""),
            ("read_bytes", Metric("tcp_read_bytes", "Bytes read from peers", "counter"), "_total"),
            (
                "write_bytes",
                Metric("tcp_write_bytes", "Bytes written to peers", "counter"),
                "_total",
            ),
        )
        for s in list(self._tcp.values()):
            labels = dict(s.labels)
            for attr, fam, suffix in fams:
                fam.add_sample(fam.name + suffix, labels, getattr(s, attr))
        for _, fam, _ in fams:
            yield fam


def _activity(series: HttpSeries | TcpSeries) -> int:
    if isinstance(series, HttpSeries):
        return series.requests + sum(r.count for r in series.responses.values())
    return series.opens + series.closes


def _fmt_bound(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


_BOUNDS_TEXT: tuple[str, ...] = (*(_fmt_bound(b) for b in LATENCY_BUCKETS_MS), "+Inf")


class _Collector:
    def __init__(self, metrics: ProxyMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.collect()
