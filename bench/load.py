"""Load phases with wrk: at saturation (closed loop) and at a fixed rate (paced by a Lua script).

:func:`run_wrk` runs one wrk (one thread, N keep-alive connections, D whole seconds) to
completion and parses the line that ``templates/report.lua`` prints at the end. With ``rate``
set, ``templates/pace.lua`` is prepended: requests leave on a fixed schedule of ``rate`` per
second, the same for every case, and sends that missed their slot by more than 1 ms are counted as
``late`` (the case could not keep up). Latency is measured by wrk from the moment a request is
written; at the fixed rate a run with ``late == 0`` did not suffer coordinated omission beyond wrk's
1 ms timer granularity.

:func:`measured_phase` wraps a run with CPU readings of the measured processes (all of a
case's: both proxies of a meshed pair).

Not for: open-loop generation above what one wrk thread can pace, or HTTP/2 (wrk speaks HTTP/1.1).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

from bench import procfs
from bench.model import Latency, Phase, WrkRun
from bench.processes import LOOPBACK, pinned

TEMPLATES = Path(__file__).parent / "templates"
_MARKER = "BENCH_RESULT "


class LoadFailed(RuntimeError):
    """wrk failed or printed no result."""


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
) -> WrkRun:
    """Run wrk against ``http://127.0.0.1:<port><path>`` and return what it measured."""
    if duration_s < 1:
        raise ValueError(f"duration_s: wrk runs whole seconds, got {duration_s!r}")
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--timeout",
        "5s",
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
            timeout=duration_s + 30,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise LoadFailed(f"wrk did not finish within {duration_s + 30} s: {argv}") from e
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(_MARKER)), None)
    if done.returncode != 0 or line is None:
        raise LoadFailed(
            f"wrk exited {done.returncode} without a result: {argv}\n"
            f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-2000:]}"
        )
    return parse_result(line[len(_MARKER) :])


def parse_result(text: str) -> WrkRun:
    """Parse the JSON object printed by ``report.lua``."""
    data = json.loads(text)
    return WrkRun(
        requests=int(data["requests"]),
        duration_s=int(data["duration_us"]) / 1e6,
        bytes=int(data["bytes"]),
        latency=Latency(**data["latency_us"]),
        errors={k: int(v) for k, v in data["errors"].items()},
        late=int(data["late"]),
    )


def measured_phase(
    name: str,
    rnd: int,
    pids: Sequence[int],
    port: int,
    *,
    workdir: Path,
    connections: int,
    duration_s: int,
    rate: int | None = None,
    path: str = "/",
    cpu: int | None = None,
) -> Phase:
    """One wrk run with the CPU time of the measured processes' trees read before and after."""
    before = procfs.cpu_times(pids)
    run = run_wrk(
        port,
        workdir=workdir,
        connections=connections,
        duration_s=duration_s,
        rate=rate,
        path=path,
        cpu=cpu,
    )
    spent = procfs.cpu_times(pids) - before
    return Phase(
        name=name,
        round=rnd,
        target_rps=rate,
        wrk=run,
        cpu_user_s=round(spent.user_s, 4),
        cpu_system_s=round(spent.system_s, 4),
    )
