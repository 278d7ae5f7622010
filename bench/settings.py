"""Settings of one benchmark run: a frozen, validated dataclass and the three presets.

Presets: ``default`` (10 s phases, 2,000 rps fixed rate, 100 MB bodies, one million requests
through weft), ``quick`` (a smoke run of well under a minute that exercises every phase with tiny
numbers) and ``long`` (``default`` plus samples up to five million requests). Command-line flags
override single fields of a preset; :meth:`Settings.__post_init__` rejects values that make no
sense, naming the field and the value.

Cases come in three protocols (:func:`protocol_of`): HTTP/1.1 (wrk; the default run is four of
them), HTTP/2 (``*-h2``: h2load over prior-knowledge h2c) and gRPC (``*-grpc``: the grpcio
client). The HTTP/2 and gRPC cases only run when asked for, by name or by group
(:data:`CASE_GROUPS`, expanded by :func:`expand_cases`). So do the connection cases
(:data:`CONN_CASES`, group ``conn``, issue 12): HTTP/1.1 proxies loaded with connection shapes
(churn, 1,000 keep-alive connections, 10,000 idle connections) instead of the two request phases.

Not for: anything about how a case is started (that is :mod:`bench.targets`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

HTTP1_CASES = ("direct", "weft", "weft-inbound", "nginx", "envoy", "weft-mtls", "envoy-mtls")
H2_CASES = ("direct-h2", "weft-h2", "envoy-h2", "weft-h2-mtls", "envoy-h2-mtls")
GRPC_CASES = ("direct-grpc", "weft-grpc", "envoy-grpc")
# issue 12: the connection shapes (bench.conn), weft against nginx, haproxy and Envoy
CONN_CASES = ("weft-conn", "nginx-conn", "haproxy-conn", "envoy-conn")
ALL_CASES = HTTP1_CASES + H2_CASES + GRPC_CASES + CONN_CASES
DEFAULT_CASES = ("direct", "weft", "nginx", "envoy")
# pairs: client proxy -> mutual TLS -> server proxy
MESH_CASES = ("weft-mtls", "envoy-mtls", "weft-h2-mtls", "envoy-h2-mtls")
CASE_GROUPS = {
    "all": ALL_CASES,
    "h2": H2_CASES,
    "grpc": GRPC_CASES,
    "conn": CONN_CASES,
    # HTTP/1.1 or HTTP/2 between the weft proxies (docs/benchmarks.md): the pair both ways, and
    # the single proxy both ways for the estimate of HTTP/1.1 traffic carried over HTTP/2
    "mesh-protocols": ("weft", "weft-h2", "weft-mtls", "weft-h2-mtls"),
}


def protocol_of(case: str) -> str:
    """``"http1"``, ``"h2"`` or ``"grpc"``: what the case's clients speak (and its backend)."""
    if case in H2_CASES:
        return "h2"
    if case in GRPC_CASES:
        return "grpc"
    return "http1"  # the connection cases too: wrk and the idle clients speak HTTP/1.1


def is_conn_case(case: str) -> bool:
    """Whether ``case`` gets the connection shapes (:mod:`bench.conn`) instead of the request
    phases, streaming and volume."""
    return case in CONN_CASES


def expand_cases(text: str) -> tuple[str, ...]:
    """Comma-separated case names and group names (``all``, ``h2``, ...) as case names, in order,
    each once; ``""`` or ``none``: no case. Unknown names are left for :class:`Settings` to
    reject."""
    if text.strip() in ("", "none"):
        return ()
    out: list[str] = []
    for item in (x.strip() for x in text.split(",")):
        for name in CASE_GROUPS.get(item, (item,) if item else ()):
            if name not in out:
                out.append(name)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Settings:
    """What one run measures and for how long.

    ``connections``: wrk connections (one wrk thread). ``duration_s``: length in whole seconds
    (wrk's unit) of the saturation phase and of the fixed-rate phase. ``warmup_s``: unmeasured
    load before them (0: none). ``rounds``: how many times each case runs both phases, the
    cases taking turns (in a rotated order each round) so that a noisy moment on a shared
    machine lands on one round of one case and the median over rounds shrugs it off.
    ``rate``: the fixed request rate, the same for every case. ``stream_bytes``: size of the
    body sent and of the body received in the streaming phase. ``volume_milestones``:
    cumulative request counts through a case at which its memory is sampled (empty: no volume
    run); ``volume_cases``: which cases get the volume run. ``pin``: pin the servers under test
    to ``cpu_server`` and wrk, the backend and this process to ``cpu_load`` (``taskset``), so
    the proxy under load has a core to itself (the others sit idle on it).
    ``volume_timeout_s``: bound on one case's volume run.

    HTTP/2 cases: ``h2_clients`` h2load connections, each with ``h2_streams`` streams in flight
    (the fixed rate is split evenly over the connections, so it must be a multiple of
    ``h2_clients``). gRPC cases: ``grpc_concurrency`` calls in flight over ``grpc_channels``
    channels (one connection each). All cases share ``duration_s``, ``rate`` and ``rounds``.

    Connection cases (issue 12): churn is wrk with ``Connection: close`` on ``connections``
    connections, at saturation and at ``rate`` (new connections per second); then
    ``many_connections`` keep-alive connections over ``many_threads`` wrk threads at saturation;
    then ``idle_connections`` idle connections, first silent (held ``idle_hold_s``: longer than
    weft's 10 s protocol detection timeout, so it covers what happens when they all reach it),
    then each after one request (held ``idle_request_hold_s``); ``idle_settle_s`` is the wait
    after closing them before memory is read again.
    """

    preset: str = "default"
    cases: tuple[str, ...] = DEFAULT_CASES
    connections: int = 16
    duration_s: int = 10
    warmup_s: int = 2
    rounds: int = 3
    rate: int = 2000
    stream_bytes: int = 100 * 1024 * 1024
    volume_milestones: tuple[int, ...] = (1_000_000,)
    volume_cases: tuple[str, ...] = ("weft",)
    volume_timeout_s: float = 1800.0
    pin: bool = True
    cpu_load: int = 0
    cpu_server: int = 1
    ready_timeout_s: float = 30.0
    h2_clients: int = 16
    h2_streams: int = 10
    grpc_concurrency: int = 32
    grpc_channels: int = 2
    many_connections: int = 1000
    many_threads: int = 2
    idle_connections: int = 10_000
    idle_hold_s: float = 13.0
    idle_request_hold_s: float = 3.0
    idle_settle_s: float = 5.0

    def __post_init__(self) -> None:
        if self.preset not in ("default", "quick", "long"):
            raise ValueError(f"preset: unknown preset {self.preset!r}")
        if not self.cases:
            raise ValueError("cases: at least one case is needed")
        for name in (*self.cases, *self.volume_cases):
            if name not in ALL_CASES:
                raise ValueError(f"cases: unknown case {name!r} (known: {', '.join(ALL_CASES)})")
        if len(set(self.cases)) != len(self.cases):
            raise ValueError(f"cases: duplicate case in {','.join(self.cases)!r}")
        _positive("connections", self.connections)
        _positive("duration_s", self.duration_s)
        _positive("rounds", self.rounds)
        if self.warmup_s < 0:
            raise ValueError(f"warmup_s: must be >= 0, got {self.warmup_s!r}")
        _positive("rate", self.rate)
        if self.rate < self.connections:
            raise ValueError(
                f"rate: {self.rate!r} rps is below one request per second per connection "
                f"(connections={self.connections})"
            )
        _positive("h2_clients", self.h2_clients)
        _positive("h2_streams", self.h2_streams)
        if any(protocol_of(c) == "h2" for c in self.cases) and self.rate % self.h2_clients:
            raise ValueError(
                f"rate: {self.rate!r} rps does not split evenly over h2_clients="
                f"{self.h2_clients} (h2load paces each connection at rate / h2_clients)"
            )
        _positive("grpc_concurrency", self.grpc_concurrency)
        _positive("grpc_channels", self.grpc_channels)
        if self.grpc_channels > self.grpc_concurrency:
            raise ValueError(
                f"grpc_channels: {self.grpc_channels!r} channels for grpc_concurrency="
                f"{self.grpc_concurrency} calls would leave channels idle"
            )
        _positive("stream_bytes", self.stream_bytes)
        _positive("many_threads", self.many_threads)
        if self.many_connections < self.many_threads:
            raise ValueError(
                f"many_connections: {self.many_connections!r} is fewer than many_threads="
                f"{self.many_threads} (wrk needs a connection per thread)"
            )
        _positive("idle_connections", self.idle_connections)
        for name in ("idle_hold_s", "idle_request_hold_s", "idle_settle_s"):
            _positive(name, getattr(self, name))
        if list(self.volume_milestones) != sorted(set(self.volume_milestones)):
            raise ValueError(
                f"volume_milestones: must be strictly increasing, got {self.volume_milestones!r}"
            )
        for m in self.volume_milestones:
            _positive("volume_milestones", m)
        _positive("volume_timeout_s", self.volume_timeout_s)
        _positive("ready_timeout_s", self.ready_timeout_s)
        ncpu = os.cpu_count() or 1
        for name, cpu in (("cpu_load", self.cpu_load), ("cpu_server", self.cpu_server)):
            if self.pin and not 0 <= cpu < ncpu:
                raise ValueError(f"{name}: CPU {cpu!r} does not exist (this machine has {ncpu})")
        if self.pin and self.cpu_load == self.cpu_server and ncpu > 1:
            raise ValueError(
                f"cpu_server: same CPU as cpu_load ({self.cpu_server!r}); pinning would only "
                "make them compete"
            )

    @classmethod
    def for_preset(cls, preset: str) -> Settings:
        if preset == "quick":
            return cls(
                preset="quick",
                duration_s=1,
                warmup_s=1,
                rounds=1,
                stream_bytes=8 * 1024 * 1024,
                volume_milestones=(50_000,),
                volume_cases=("weft",),
                volume_timeout_s=20.0,
                ready_timeout_s=15.0,
                many_connections=200,
                idle_connections=1000,
                idle_hold_s=2.0,
                idle_request_hold_s=1.0,
                idle_settle_s=1.0,
            )
        if preset == "long":
            return cls(
                preset="long",
                volume_milestones=(1_000_000, 2_000_000, 3_000_000, 4_000_000, 5_000_000),
                volume_timeout_s=7200.0,
            )
        return cls(preset=preset)


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name}: must be > 0, got {value!r}")
