"""The results of a run as plain frozen data, with the JSON form written to ``bench/results``.

One :class:`CaseResult` per case: its load phases (:class:`Phase`: what the load generator -- wrk,
h2load or the gRPC client -- saw, the CPU the measured processes spent and the CPU the generator
itself used, and for a meshed pair the connections between its proxies; each phase is run once
per round, and :class:`PhaseSummary` takes the median over the rounds), its memory after them,
its volume samples (:class:`VolumeSample`) and its streaming transfers (:class:`Transfer`).
:func:`from_json` reads a results file back, so a table can be rendered again from an earlier
run (``python -m bench.run --report FILE``).

Units: latencies in microseconds, CPU in seconds (and microseconds per request), memory in KiB as
``/proc`` reports it; :func:`mb` converts KiB to decimal megabytes for display and targets.

Connection cases (issue 12) add :class:`IdleRun` (the idle-connection shapes) to their phases;
a phase's :class:`LoadRun` may count the requests slower than 1 s.

Not for: measuring (that is :mod:`bench.load`, :mod:`bench.stream`, :mod:`bench.procfs`).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


def mb(kib: int) -> float:
    """KiB (as in ``/proc``) to decimal megabytes (10^6 bytes), the unit of the targets."""
    return kib * 1024 / 1e6


@dataclass(frozen=True, slots=True)
class Latency:
    """Latency percentiles of one load run, in microseconds."""

    p50: int
    p90: int
    p99: int
    p999: int
    max: int
    mean: float

    @classmethod
    def of(cls, values_us: Sequence[int]) -> Latency:
        """Percentiles of individual latencies (nearest rank: the smallest value that at least
        p% of them do not exceed); all zero when there are none."""
        if not values_us:
            return cls(0, 0, 0, 0, 0, 0.0)
        ordered = sorted(values_us)
        n = len(ordered)

        def rank(per_mille: int) -> int:  # integers: 99.9% of 1,000 is the 999th, exactly
            return ordered[max(0, -(-per_mille * n // 1000) - 1)]

        return cls(
            p50=rank(500),
            p90=rank(900),
            p99=rank(990),
            p999=rank(999),
            max=ordered[-1],
            mean=round(sum(ordered) / n, 1),
        )


@dataclass(frozen=True, slots=True)
class LoadRun:
    """What the load generator reported: completed requests, time, latency, errors (by kind) and,
    at a fixed rate, the sends that left late (each generator's definition: docs/benchmarks.md).
    """

    requests: int
    duration_s: float
    bytes: int
    latency: Latency
    errors: dict[str, int]
    late: int
    over_1s: int | None = None  # completed requests slower than 1 s (wrk; None: not counted)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass(frozen=True, slots=True)
class Phase:
    """One measured load phase: the load generator's view plus the CPU the measured process trees
    spent in it; for a meshed pair also the most TCP connections seen open between its proxies.
    """

    name: str
    round: int
    target_rps: int | None
    load: LoadRun
    cpu_user_s: float
    cpu_system_s: float
    pair_connections: int | None = None
    load_cpu_s: float | None = None  # CPU the load generator used (None in older results)

    @property
    def cpu_us_per_request(self) -> float | None:
        if self.load.requests == 0:
            return None
        return (self.cpu_user_s + self.cpu_system_s) * 1e6 / self.load.requests

    @property
    def load_busy(self) -> float | None:
        """The load generator's CPU time over the phase's duration (1.0: one CPU all along)."""
        if self.load_cpu_s is None or self.load.duration_s <= 0:
            return None
        return self.load_cpu_s / self.load.duration_s


@dataclass(frozen=True, slots=True)
class PhaseSummary:
    """One phase over all rounds: medians, the spread of CPU per request, totals of trouble."""

    rounds: int
    rps: float
    p50_us: float
    p99_us: float
    cpu_us_per_request: float | None
    cpu_min: float | None
    cpu_max: float | None
    errors: int
    late: int
    pair_connections: int | None = None  # the most over the rounds (meshed pairs only)
    load_busy: float | None = None  # median over the rounds

    @classmethod
    def of(cls, phases: list[Phase]) -> PhaseSummary | None:
        if not phases:
            return None
        cpus = [c for p in phases if (c := p.cpu_us_per_request) is not None]
        conns = [p.pair_connections for p in phases if p.pair_connections is not None]
        busy = [b for p in phases if (b := p.load_busy) is not None]
        return cls(
            rounds=len(phases),
            rps=statistics.median(p.load.rps for p in phases),
            p50_us=statistics.median(p.load.latency.p50 for p in phases),
            p99_us=statistics.median(p.load.latency.p99 for p in phases),
            cpu_us_per_request=statistics.median(cpus) if cpus else None,
            cpu_min=min(cpus) if cpus else None,
            cpu_max=max(cpus) if cpus else None,
            errors=sum(p.load.error_count for p in phases),
            late=sum(p.load.late for p in phases),
            pair_connections=max(conns) if conns else None,
            load_busy=statistics.median(busy) if busy else None,
        )


@dataclass(frozen=True, slots=True)
class VolumeSample:
    """Memory of the measured process after ``requests`` requests in total had gone through it."""

    requests: int
    rss_kib: int
    hwm_kib: int
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class Transfer:
    """One large-body transfer and the measured process's resident memory around it."""

    direction: str  # "upload" (request body) or "download" (response body)
    bytes_expected: int
    bytes_done: int
    status: int | None
    seconds: float
    rss_before_kib: int
    rss_peak_kib: int
    samples: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200 and self.bytes_done == self.bytes_expected

    @property
    def growth_kib(self) -> int:
        return max(0, self.rss_peak_kib - self.rss_before_kib)


@dataclass(frozen=True, slots=True)
class IdleRun:
    """One idle-connection shape of one round (:mod:`bench.idle`): many connections held open to
    the case, its memory before, while open and after they closed, and what else happened.

    ``shape``: ``idle-silent`` (connections that never send a byte) or ``idle-request`` (one
    complete request each, answered, then idle keep-alive). ``rss_open_kib`` is read once every
    connection is open (plus a second), ``rss_peak_kib`` the most seen while they were held,
    ``rss_after_kib`` after they were closed and ``settle_s`` passed. ``probe_latencies_us``: the
    normal requests sent (on a fresh connection each) while they were held, ``probe_failures``
    those that got no ``200 ok``. ``backend_accepts``: connections the backend accepted during
    the shape (the proxy's upstream dials; None if unknown), ``backend_most``: the most
    established connections to the backend seen while held. ``closed_by_server``: idle
    connections the case closed before the client did.
    """

    shape: str
    round: int
    asked: int
    opened: int
    failed: int
    open_s: float
    hold_s: float
    settle_s: float
    rss_before_kib: int
    rss_open_kib: int
    rss_peak_kib: int
    rss_after_kib: int
    probe_latencies_us: tuple[int, ...]
    probe_failures: int
    closed_by_server: int
    backend_accepts: int | None
    backend_most: int | None
    error: str | None = None

    @property
    def bytes_per_connection(self) -> float | None:
        """RSS growth per open connection (bytes), from the reading once all were open."""
        if self.opened == 0:
            return None
        return (self.rss_open_kib - self.rss_before_kib) * 1024 / self.opened

    @property
    def returned(self) -> bool:
        """Whether RSS came back within 10% of its value before the connections were opened."""
        return self.rss_after_kib <= self.rss_before_kib * 1.1


@dataclass(frozen=True, slots=True)
class CaseResult:
    """Everything measured for one case; ``status`` is ``ok``, ``skipped`` or ``failed``."""

    name: str
    status: str
    reason: str | None = None
    measured: str | None = None  # which process was measured, e.g. "envoy pid 1234"
    phases: tuple[Phase, ...] = ()
    rss_start_kib: int | None = None  # just after it became ready, before any load
    rss_kib: int | None = None
    hwm_kib: int | None = None
    volume: tuple[VolumeSample, ...] = ()
    volume_error: str | None = None
    transfers: tuple[Transfer, ...] = ()
    config: str | None = None
    idle: tuple[IdleRun, ...] = ()

    def summary(self, phase: str) -> PhaseSummary | None:
        """Medians of ``phase`` ("saturation" or "fixed") over the rounds."""
        return PhaseSummary.of([p for p in self.phases if p.name == phase])

    def transfer(self, direction: str) -> Transfer | None:
        return next((t for t in self.transfers if t.direction == direction), None)

    def volume_at(self, requests: int) -> VolumeSample | None:
        """The first sample taken once ``requests`` requests had gone through."""
        return next((v for v in self.volume if v.requests >= requests), None)


@dataclass(frozen=True, slots=True)
class RunResult:
    """A whole run: when, how, on what, and the cases."""

    started: str
    command: list[str]
    settings: dict[str, Any]
    machine: dict[str, Any]
    cases: tuple[CaseResult, ...]
    seconds: float
    notes: tuple[str, ...] = field(default=())

    def case(self, name: str) -> CaseResult | None:
        return next((c for c in self.cases if c.name == name and c.status == "ok"), None)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for case, data in zip(self.cases, out["cases"], strict=True):
            for phase, pdata in zip(case.phases, data["phases"], strict=True):
                pdata["rps"] = phase.load.rps
                pdata["cpu_us_per_request"] = phase.cpu_us_per_request
            for name in ("saturation", "fixed"):
                s = case.summary(name)
                data.setdefault("summary", {})[name] = None if s is None else asdict(s)
            for tr, tdata in zip(case.transfers, data["transfers"], strict=True):
                tdata["ok"] = tr.ok
                tdata["growth_kib"] = tr.growth_kib
            for idle, idata in zip(case.idle, data["idle"], strict=True):
                idata["bytes_per_connection"] = idle.bytes_per_connection
                idata["returned"] = idle.returned
        return out


def _load_run(data: dict[str, Any]) -> LoadRun:
    return LoadRun(
        requests=data["requests"],
        duration_s=data["duration_s"],
        bytes=data["bytes"],
        latency=Latency(**data["latency"]),
        errors=dict(data["errors"]),
        late=data["late"],
        over_1s=data.get("over_1s"),
    )


def _idle_run(data: dict[str, Any]) -> IdleRun:
    fields = {k: v for k, v in data.items() if k not in ("bytes_per_connection", "returned")}
    fields["probe_latencies_us"] = tuple(fields["probe_latencies_us"])
    return IdleRun(**fields)


def from_json(data: dict[str, Any]) -> RunResult:
    """Read back what :meth:`RunResult.to_json` wrote (derived fields are recomputed).

    Files written before the HTTP/2 cases name a phase's load run ``wrk``; they read the same.
    """
    cases = []
    for c in data["cases"]:
        phases = tuple(
            Phase(
                name=p["name"],
                round=p["round"],
                target_rps=p["target_rps"],
                load=_load_run(p["load"] if "load" in p else p["wrk"]),
                cpu_user_s=p["cpu_user_s"],
                cpu_system_s=p["cpu_system_s"],
                pair_connections=p.get("pair_connections"),
                load_cpu_s=p.get("load_cpu_s"),
            )
            for p in c["phases"]
        )
        transfers = tuple(
            Transfer(**{k: v for k, v in t.items() if k not in ("ok", "growth_kib")})
            for t in c["transfers"]
        )
        cases.append(
            CaseResult(
                name=c["name"],
                status=c["status"],
                reason=c["reason"],
                measured=c["measured"],
                phases=phases,
                rss_start_kib=c.get("rss_start_kib"),
                rss_kib=c["rss_kib"],
                hwm_kib=c["hwm_kib"],
                volume=tuple(VolumeSample(**v) for v in c["volume"]),
                volume_error=c["volume_error"],
                transfers=transfers,
                config=c["config"],
                idle=tuple(_idle_run(i) for i in c.get("idle", ())),
            )
        )
    return RunResult(
        started=data["started"],
        command=list(data["command"]),
        settings=dict(data["settings"]),
        machine=dict(data["machine"]),
        cases=tuple(cases),
        seconds=data["seconds"],
        notes=tuple(data.get("notes", ())),
    )
