"""The connection shapes of issue 12, run against one case per round: what a proxy pays per
connection rather than per request.

Each round of a connection case (:data:`bench.settings.CONN_CASES`) runs, in order:

- ``churn``: wrk with ``Connection: close`` (a new connection for every request) on
  ``connections`` connections at saturation, and ``churn-fixed``: the same at ``rate`` new
  connections per second (the pacing script). CPU per request of these phases is CPU per
  connection.
- ``many``: ``many_connections`` keep-alive connections over ``many_threads`` wrk threads at
  saturation, with a 10 s wrk timeout so that slow answers are measured rather than dropped; wrk
  counts the answers slower than 1 s (``templates/report.lua``).
- ``idle-silent`` and ``idle-request`` (:func:`idle_shape`): ``idle_connections`` connections
  held open (:class:`bench.idle.IdleClients`), silent or after one request each; the case's
  RSS before, once open, at its peak while held and after they closed and ``idle_settle_s``
  passed; a normal request every 0.5 s while they are held (its latency, or a failure); the
  connections the backend accepted meanwhile (nginx's ``stub_status``: the upstream dials of the
  case) and the most established to it. The silent shape is held ``idle_hold_s`` (13 s), past
  weft's 10 s protocol detection timeout, so that every connection reaches it together.

:func:`raise_limits` lifts this process's ``RLIMIT_NOFILE`` (inherited by every server and
load generator it starts) to what the shapes need and checks ``net.core.somaxconn``;
:func:`parse_stub_status` reads nginx's counters (pure).

Not for: the request phases of the other cases (:mod:`bench.load`), or reporting
(:mod:`bench.connreport`).
"""

from __future__ import annotations

import http.client
import resource
import time
from collections.abc import Callable
from pathlib import Path

from bench import procfs
from bench.idle import IdleClients
from bench.load import Wrk, measured_phase
from bench.model import IdleRun, Phase
from bench.processes import LOOPBACK, http_get
from bench.settings import Settings
from bench.targets import Target

CHURN_HEADER = "Connection: close"
MANY_TIMEOUT_S = 10
OPEN_TIMEOUT_S = 60.0
PROBE_INTERVAL_S = 0.5
PROBE_TIMEOUT_S = 5.0
STATUS_PATH = "/_bench_status"  # stub_status on the backend (templates/backend-nginx.conf)
SHAPES = ("idle-silent", "idle-request")
SOMAXCONN = Path("/proc/sys/net/core/somaxconn")


def raise_limits(s: Settings) -> list[str]:
    """Raise ``RLIMIT_NOFILE`` for the connection cases; return notes for the results.

    The idle connections take a descriptor each in this process, and in the case as many again
    plus its upstream connections; nginx and haproxy inherit the limit (their connection limits
    are set to fit, see :func:`bench.targets.worker_connections`). Raising the hard limit needs
    root (``CAP_SYS_RESOURCE``); without it the soft limit goes up to the hard one and a note
    says so. ``somaxconn`` caps every listener's accept queue: it is read, not changed (it is
    the whole network namespace's), and a note says when it is below the many-connections
    shape.
    """
    need = max(65536, 2 * s.idle_connections + s.many_connections + 4096)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    notes = []
    if soft < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            notes.append(
                f"RLIMIT_NOFILE could only be raised to the hard limit {hard} (wanted {need}): "
                "the idle-connection shapes may fail to open every connection"
            )
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        somaxconn = int(SOMAXCONN.read_text())
    except (OSError, ValueError):
        somaxconn = -1
    notes.append(f"connection cases: open files limit {soft}, net.core.somaxconn {somaxconn}")
    if 0 <= somaxconn < s.many_connections:
        notes.append(
            f"net.core.somaxconn {somaxconn} is below the {s.many_connections} connections "
            "wrk opens at once: accept queues may overflow (raise it to compare fairly)"
        )
    return notes


def parse_stub_status(text: str) -> int:
    """The ``accepts`` counter of an nginx ``stub_status`` page."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("server accepts") and i + 1 < len(lines):
            return int(lines[i + 1].split()[0])
    raise ValueError(f"no accepts counter in stub_status: {text[:200]!r}")


def backend_accepts(port: int) -> int | None:
    """Connections the backend nginx has accepted so far (its own status request included)."""
    try:
        status, body = http_get(port, STATUS_PATH)
        return parse_stub_status(body.decode()) if status == 200 else None
    except (OSError, http.client.HTTPException, ValueError):
        return None


def load_phases(
    rnd: int, target: Target, s: Settings, workdir: Path, cpu: int | None
) -> list[tuple[str, Callable[[], Phase]]]:
    """The wrk phases of a round, each as (name, run it), in order."""
    churn = Wrk(target.port, workdir, s.connections, cpu=cpu, headers=(CHURN_HEADER,))
    many = Wrk(
        target.port,
        workdir,
        s.many_connections,
        cpu=cpu,
        threads=s.many_threads,
        timeout_s=MANY_TIMEOUT_S,
    )

    def phase(name: str, load: Wrk, rate: int | None) -> Callable[[], Phase]:
        return lambda: measured_phase(
            name, rnd, target.pids, load, duration_s=s.duration_s, rate=rate
        )

    return [
        ("churn", phase("churn", churn, None)),
        ("churn-fixed", phase("churn-fixed", churn, s.rate)),
        ("many", phase("many", many, None)),
    ]


def _probe(port: int) -> int | None:
    """One ``GET /`` on a fresh connection: its latency in microseconds, None if it failed."""
    start = time.monotonic()
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=PROBE_TIMEOUT_S)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        ok = resp.status == 200 and resp.read() == b"ok"
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    return round((time.monotonic() - start) * 1e6) if ok else None


def idle_shape(shape: str, rnd: int, target: Target, backend_port: int, s: Settings) -> IdleRun:
    """Hold ``idle_connections`` idle connections to the case and watch it (module docstring)."""
    request = shape == "idle-request"
    hold = s.idle_hold_s if not request else s.idle_request_hold_s

    def rss() -> int:
        return procfs.memory(target.pids).rss_kib

    time.sleep(1.0)  # the previous phase's connections close
    before = rss()
    accepts_before = backend_accepts(backend_port)
    clients = IdleClients(target.port, s.idle_connections, request=request)
    latencies: list[int] = []
    probe_failures = 0
    most = 0
    try:
        open_s = clients.open(OPEN_TIMEOUT_S)
        clients.wait(1.0)
        rss_open = peak = rss()
        hold_end = time.monotonic() + hold
        while (now := time.monotonic()) < hold_end:
            latency = _probe(target.port)
            if latency is None:
                probe_failures += 1
            else:
                latencies.append(latency)
            peak = max(peak, rss())
            table = (Path("/proc/net/tcp")).read_text()
            most = max(most, procfs.established_to(table, backend_port))
            clients.wait(max(0.0, min(now + PROBE_INTERVAL_S, hold_end) - time.monotonic()))
    finally:
        clients.close()
    accepts_after = backend_accepts(backend_port)
    time.sleep(s.idle_settle_s)
    after = rss()
    error = None
    if clients.errors:
        error = ", ".join(f"{why} {n}" for why, n in sorted(clients.errors.items()))
    accepts = (
        None
        if accepts_before is None or accepts_after is None
        else accepts_after - accepts_before - 1  # less the second status request's own
    )
    return IdleRun(
        shape=shape,
        round=rnd,
        asked=s.idle_connections,
        opened=clients.opened,
        failed=clients.failed,
        open_s=round(open_s, 2),
        hold_s=hold,
        settle_s=s.idle_settle_s,
        rss_before_kib=before,
        rss_open_kib=rss_open,
        rss_peak_kib=peak,
        rss_after_kib=after,
        probe_latencies_us=tuple(latencies),
        probe_failures=probe_failures,
        closed_by_server=clients.closed_by_server,
        backend_accepts=accepts,
        backend_most=most,
        error=error,
    )
