"""Per-proxy metric series and their Prometheus exposition.

Series are keyed by their label values and handed to the data path once (per connection or per
endpoint), so a request costs a few attribute increments. Idle series (no update for
``idle_expiry`` seconds, 10 min as Linkerd) are dropped at scrape time.

Families (names as Linkerd's proxy, so dashboards carry over):

- ``request_total``, ``response_total`` (``status_code``, ``classification``),
  ``response_latency_ms`` histogram (time to response headers);
- ``tcp_open_total``, ``tcp_close_total``, ``tcp_open_connections``, ``tcp_read_bytes_total``,
  ``tcp_write_bytes_total``;
- process metrics (``process_cpu_seconds_total``, ``process_resident_memory_bytes``, ...).

The text exposition is rendered here rather than through ``prometheus_client``: importing that
library costs the proxy 5.4 MB of RSS (measured: ``import prometheus_client`` on this machine),
a fifth of the sidecar's 30 MB budget, to format a few lines of text. Tests parse the output with
``prometheus_client.parser`` to hold it to the format.
"""

from __future__ import annotations

import bisect
import os
import time
from collections.abc import Callable, Iterable

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
        # (HTTP status, success, gRPC status or None) -> counts and latency
        self.responses: dict[tuple[int, bool, int | None], ResponseSeries] = {}
        self.last_used = 0.0

    def response(self, status: int, success: bool, grpc: int | None = None) -> ResponseSeries:
        key = (status, success, grpc)
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

    def closed(self) -> None:
        # bytes are counted live by the data path (read_bytes/write_bytes), not at close, so a
        # long-lived keep-alive connection shows its traffic while it lasts
        self.closes += 1
        self.open -= 1


class ProxyMetrics:
    """All series of one proxy and their text exposition.

    Created fresh per proxy (tests make their own and assert on sample values); pass
    ``process=False`` to leave out process metrics. ``extra`` holds callables returning more
    exposition text (identity metrics and the like).
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
        self.process = process
        self._http: dict[LabelItems, HttpSeries] = {}
        self._tcp: dict[LabelItems, TcpSeries] = {}
        # per route: what the client saw (one per request, retries hidden) and what was sent
        # (one per attempt): Linkerd's route_* and route_actual_* families
        self._route: dict[LabelItems, HttpSeries] = {}
        self._route_actual: dict[LabelItems, HttpSeries] = {}
        self.extra: list[Callable[[], str]] = []

    def http(self, labels: LabelItems) -> HttpSeries:
        """The HTTP series for ``labels`` (created on first use)."""
        series = self._http.get(labels)
        if series is None:
            series = self._http[labels] = HttpSeries(labels)
            series.last_used = self._clock()
        return series

    def route(self, labels: LabelItems) -> HttpSeries:
        """The effective (client-visible) series of a route (created on first use)."""
        return self._get(self._route, labels)

    def route_actual(self, labels: LabelItems) -> HttpSeries:
        """The actual (per attempt) series of a route (created on first use)."""
        return self._get(self._route_actual, labels)

    def _get(self, table: dict[LabelItems, HttpSeries], labels: LabelItems) -> HttpSeries:
        series = table.get(labels)
        if series is None:
            series = table[labels] = HttpSeries(labels)
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
        """The Prometheus text exposition (format 0.0.4) of every live series."""
        self._expire()
        out: list[str] = []
        self._render_http(out, self._http, "")
        self._render_http(out, self._route, "route_")
        self._render_http(out, self._route_actual, "route_actual_", latency=False)
        self._render_tcp(out)
        if self.process:
            _render_process(out)
        text = "".join(out)
        for extra in self.extra:
            text += extra()
        return text.encode()

    def _expire(self) -> None:
        """Drop series with no activity for ``idle_expiry`` seconds.

        The data path holds series objects and bumps plain counters without touching clocks, so
        activity is detected here, at scrape time, by comparing counts with the last scrape.
        A dropped series is marked ``expired`` so that holders fetch a fresh one.
        """
        now = self._clock()
        deadline = now - self.idle_expiry
        for table in (self._http, self._tcp, self._route, self._route_actual):
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

    def _render_http(
        self,
        out: list[str],
        table: dict[LabelItems, HttpSeries],
        prefix: str,
        *,
        latency: bool = True,
    ) -> None:
        if not table:
            return
        req_name, rsp_name, lat_name = (
            f"{prefix}request_total",
            f"{prefix}response_total",
            f"{prefix}response_latency_ms",
        )
        req = [f"# HELP {req_name} Total HTTP requests\n# TYPE {req_name} counter\n"]
        rsp = [f"# HELP {rsp_name} Total HTTP responses\n# TYPE {rsp_name} counter\n"]
        lat = [
            f"# HELP {lat_name} Elapsed times between a request's headers being received "
            "and its response's headers being sent, in milliseconds\n"
            f"# TYPE {lat_name} histogram\n"
        ]
        for s in list(table.values()):
            base = _labels(s.labels)
            req.append(f"{req_name}{{{base}}} {s.requests}\n")
            by_status: dict[int, list[ResponseSeries]] = {}
            for (status, success, grpc), r in s.responses.items():
                cls = "success" if success else "failure"
                extra = "" if grpc is None else f',grpc_status_code="{grpc}"'
                rsp.append(
                    f'{rsp_name}{{{base},status_code="{status}",classification="{cls}"{extra}}} '
                    f"{r.count}\n"
                )
                by_status.setdefault(status, []).append(r)
            if not latency:
                continue
            for status, parts in by_status.items():
                sl = f'{base},status_code="{status}"'
                running = 0
                for i, bound in enumerate(_BOUNDS_TEXT):
                    running += sum(p.buckets[i] for p in parts)
                    lat.append(f'{lat_name}_bucket{{{sl},le="{bound}"}} {running}\n')
                lat.append(f"{lat_name}_count{{{sl}}} {running}\n")
                total_ms = sum(p.sum_ms for p in parts)
                lat.append(f"{lat_name}_sum{{{sl}}} {total_ms!r}\n")
        out.extend(req)
        out.extend(rsp)
        if latency:
            out.extend(lat)

    def _render_tcp(self, out: list[str]) -> None:
        if not self._tcp:
            return
        fams = (
            ("opens", "tcp_open_total", "counter", "Total TCP connections opened"),
            ("closes", "tcp_close_total", "counter", "Total TCP connections closed"),
            ("open", "tcp_open_connections", "gauge", "TCP connections currently open"),
            ("read_bytes", "tcp_read_bytes_total", "counter", "Total bytes read from peers"),
            ("write_bytes", "tcp_write_bytes_total", "counter", "Total bytes written to peers"),
        )
        series = [(s, _labels(s.labels)) for s in list(self._tcp.values())]
        for attr, name, kind, doc in fams:
            out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
            for s, base in series:
                out.append(f"{name}{{{base}}} {getattr(s, attr)}\n")


def _escape(value: str) -> str:
    # the text format's three escapes in a label value; the backslash first, so that the ones
    # added for quotes and newlines are not doubled
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(doc: str) -> str:
    # HELP text escapes backslash and newline only (quotes stay as they are)
    return doc.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(items: LabelItems) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in items)


def render_family(
    name: str, kind: str, doc: str, samples: Iterable[tuple[LabelItems, float | int]]
) -> str:
    """One metric family in the text format (HELP, TYPE, one line per sample): for the series
    other components add through :attr:`ProxyMetrics.extra`, so they need not format it.

    ``kind`` is ``counter`` or ``gauge`` (histograms are rendered by :class:`ProxyMetrics`);
    label values are escaped here; an int value is written as is, a float with three decimals
    (pass ``round(x)`` for whole seconds), a bool as 0 or 1. Not for hot paths: it formats at
    scrape time only.
    """
    out = [f"# HELP {name} {_escape_help(doc)}\n# TYPE {name} {kind}\n"]
    for labels, value in samples:
        # int(): a bool (an int to the type checker) would print "True", which no parser takes
        text = f"{value:.3f}" if isinstance(value, float) else str(int(value))
        out.append(f"{name}{{{_labels(labels)}}} {text}\n" if labels else f"{name} {text}\n")
    return "".join(out)


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _render_process(out: list[str]) -> None:
    """Standard process metrics from /proc/self (Linux); nothing elsewhere."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open("/proc/stat", "rb") as f:
            btime = next(float(line.split()[1]) for line in f if line.startswith(b"btime"))
        fds = len(os.listdir("/proc/self/fd"))
    except (OSError, StopIteration, IndexError, ValueError):
        return
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS
    start = btime + int(fields[19]) / _TICKS
    rss = int(fields[21]) * _PAGE
    vsz = int(fields[20])
    for name, kind, doc, value in (
        ("process_cpu_seconds_total", "counter", "Total user and system CPU time", cpu),
        ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes", rss),
        ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes", vsz),
        ("process_start_time_seconds", "gauge", "Start time since the epoch", start),
        ("process_open_fds", "gauge", "Number of open file descriptors", fds),
    ):
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n{name} {value!r}\n")


def _activity(series: HttpSeries | TcpSeries) -> int:
    if isinstance(series, HttpSeries):
        return series.requests + sum(r.count for r in series.responses.values())
    return series.opens + series.closes


def _fmt_bound(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


_BOUNDS_TEXT: tuple[str, ...] = (*(_fmt_bound(b) for b in LATENCY_BUCKETS_MS), "+Inf")
