"""Load phases: wrk (HTTP/1.1) at saturation (closed loop) and at a fixed rate (paced by a Lua
script), and the phase around any load generator.

:func:`run_wrk` runs one wrk (one thread, N keep-alive connections, D whole seconds) to
completion and parses the line that ``templates/report.lua`` prints at the end. With ``rate``
set, ``templates/pace.lua`` is prepended: requests leave on a fixed schedule of ``rate`` per
second, the same for every case, and sends that missed their slot by more than 1 ms are counted as
``late`` (the case could not keep up). Latency is measured by wrk from the moment a request is
written; at the fixed rate a run with ``late == 0`` did not suffer coordinated omission beyond wrk's
1 ms timer granularity.

:class:`Load` is what a load generator offers the run: :class:`Wrk` here, ``H2load``
(:mod:`bench.h2load`, HTTP/2) and ``GrpcLoad`` (:mod:`bench.grpc_load`, gRPC). Each runs for whole
seconds, saturating or at a fixed rate, and returns a :class:`~bench.model.LoadRun`.
:func:`measured_phase` wraps a run with CPU readings of the measured processes (all of a case's:
both proxies of a meshed pair) and, for a pair, counts the connections between its proxies
while the load runs.

Not for: open-loop generation above what one wrk thread can pace, or HTTP/2 (wrk speaks HTTP/1.1).
"""

from __future__ import annotations

import json
import resource
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bench import procfs
from bench.model import Latency, LoadRun, Phase
from bench.processes import LOOPBACK, pinned

TEMPLATES = Path(__file__).parent / "templates"
RESULT_MARKER = "BENCH_RESULT "


class LoadFailed(RuntimeError):
    """The load generator failed or printed no result."""


class Load(Protocol):
    """A load generator aimed at one case: ``run`` it for whole seconds, saturating when
    ``rate`` is None, else at ``rate`` requests per second in all."""

    def run(self, duration_s: int, rate: int | None = None) -> LoadRun: ...


@dataclass(frozen=True, slots=True)
class Wrk:
    """wrk against ``http://127.0.0.1:<port>/``: ``threads`` threads (a fixed rate needs one),
    ``connections`` keep-alive connections, pinned to ``cpu``; ``headers`` are added to every
    request (``Connection: close`` makes wrk open a new connection per request), ``timeout_s``
    is wrk's ``--timeout`` (a slower response counts as a timeout error, not in the latencies).
    """

    port: int
    workdir: Path
    connections: int
    cpu: int | None = None
    threads: int = 1
    headers: tuple[str, ...] = ()
    timeout_s: int = 5

    def run(self, duration_s: int, rate: int | None = None) -> LoadRun:
        return run_wrk(
            self.port,
            workdir=self.workdir,
            connections=self.connections,
            duration_s=duration_s,
            rate=rate,
            cpu=self.cpu,
            threads=self.threads,
            headers=self.headers,
            timeout_s=self.timeout_s,
        )


def script(workdir: Path, paced: bool) -> Path:
    """The wrk script for a phase, written to ``workdir`` (report only, or pacing + report)."""
    name = "paced.lua" if paced else "report.lua"
    path = workdir / name
    if not path.exists():
        parts = [(TEMPLATES / "pace.lua").read_text()] if paced else []
        parts.append((TEMPLATES / "report.lua").read_text())
        path.write_text("\n".join(parts))
    return path


def run_wrk(
    port: int,
    *,
    workdir: Path,
    connections: int,
    duration_s: int,
    rate: int | None = None,
    path: str = "/",
    cpu: int | None = None,
    threads: int = 1,
    headers: Sequence[str] = (),
    timeout_s: int = 5,
) -> LoadRun:
    """Run wrk against ``http://127.0.0.1:<port><path>`` and return what it measured."""
    if duration_s < 1:
        raise ValueError(f"duration_s: wrk runs whole seconds, got {duration_s!r}")
    if rate is not None and threads != 1:
        raise ValueError(f"threads: the pacing script paces one thread, got {threads!r}")
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--timeout",
        f"{timeout_s}s",
        *[arg for h in headers for arg in ("-H", h)],
        "-s",
        str(script(workdir, rate is not None)),
        f"http://{LOOPBACK}:{port}{path}",
    ]
    if rate is not None:
        argv += ["--", str(rate)]
    try:
        done = subprocess.run(
            pinned(argv, cpu),
            capture_output=True,
            text=True,
            timeout=duration_s + timeout_s + 30,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise LoadFailed(
            f"wrk did not finish within {duration_s + timeout_s + 30} s: {argv}"
        ) from e
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_MARKER)), None)
    if done.returncode != 0 or line is None:
        raise LoadFailed(
            f"wrk exited {done.returncode} without a result: {argv}\n"
            f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-2000:]}"
        )
    return parse_result(line[len(RESULT_MARKER) :])


def parse_result(text: str) -> LoadRun:
    """Parse the JSON object printed by ``report.lua`` (and by the gRPC client, alike)."""
    data = json.loads(text)
    return LoadRun(
        requests=int(data["requests"]),
        duration_s=int(data["duration_us"]) / 1e6,
        bytes=int(data["bytes"]),
        latency=Latency(**data["latency_us"]),
        errors={k: int(v) for k, v in data["errors"].items()},
        late=int(data["late"]),
        over_1s=None if data.get("over_1s") is None else int(data["over_1s"]),
    )


def measured_phase(
    name: str,
    rnd: int,
    pids: Sequence[int],
    load: Load,
    *,
    duration_s: int,
    rate: int | None = None,
    pair_port: int | None = None,
) -> Phase:
    """One load run with the CPU time of the measured processes' trees read before and after,
    and the CPU time the load generator itself used (to tell when it, not the case, set the
    rate); with ``pair_port`` (the listening port of a meshed pair's server side) the most
    connections open to it during the run, sampled from ``/proc/net/tcp``."""
    with procfs.ConnectionSampler(pair_port) as sampler:
        generator_before = _children_cpu_s()
        before = procfs.cpu_times(pids)
        run = load.run(duration_s, rate)
        spent = procfs.cpu_times(pids) - before
        generator_s = _children_cpu_s() - generator_before
    return Phase(
        name=name,
        round=rnd,
        target_rps=rate,
        load=run,
        cpu_user_s=round(spent.user_s, 4),
        cpu_system_s=round(spent.system_s, 4),
        pair_connections=sampler.most,
        load_cpu_s=round(generator_s, 4),
    )


def _children_cpu_s() -> float:
    """CPU seconds of this process's children that have ended (the load generator of a phase
    is the only one that ends during it)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
