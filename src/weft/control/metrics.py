"""Metrics aggregation: scrape every proxy's ``/metrics``; golden-metric queries over a window.

:class:`Scraper` fetches ``http://<weft.io/proxy-admin>/metrics`` of every pod that has a sidecar,
every ``interval`` seconds (plain HTTP/1.1, bounded in time and size, and only to addresses in the
allowed networks: the pod range and loopback), parses the text with
``prometheus_client.parser.text_string_to_metric_families`` and keeps the *inbound* series
:class:`Stats` needs, plus the per-route series clients' proxies emit on the *outbound* side.

:class:`Stats` keeps each pod's samples (also after the pod is gone, so that a window spanning a
rollout still counts the pods that left) and computes, like ``linkerd viz stat``:

- increase of a counter over the window: the sum of its rises between consecutive samples from the
  last sample at or before the window's start; a fall is a counter reset (proxy restart) and counts
  the new value; a series that first appears inside the window (absent from that baseline sample)
  counts from zero (:func:`series_increase`); a pod first scraped inside the window counts from
  zero when it was created inside the window (its counters started there), otherwise its first
  sample is the baseline;
- SUCCESS = increase(response_total{classification="success"}) / increase(response_total);
- RPS = increase(response_total) / window;
- LATENCY_Pxx = :func:`histogram_quantile` (Prometheus' linear interpolation) over the summed
  increases of ``response_latency_ms_bucket``;
- TCP_CONN = the latest ``tcp_open_connections`` (peer ``src``) of the current pods;
- READ/WRITE bytes per second = increase(tcp_read/write_bytes_total, peer ``src``) / window.

A deploy's (or pod's) row is the inbound traffic of its pods; a svc's row that of the pods its
selector matches.

:meth:`Stats.routes` answers ``weft routes SVC``: one row per route of the service (every
HTTPRoute attached to it, ``default`` for requests no route handled, and any other route seen in
the window), from the outbound route series of every client proxy with ``dst_service`` /
``dst_namespace`` naming the service:

- EFFECTIVE (what clients saw, one per client request, retries hidden):
  ``route_response_total`` and ``route_response_latency_ms``; SUCCESS, RPS and LATENCY_Pxx as
  above;
- ACTUAL (what the servers saw, one per attempt, retries included):
  ``route_actual_response_total``.

The scraper also keeps each proxy's *outbound* series that name a destination pod
(``request_total``, and ``tcp_open_total`` / ``tcp_open_connections`` with ``peer="dst"``, which
opaque TCP has too) with their ``tls`` labels. :meth:`Stats.edges` answers ``weft edges``: one row
per (source deployment or pod, destination deployment or pod) with traffic in the window (a
counter that rose, or a connection open), SECURED when all of it was ``tls="true"`` (mutual TLS:
the client proxy presents its own certificate and checks the server's against ``server_id``),
with the reasons when not (``no_identity`` and its ``no_tls_reason``, or ``disabled``: the source
proxy has no identity), the source's own identity (CLIENT_ID) and the SERVER_ID it verified.

All computations are synchronous with an injected clock.

Not for: the proxy's own metrics registry (:mod:`weft.metrics`) nor output formatting (the CLI).
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import ipaddress
import logging
import math
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httptools
from prometheus_client.parser import text_string_to_metric_families

from weft.addr import parse_hostport
from weft.identity.names import DEFAULT_TRUST_DOMAIN, dns_identity
from weft.resources import pods as podread
from weft.resources.meta import DEFAULT_SERVICE_ACCOUNT
from weft.resources.models import selector_matches


class Listing(Protocol):
    """Where the pods, Deployments and Services come from: the local store or a cluster's
    informers."""

    def list(self, kind: str, namespace: str | None = None) -> Sequence[Mapping[str, Any]]: ...


log = logging.getLogger("weft.control.metrics")

Labels = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, Labels]

KEPT_SAMPLES = frozenset(
    {
        "request_total",
        "response_total",
        "response_latency_ms_bucket",
        "tcp_open_total",
        "tcp_close_total",
        "tcp_open_connections",
        "tcp_read_bytes_total",
        "tcp_write_bytes_total",
    }
)
# per-route series (outbound side of the clients); labels route, dst_service, dst_namespace,
# status_code, classification
ROUTE_SAMPLES = frozenset(
    {
        "route_response_total",
        "route_actual_response_total",
        "route_response_latency_ms_bucket",
    }
)
# outbound series per destination pod that edges use (``weft edges``); TCP ones with peer "dst"
EDGE_SAMPLES = frozenset({"request_total", "tcp_open_total", "tcp_open_connections"})
EDGE_KINDS = ("deploy", "pod")
DEFAULT_ROUTE = "default"
QUANTILES = (0.5, 0.95, 0.99)


# --------------------------------------------------------------------------------------------
# parsing and math


def parse_metrics(text: str, direction: str = "inbound") -> dict[SeriesKey, float]:
    """The series of ``text`` that stats use: the golden series of one traffic ``direction``,
    the route series (:data:`ROUTE_SAMPLES`, outbound or without a direction label), and the
    outbound series edges use (:func:`is_edge_sample`).

    Raises ValueError when the text is not Prometheus exposition format.
    """
    out: dict[SeriesKey, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name in ROUTE_SAMPLES:
                if labels.get("direction", "outbound") != "outbound":
                    continue
            elif is_edge_sample(sample.name, labels):
                pass
            elif sample.name not in KEPT_SAMPLES or labels.get("direction") != direction:
                continue
            key = (sample.name, tuple(sorted(labels.items())))
            out[key] = out.get(key, 0.0) + float(sample.value)
    return out


def is_edge_sample(name: str, labels: Mapping[str, str]) -> bool:
    """An outbound series to a known destination pod that edges count: ``request_total``, or a
    TCP series of the connections to the destination (``peer="dst"``, opaque TCP included)."""
    if name not in EDGE_SAMPLES or labels.get("direction") != "outbound":
        return False
    if not labels.get("dst_pod") or not labels.get("dst_namespace"):
        return False
    return name == "request_total" or labels.get("peer") == "dst"


def increase(values: Iterable[float | None], *, from_zero: bool) -> float:
    """How much a counter rose over consecutive observations (None: absent in that scrape).

    With ``from_zero`` the first observation counts whole (the counter started inside the
    window); otherwise it is the baseline. A fall is a reset: the new value counts whole.
    """
    total = 0.0
    prev: float | None = None
    first = True
    for v in values:
        if v is None:
            continue
        if prev is None:
            if not first or from_zero:
                total += v
        elif v >= prev:
            total += v - prev
        else:
            total += v
        prev = v
        first = False
    return total


def series_increase(
    samples: Sequence[Mapping[SeriesKey, float]], key: SeriesKey, *, from_zero: bool
) -> float:
    """:func:`increase` of one series over a pod's window samples (the first one being the
    baseline unless ``from_zero``). A series absent from the baseline sample appeared after it
    (Prometheus creates a labelled series at its first event), so it counts from zero."""
    values = [s.get(key) for s in samples]
    appeared = bool(values) and values[0] is None
    return increase(values, from_zero=from_zero or appeared)


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile`` over ``(upper bound, cumulative count)`` pairs.

    Linear interpolation inside the bucket holding the rank; the first bucket's lower bound is 0;
    a rank in the ``+Inf`` bucket gives the highest finite bound. None when there are no
    observations or no ``+Inf`` bucket.
    """
    pairs = sorted(buckets)
    if not pairs or not math.isinf(pairs[-1][0]):
        return None
    # cumulative counts summed from several series can be slightly non-monotonic: fix as Prometheus
    fixed: list[tuple[float, float]] = []
    running = 0.0
    for upper, count in pairs:
        running = max(running, count)
        fixed.append((upper, running))
    total = fixed[-1][1]
    if total <= 0:
        return None
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    rank = q * total
    for i, (upper, count) in enumerate(fixed):
        if count >= rank:
            if math.isinf(upper):
                return fixed[i - 1][0] if i > 0 else None
            if i == 0:
                if upper <= 0:
                    return upper
                lower, below = 0.0, 0.0
            else:
                lower, below = fixed[i - 1]
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
    return None


def _parse_time(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# samples and stats


@dataclass
class PodHistory:
    """The samples of one pod (by uid), with the metadata stats group it by."""

    uid: str
    namespace: str
    name: str
    labels: Mapping[str, str]
    deployment: str | None
    created: float | None
    service_account: str = DEFAULT_SERVICE_ACCOUNT
    # compact storage: each series gets a column once; a sample is its time and an array of
    # values by column (NaN where the series was absent from that scrape)
    columns: dict[SeriesKey, int] = field(default_factory=dict)
    samples: deque[tuple[float, array[float]]] = field(default_factory=deque)

    def add(self, at: float, values: Mapping[SeriesKey, float]) -> None:
        for key in values:
            if key not in self.columns:
                self.columns[key] = len(self.columns)
        row = array("d", [math.nan]) * len(self.columns)
        for key, value in values.items():
            row[self.columns[key]] = value
        self.samples.append((at, row))

    def _as_mapping(self, row: array[float]) -> dict[SeriesKey, float]:
        return {
            key: row[col]
            for key, col in self.columns.items()
            if col < len(row) and not math.isnan(row[col])
        }

    def window(self, start: float, end: float) -> tuple[list[dict[SeriesKey, float]], bool]:
        """The samples to compute increases over ``(start, end]`` from, and whether they count
        from zero (no baseline at or before ``start`` and the pod was created inside the window)."""
        base: array[float] | None = None
        inside: list[array[float]] = []
        for t, row in self.samples:
            if t <= start:
                base = row
            elif t <= end:
                inside.append(row)
        if base is not None:
            return [self._as_mapping(r) for r in (base, *inside)], False
        # a creation time has second precision: allow for the truncation
        new = self.created is not None and self.created >= start - 1.0
        return [self._as_mapping(r) for r in inside], new

    def latest(self, since: float) -> dict[SeriesKey, float] | None:
        if self.samples and self.samples[-1][0] >= since:
            return self._as_mapping(self.samples[-1][1])
        return None


@dataclass
class _Totals:
    responses: float = 0.0
    successes: float = 0.0
    read_bytes: float = 0.0
    write_bytes: float = 0.0
    connections: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)
    has_metrics: bool = False


def _is_src(labels: Labels) -> bool:
    peer = dict(labels).get("peer")
    return peer in (None, "src")


def _accumulate(totals: _Totals, hist: PodHistory, start: float, end: float, live: bool) -> None:
    samples, from_zero = hist.window(start, end)
    if not samples:
        return
    totals.has_metrics = True
    keys: set[SeriesKey] = set()
    for s in samples:
        keys.update(s)
    for key in keys:
        name, labels = key
        if name not in ("response_total", "response_latency_ms_bucket",
                        "tcp_read_bytes_total", "tcp_write_bytes_total"):  # fmt: skip
            continue
        inc = series_increase(samples, key, from_zero=from_zero)
        if name == "response_total":
            totals.responses += inc
            if dict(labels).get("classification") == "success":
                totals.successes += inc
        elif name == "response_latency_ms_bucket":
            le = dict(labels).get("le", "+Inf")
            try:
                upper = float(le)
            except ValueError:
                continue
            totals.buckets[upper] = totals.buckets.get(upper, 0.0) + inc
        elif _is_src(labels):
            if name == "tcp_read_bytes_total":
                totals.read_bytes += inc
            else:
                totals.write_bytes += inc
    if live:
        latest = hist.latest(start)
        if latest is not None:
            totals.connections += sum(
                v for (n, lb), v in latest.items() if n == "tcp_open_connections" and _is_src(lb)
            )


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


class Stats:
    """Per-pod sample histories and window queries (see the module docstring)."""

    def __init__(
        self,
        store: Listing,
        *,
        clock: Callable[[], float] = time.time,
        retention: float = 3900.0,
    ) -> None:
        self._store = store
        self._clock = clock
        self.retention = retention
        self._pods: dict[str, PodHistory] = {}

    def __repr__(self) -> str:
        n = sum(len(h.samples) for h in self._pods.values())
        return f"<Stats pods={len(self._pods)} samples={n}>"

    def record(self, pod: Mapping[str, Any], at: float, values: Mapping[SeriesKey, float]) -> None:
        """Add one scrape of ``pod`` (a store object) taken at ``at``."""
        meta = pod["metadata"]
        uid = str(meta.get("uid") or f"{meta.get('namespace')}/{meta['name']}")
        hist = self._pods.get(uid)
        if hist is None:
            hist = PodHistory(
                uid=uid,
                namespace=str(meta.get("namespace") or "default"),
                name=str(meta["name"]),
                labels=dict(meta.get("labels") or {}),
                deployment=podread.deployment(pod),
                created=_parse_time(meta.get("creationTimestamp")),
                service_account=_service_account(pod),
            )
            self._pods[uid] = hist
        else:
            hist.labels = dict(meta.get("labels") or {})
            hist.deployment = podread.deployment(pod)
            hist.service_account = _service_account(pod)
        hist.add(at, values)
        self.prune(at)

    def prune(self, now: float) -> None:
        """Drop samples older than the retention (keeping one baseline), and empty histories."""
        horizon = now - self.retention
        for uid in list(self._pods):
            samples = self._pods[uid].samples
            while len(samples) > 1 and samples[1][0] <= horizon:
                samples.popleft()
            if samples and samples[-1][0] <= horizon:
                del self._pods[uid]

    def histories(self) -> list[PodHistory]:
        return list(self._pods.values())

    def stat(
        self, kind: str, name: str | None, namespace: str | None, window: float
    ) -> list[dict[str, Any]]:
        """Rows for ``deploy``, ``svc`` or ``pod`` (one when ``name`` is given), sorted by
        namespace and name. Raises ValueError for another kind."""
        now = self._clock()
        start = now - window
        pods = self._store.list("Pod", namespace)
        rows: list[dict[str, Any]] = []
        if kind == "deploy":
            for d in self._store.list("Deployment", namespace):
                dns, dname = d["metadata"]["namespace"], d["metadata"]["name"]
                if name is not None and dname != name:
                    continue
                current = [p for p in pods if p["metadata"]["namespace"] == dns
                           and podread.deployment(p) == dname]  # fmt: skip
                hists = [h for h in self._pods.values()
                         if h.namespace == dns and h.deployment == dname]  # fmt: skip
                rows.append(self._row("deployment", dns, dname, current, hists, start, now, window))
        elif kind == "svc":
            for svc in self._store.list("Service", namespace):
                sns, sname = svc["metadata"]["namespace"], svc["metadata"]["name"]
                if name is not None and sname != name:
                    continue
                selector = svc["spec"].get("selector")
                current = [
                    p
                    for p in pods
                    if p["metadata"]["namespace"] == sns
                    and selector_matches(selector, p["metadata"].get("labels") or {})
                ]
                hists = [
                    h
                    for h in self._pods.values()
                    if h.namespace == sns and selector_matches(selector, h.labels)
                ]
                rows.append(self._row("service", sns, sname, current, hists, start, now, window))
        elif kind == "pod":
            for p in pods:
                pns, pname = p["metadata"]["namespace"], p["metadata"]["name"]
                if name is not None and pname != name:
                    continue
                uid = p["metadata"].get("uid")
                hists = [h for h in self._pods.values() if h.uid == uid]
                rows.append(self._row("pod", pns, pname, [p], hists, start, now, window))
        else:
            raise ValueError(f"kind must be deploy, svc or pod, got {kind!r}")
        return rows

    def routes(
        self,
        service: str,
        namespace: str,
        window: float,
        configured: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        """Route rows for ``service`` in ``namespace`` (see the module docstring): one for each
        of ``configured`` (``ns/name`` of the HTTPRoutes attached to it), for ``default``, and for
        any other route with traffic in the window; sorted by route, ``default`` last."""
        now = self._clock()
        start = now - window
        totals: dict[str, _RouteTotals] = {}
        for hist in self._pods.values():
            _accumulate_routes(totals, hist, service, namespace, start, now)
        seen = {r for r, t in totals.items() if t.responses > 0 or t.actual > 0}
        names = set(configured) | seen | {DEFAULT_ROUTE}
        order = sorted(names, key=lambda r: (r == DEFAULT_ROUTE, r))
        return [
            _route_row(namespace, service, r, totals.get(r, _RouteTotals()), window) for r in order
        ]

    def edges(
        self,
        kind: str,
        namespace: str | None,
        window: float,
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
    ) -> list[dict[str, Any]]:
        """Edge rows between deployments (``deploy``) or pods (``pod``) with traffic in the
        window (see the module docstring), from the outbound series of every source proxy; with
        ``namespace``, the edges whose source or destination is in it. Sorted by source, then
        destination. Raises ValueError for another kind."""
        if kind not in EDGE_KINDS:
            raise ValueError(f"kind must be {' or '.join(EDGE_KINDS)}, got {kind!r}")
        now = self._clock()
        start = now - window
        live = {p["metadata"].get("uid") for p in self._store.list("Pod")}
        edges: dict[tuple[str, str, str, str], _Edge] = {}
        for hist in self._pods.values():
            src = hist.deployment if kind == "deploy" else hist.name
            if src is not None:
                _accumulate_edges(edges, hist, src, kind, start, now, hist.uid in live)
        rows = []
        for key in sorted(edges):
            if namespace is None or namespace in (key[0], key[2]):
                rows.append(_edge_row(key, edges[key], trust_domain))
        return rows

    def _row(
        self,
        kind: str,
        namespace: str,
        name: str,
        current: Sequence[Mapping[str, Any]],
        hists: Sequence[PodHistory],
        start: float,
        now: float,
        window: float,
    ) -> dict[str, Any]:
        running = [p for p in current if _running(p)]
        meshed = [p for p in running if podread.proxy_admin(p)]
        live_uids = {p["metadata"].get("uid") for p in current}
        totals = _Totals()
        for h in hists:
            _accumulate(totals, h, start, now, h.uid in live_uids)
        has_traffic = totals.responses > 0
        row: dict[str, Any] = {
            "namespace": namespace,
            "kind": kind,
            "name": name,
            "meshed": f"{len(meshed)}/{len(running)}",
            "meshed_pods": len(meshed),
            "total_pods": len(running),
            "requests": round(totals.responses),
            "successes": round(totals.successes),
            "success": _round(totals.successes / totals.responses) if has_traffic else None,
            "rps": _round(totals.responses / window) if has_traffic else None,
        }
        buckets = list(totals.buckets.items())
        for q in QUANTILES:
            key = f"latency_ms_p{round(q * 100)}"
            row[key] = _round(histogram_quantile(q, buckets)) if has_traffic else None
        row["tcp_open_connections"] = round(totals.connections) if totals.has_metrics else None
        row["tcp_read_bytes_rate"] = (
            _round(totals.read_bytes / window) if totals.has_metrics else None
        )
        row["tcp_write_bytes_rate"] = (
            _round(totals.write_bytes / window) if totals.has_metrics else None
        )
        return row


@dataclass
class _RouteTotals:
    responses: float = 0.0
    successes: float = 0.0
    actual: float = 0.0
    actual_successes: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)


def _accumulate_routes(
    totals: dict[str, _RouteTotals],
    hist: PodHistory,
    service: str,
    namespace: str,
    start: float,
    end: float,
) -> None:
    """Add ``hist``'s route series for ``service`` over the window to ``totals`` by route."""
    samples, from_zero = hist.window(start, end)
    keys: set[SeriesKey] = set()
    for s in samples:
        for key in s:
            if key[0] in ROUTE_SAMPLES:
                keys.add(key)
    for key in keys:
        name, labels = key
        lab = dict(labels)
        if lab.get("dst_service") != service or lab.get("dst_namespace") != namespace:
            continue
        inc = series_increase(samples, key, from_zero=from_zero)
        t = totals.setdefault(lab.get("route") or DEFAULT_ROUTE, _RouteTotals())
        success = lab.get("classification") == "success"
        if name == "route_response_total":
            t.responses += inc
            t.successes += inc if success else 0.0
        elif name == "route_actual_response_total":
            t.actual += inc
            t.actual_successes += inc if success else 0.0
        else:
            try:
                upper = float(lab.get("le", "+Inf"))
            except ValueError:
                continue
            t.buckets[upper] = t.buckets.get(upper, 0.0) + inc


def _route_row(
    namespace: str, service: str, route: str, t: _RouteTotals, window: float
) -> dict[str, Any]:
    effective = t.responses > 0
    actual = t.actual > 0
    row: dict[str, Any] = {
        "namespace": namespace,
        "service": service,
        "route": route,
        "requests": round(t.responses),
        "successes": round(t.successes),
        "success": _round(t.successes / t.responses) if effective else None,
        "rps": _round(t.responses / window) if effective else None,
    }
    buckets = list(t.buckets.items())
    for q in QUANTILES:
        row[f"latency_ms_p{round(q * 100)}"] = (
            _round(histogram_quantile(q, buckets)) if effective else None
        )
    row["actual_requests"] = round(t.actual)
    row["actual_successes"] = round(t.actual_successes)
    row["actual_success"] = _round(t.actual_successes / t.actual) if actual else None
    row["actual_rps"] = _round(t.actual / window) if actual else None
    return row


@dataclass
class _Edge:
    """What one edge carried over the window."""

    requests: float = 0.0
    connections: float = 0.0
    open_connections: float = 0.0
    unsecured: float = 0.0
    secured: bool = True
    reasons: set[str] = field(default_factory=set)
    server_ids: set[str] = field(default_factory=set)
    # the source pods whose proxies had an identity (their series' tls is not "disabled")
    clients: set[tuple[str, str]] = field(default_factory=set)


def _tls_reason(labels: Mapping[str, str]) -> str | None:
    """Why a series' traffic is not mutual TLS (None: it is)."""
    tls = labels.get("tls")
    if tls == "true":
        return None
    if tls == "no_identity":
        return f"no_identity ({labels.get('no_tls_reason') or 'no reason given'})"
    if tls == "disabled":
        return "disabled (the source proxy has no identity)"
    return "no tls label" if tls is None else f"tls={tls}"


def _accumulate_edges(
    edges: dict[tuple[str, str, str, str], _Edge],
    hist: PodHistory,
    src: str,
    kind: str,
    start: float,
    end: float,
    live: bool,
) -> None:
    """Add ``hist``'s outbound series over the window to ``edges`` by (source, destination)."""
    samples, from_zero = hist.window(start, end)
    keys: set[SeriesKey] = set()
    for s in samples:
        for key in s:
            if key[0] in EDGE_SAMPLES:
                keys.add(key)
    latest = hist.latest(start) if live else None
    for key in keys:
        name, labels = key
        lab = dict(labels)
        dst = lab.get("dst_deployment") if kind == "deploy" else lab.get("dst_pod")
        dst_ns = lab.get("dst_namespace")
        if not dst or not dst_ns or not is_edge_sample(name, lab):
            continue
        if name == "tcp_open_connections":
            # a gauge: traffic when a connection was open at any sample of the window
            amount = 0.0
            active = any(s.get(key, 0.0) > 0 for s in samples)
        else:
            amount = series_increase(samples, key, from_zero=from_zero)
            active = amount > 0
        if not active:
            continue
        edge = edges.setdefault((hist.namespace, src, dst_ns, dst), _Edge())
        if name == "request_total":
            edge.requests += amount
        elif name == "tcp_open_total":
            edge.connections += amount
        elif latest is not None:
            edge.open_connections += latest.get(key, 0.0)
        reason = _tls_reason(lab)
        if reason is None:
            if lab.get("server_id"):
                edge.server_ids.add(lab["server_id"])
        else:
            edge.secured = False
            edge.unsecured += amount
            edge.reasons.add(reason)
        if lab.get("tls") in ("true", "no_identity"):
            edge.clients.add((hist.namespace, hist.service_account))


def _edge_row(key: tuple[str, str, str, str], edge: _Edge, trust_domain: str) -> dict[str, Any]:
    src_ns, src, dst_ns, dst = key
    client_ids: set[str] = set()
    for ns, sa in edge.clients:
        try:
            client_ids.add(dns_identity(ns, sa, trust_domain))
        except ValueError:
            continue  # not a valid identity: the proxy cannot have proven one
    return {
        "src": src,
        "src_namespace": src_ns,
        "dst": dst,
        "dst_namespace": dst_ns,
        "secured": edge.secured,
        "client_id": ",".join(sorted(client_ids)) or None,
        "server_id": ",".join(sorted(edge.server_ids)) or None,
        "requests": round(edge.requests),
        "connections": round(edge.connections),
        "open_connections": round(edge.open_connections),
        "unsecured": round(edge.unsecured),
        "reasons": sorted(edge.reasons),
    }


def _service_account(pod: Mapping[str, Any]) -> str:
    account = (pod.get("spec") or {}).get("serviceAccountName")
    return account if isinstance(account, str) and account else DEFAULT_SERVICE_ACCOUNT


def _running(pod: Mapping[str, Any]) -> bool:
    return podread.phase(pod) in ("Pending", "Running") and not podread.is_terminating(pod)


# --------------------------------------------------------------------------------------------
# scraping


@dataclass(frozen=True, slots=True)
class ScrapeConfig:
    interval: float = 2.0
    timeout: float = 1.5
    allowed_networks: tuple[str, ...] = ("10.244.0.0/16", "127.0.0.0/8")
    max_bytes: int = 8 * 1024 * 1024
    concurrency: int = 16

    def __post_init__(self) -> None:
        if not self.interval > 0:
            raise ValueError(f"scrape interval must be positive, got {self.interval!r}")
        if not self.timeout > 0:
            raise ValueError(f"scrape timeout must be positive, got {self.timeout!r}")
        for net in self.allowed_networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"allowed scrape network {net!r} is not a network") from None
        if self.concurrency < 1:
            raise ValueError(f"scrape concurrency must be >= 1, got {self.concurrency!r}")


class ScrapeError(Exception):
    pass


class _Collect:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.body: list[bytes] = []
        self.size = 0
        self.done = False

    def on_body(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise ScrapeError(f"metrics larger than {self.limit} bytes")
        self.body.append(data)

    def on_message_complete(self) -> None:
        self.done = True


async def fetch(
    host: str, port: int, path: str, time_limit: float, max_bytes: int
) -> tuple[int, bytes]:
    """``GET path`` over plain HTTP/1.1 (a pod proxy's admin port): ``(status, body)``.
    OSError, TimeoutError (after ``time_limit``) or ValueError (malformed or too large)."""

    async def go() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n".encode(
                    "latin-1"
                )
            )
            collect = _Collect(max_bytes)
            parser = httptools.HttpResponseParser(collect)
            while not collect.done:
                data = await reader.read(65536)
                try:
                    parser.feed_data(data)
                except httptools.HttpParserError as exc:
                    raise ValueError(str(exc.__context__ or exc)) from None
                if not data:
                    break
            if not collect.done:
                raise ValueError("connection closed before the end of the answer")
            return int(parser.get_status_code()), b"".join(collect.body)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.wait_for(go(), time_limit)


async def fetch_metrics(host: str, port: int, *, time_limit: float, max_bytes: int) -> str:
    """``GET /metrics`` over plain HTTP/1.1; the body text. Raises ScrapeError."""
    try:
        status, body = await fetch(host, port, "/metrics", time_limit, max_bytes)
    except TimeoutError:
        raise ScrapeError(f"no answer within {time_limit:g}s") from None
    except OSError as exc:
        raise ScrapeError(exc.strerror or str(exc)) from None
    except ValueError as exc:
        raise ScrapeError(str(exc)) from None
    if status != 200:
        raise ScrapeError(f"HTTP {status}")
    return body.decode("utf-8", errors="replace")


class Scraper:
    """Scrapes every meshed pod's metrics into :class:`Stats` (see the module docstring)."""

    def __init__(
        self,
        store: Listing,
        stats: Stats,
        config: ScrapeConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.stats = stats
        self.config = config or ScrapeConfig()
        self._clock = clock
        self._networks = [
            ipaddress.ip_network(n, strict=False) for n in self.config.allowed_networks
        ]
        self.failures: dict[str, str] = {}
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"<Scraper every {self.config.interval:g}s failing={len(self.failures)}>"

    def allowed(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self._networks)

    def targets(self) -> list[tuple[Mapping[str, Any], str, int]]:
        """``(pod, host, port)`` of every pod with a sidecar whose admin address may be scraped."""
        out: list[tuple[Mapping[str, Any], str, int]] = []
        for pod in self.store.list("Pod"):
            admin = podread.proxy_admin(pod)  # the sidecar's admin port (or the annotation)
            if admin is None or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue  # no sidecar, or a finished pod whose proxy has stopped
            ident = f"{pod['metadata'].get('namespace')}/{pod['metadata']['name']}"
            try:
                host, port = parse_hostport(admin)
            except ValueError:
                self._warn_once(ident, f"pod {ident}: invalid proxy admin address {admin!r}")
                continue
            if not self.allowed(host):
                self._warn_once(
                    ident,
                    f"pod {ident}: not scraping {admin}: outside the allowed networks "
                    f"{', '.join(self.config.allowed_networks)}",
                )
                continue
            out.append((pod, host, port))
        return out

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)

    async def scrape_once(self) -> int:
        """Scrape every target once; returns how many answered."""
        sem = asyncio.Semaphore(self.config.concurrency)
        ok = 0

        async def one(pod: Mapping[str, Any], host: str, port: int) -> None:
            nonlocal ok
            ident = f"{pod['metadata'].get('namespace')}/{pod['metadata']['name']}"
            async with sem:
                try:
                    text = await fetch_metrics(
                        host, port, time_limit=self.config.timeout, max_bytes=self.config.max_bytes
                    )
                    values = parse_metrics(text)
                except (ScrapeError, ValueError) as exc:
                    if self.failures.get(ident) is None:
                        log.debug("scrape of %s at %s:%d failed: %s", ident, host, port, exc)
                    self.failures[ident] = str(exc)
                    return
            self.failures.pop(ident, None)
            self.stats.record(pod, self._clock(), values)
            ok += 1

        await asyncio.gather(*(one(p, h, port) for p, h, port in self.targets()))
        self.stats.prune(self._clock())
        return ok

    async def run(self) -> None:
        """Scrape every ``interval`` seconds until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.scrape_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("metrics scrape failed")
            elapsed = loop.time() - started
            await asyncio.sleep(max(0.0, self.config.interval - elapsed))
