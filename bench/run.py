"""``python -m bench.run``: the command line of the benchmark and the order of its phases.

One run: start the backend (and the HTTP/2 backend when an HTTP/2 or gRPC case is asked for);
start every case, check that a request through it gets the backend's answer and warm it up; then,
for each round, let the cases take turns (rotated each round) at a saturation phase and a
fixed-rate phase (wrk, h2load or the gRPC client, by the case's protocol, with the CPU time of the
case's processes -- both of a meshed pair -- read around each, and for a pair the connections
between its proxies counted); then for each case read its memory, run it up to the volume
milestones (by default one million requests in total, for weft), stream a large body up and a
large body down while sampling its memory (HTTP/1.1 cases), and stop it. The cases not under
load sit idle meanwhile. A case that cannot run is reported as skipped or failed with the reason,
and the run goes on without it.
Everything started is stopped when the run ends, also on Ctrl-C, SIGTERM or an error.

Output: a table on stdout, the raw results in ``bench/results/<timestamp>.json``, and with
``--markdown`` the block for ``docs/benchmarks.md``. ``--report FILE`` renders an earlier results
file again without running anything.

Not for: CI. The exit status is 0 when the run completed (whatever the figures), 1 when no case
could be measured, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from types import FrameType

from rich.console import Console

from bench import conn, procfs, stream
from bench.grpc_load import GrpcLoad
from bench.h2load import H2load
from bench.load import Load, LoadFailed, Wrk, measured_phase
from bench.model import (
    CaseResult,
    IdleRun,
    Phase,
    RunResult,
    Transfer,
    VolumeSample,
    from_json,
    mb,
)
from bench.processes import ServerFailed, Supervisor
from bench.report import markdown, print_console
from bench.settings import (
    ALL_CASES,
    CASE_GROUPS,
    Settings,
    expand_cases,
    is_conn_case,
    protocol_of,
)
from bench.targets import REPO, Skipped, Target, start_backend, start_case, start_h2_backend, tool

RESULTS = REPO / "bench" / "results"
MAX_CHUNK_S = 60


def _asks_for_control_plane(argv: Sequence[str]) -> bool:
    """``--cases control-plane``: the control plane's scale benchmark (bench.controlplane)."""
    return any(a == "control-plane" and i and argv[i - 1] == "--cases" for i, a in enumerate(argv))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Weft proxy benchmark against nginx and Envoy (all traffic on 127.0.0.1).",
    )
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="smoke run, well under a minute")
    preset.add_argument(
        "--long", action="store_true", help="volume samples at 1M..5M requests (memory growth)"
    )
    p.add_argument(
        "--cases",
        help=f"comma-separated, of: {', '.join(ALL_CASES)}; or groups: {', '.join(CASE_GROUPS)}",
    )
    p.add_argument(
        "--volume-cases",
        help="cases that get the volume run: names or groups as --cases, or none (default: weft)",
    )
    p.add_argument("--connections", type=int, help="wrk connections (default 16)")
    p.add_argument("--duration", type=int, help="seconds per measured phase (default 10)")
    p.add_argument("--warmup", type=int, help="seconds of unmeasured warm-up (default 2)")
    p.add_argument("--rounds", type=int, help="rounds of both phases per case (default 3)")
    p.add_argument("--rate", type=int, help="fixed request rate, rps (default 2000)")
    p.add_argument("--stream-mib", type=int, help="size of the streamed bodies in MiB (100)")
    p.add_argument("--requests", type=int, help="one volume milestone instead of the preset's")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--cpu-load", type=int, help="CPU of wrk, backend and client (default 0)")
    p.add_argument("--cpu-server", type=int, help="CPU of the measured proxy (default 1)")
    p.add_argument("--h2-clients", type=int, help="h2load connections (default 16)")
    p.add_argument("--h2-streams", type=int, help="h2load streams in flight each (default 10)")
    p.add_argument("--grpc-concurrency", type=int, help="gRPC calls in flight (default 32)")
    p.add_argument("--grpc-channels", type=int, help="gRPC client channels (default 2)")
    p.add_argument(
        "--many-connections", type=int, help="keep-alive connections of the many shape (1000)"
    )
    p.add_argument("--idle-connections", type=int, help="connections of the idle shapes (10000)")
    p.add_argument("--idle-hold", type=float, help="seconds the silent idle shape is held (13)")
    p.add_argument("--markdown", action="store_true", help="also print the docs' Markdown block")
    p.add_argument("--report", type=Path, metavar="FILE", help="render a results file, no run")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON results")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    base = Settings.for_preset("quick" if args.quick else "long" if args.long else "default")
    changes: dict[str, object] = {}
    if args.cases is not None:
        changes["cases"] = expand_cases(args.cases)
    if args.volume_cases is not None:
        changes["volume_cases"] = expand_cases(args.volume_cases)
    for arg, name in (
        ("connections", "connections"),
        ("duration", "duration_s"),
        ("warmup", "warmup_s"),
        ("rounds", "rounds"),
        ("rate", "rate"),
        ("cpu_load", "cpu_load"),
        ("cpu_server", "cpu_server"),
        ("h2_clients", "h2_clients"),
        ("h2_streams", "h2_streams"),
        ("grpc_concurrency", "grpc_concurrency"),
        ("grpc_channels", "grpc_channels"),
        ("many_connections", "many_connections"),
        ("idle_connections", "idle_connections"),
        ("idle_hold", "idle_hold_s"),
    ):
        if getattr(args, arg) is not None:
            changes[name] = getattr(args, arg)
    if args.stream_mib is not None:
        changes["stream_bytes"] = args.stream_mib * 1024 * 1024
    if args.requests is not None:
        changes["volume_milestones"] = (args.requests,)
    if args.no_pin:
        changes["pin"] = False
    return replace(base, **changes)  # type: ignore[arg-type]


def _first_line(argv: list[str], *, stderr: bool = False) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    text = (done.stderr if stderr else done.stdout) or done.stdout or done.stderr
    return text.strip().splitlines()[0] if text.strip() else "unknown"


def machine_info() -> dict[str, object]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    envoy, weft = tool("envoy"), tool("weft")
    rev = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    try:
        porcelain = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        src_state = ", src modified" if porcelain.strip() else ""
    except (OSError, subprocess.SubprocessError):
        src_state = ", src state unknown"
    envoy_version = _first_line([str(envoy), "--version"]) if envoy else "missing"
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": _first_line(["nginx", "-v"], stderr=True).rpartition("/")[2],
        # "<sha>/1.40.0/Clean/RELEASE/BoringSSL": the second field is the release.
        "envoy": [*envoy_version.split("version: ")[-1].split("/"), "?"][1] if envoy else "missing",
        "envoy_build": envoy_version,
        "wrk": _first_line(["wrk", "-v"]).split(" [")[0].removeprefix("wrk "),
        "h2load": _first_line(["h2load", "--version"]).removeprefix("h2load "),
        # "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/"
        "haproxy": (_first_line(["haproxy", "-v"]).split("version ")[-1].split(" ")[0]),
        "grpcio": _package_version("grpcio"),
        "weft": (_first_line([str(weft), "--version"]).removeprefix("weft ") if weft else "missing")
        + f" (git {rev}{src_state}{_build_kind()})",
        "loadavg_before": Path("/proc/loadavg").read_text().split()[0],
        "clock_ticks": procfs.CLOCK_TICKS,
    }


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def _build_kind() -> str:
    """``", mypyc"`` when this interpreter's weft has compiled modules (``make compiled``).

    The ``weft`` the run starts is the one next to this interpreter (``tool``), so this is its
    build too.
    """
    spec = importlib.util.find_spec("weft.proxy.protocol.http1.exchange")
    origin = spec.origin if spec is not None else None
    return ", mypyc" if origin is not None and not origin.endswith(".py") else ""


def _progress(console: Console, text: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {text}", highlight=False)


class _Case:
    """One case across the run: its target while it runs, what it measured, how it ended."""

    def __init__(self, name: str, settings: Settings, workdir: Path, console: Console):
        self.name = name
        self.s = settings
        self.workdir = workdir
        self.console = console
        self.load_cpu = settings.cpu_load if settings.pin else None
        self.target: Target | None = None
        self.load: Load | None = None
        self.status = "ok"
        self.reason: str | None = None
        self.requests = 0  # requests sent through the target so far (for volume milestones)
        self.phases: list[Phase] = []
        self.rss_start_kib: int | None = None
        self.rss_kib: int | None = None
        self.hwm_kib: int | None = None
        self.volume: list[VolumeSample] = []
        self.volume_error: str | None = None
        self.transfers: list[Transfer] = []
        self.idle: list[IdleRun] = []

    @property
    def running(self) -> bool:
        return self.status == "ok" and self.target is not None

    def running_target(self) -> Target:
        assert self.target is not None, "the case was not started"
        return self.target

    def running_load(self) -> Load:
        assert self.load is not None, "the case was not started"
        return self.load

    def started(self, target: Target) -> None:
        """Take the running target and aim the load generator of the case's protocol at it."""
        self.target = target
        protocol = protocol_of(self.name)
        if protocol == "h2":
            self.load = H2load(
                target.port, self.workdir, self.s.h2_clients, self.s.h2_streams, cpu=self.load_cpu
            )
        elif protocol == "grpc":
            self.load = GrpcLoad(
                target.port, self.s.grpc_concurrency, self.s.grpc_channels, cpu=self.load_cpu
            )
        else:
            self.load = Wrk(target.port, self.workdir, self.s.connections, cpu=self.load_cpu)

    def fail(self, e: Exception) -> None:
        """Record why the case failed; a crash of its server explains more than the symptom."""
        self.status = "failed"
        if isinstance(e, ServerFailed):
            _progress(self.console, f"{self.name}: failed: {e}")
            self.reason = e.brief
            return
        _progress(self.console, f"{self.name}: failed: {e}")
        self.reason = str(e).splitlines()[0]
        if self.target is not None:
            try:
                for server in self.target.servers:
                    server.check_alive()
            except ServerFailed as crash:
                _progress(self.console, f"{self.name}: {crash}")
                self.reason = crash.brief

    def warmup(self) -> None:
        if self.s.warmup_s > 0:
            run = self.running_load().run(self.s.warmup_s)
            self.requests += run.requests

    def phase(self, name: str, rnd: int, rate: int | None) -> None:
        t = self.running_target()
        p = measured_phase(
            name,
            rnd,
            t.pids,
            self.running_load(),
            duration_s=self.s.duration_s,
            rate=rate,
            pair_port=t.pair_port,
        )
        self._record(name, rnd, p)

    def conn_round(self, rnd: int, backend_port: int, restart: Callable[[], None]) -> None:
        """The connection shapes of one round (:mod:`bench.conn`). Each idle shape gets the
        case restarted and warmed up first: memory an earlier shape left behind would
        otherwise hide the growth of the next (and every shape of every round reads alike)."""
        t = self.running_target()
        for name, run in conn.load_phases(rnd, t, self.s, self.workdir, self.load_cpu):
            self._record(name, rnd, run())
        for shape in conn.SHAPES:
            restart()
            r = conn.idle_shape(shape, rnd, self.running_target(), backend_port, self.s)
            self.idle.append(r)
            per = r.bytes_per_connection
            _progress(
                self.console,
                f"{self.name}: round {rnd + 1} {shape}: {r.opened:,}/{r.asked:,} open in "
                f"{r.open_s:.1f} s, RSS {mb(r.rss_before_kib):.1f} -> {mb(r.rss_open_kib):.1f} "
                f"(peak {mb(r.rss_peak_kib):.1f}) -> {mb(r.rss_after_kib):.1f} MB, "
                f"{'-' if per is None else f'{per:,.0f}'} bytes/connection, "
                f"{len(r.probe_latencies_us)} probes ok, {r.probe_failures} failed, "
                f"backend accepted {r.backend_accepts}, {r.closed_by_server} closed by the case"
                + (f"; {r.error}" if r.error else ""),
            )

    def _record(self, name: str, rnd: int, p: Phase) -> None:
        self.phases.append(p)
        self.requests += p.load.requests
        _progress(
            self.console,
            f"{self.name}: round {rnd + 1} {name}: {p.load.rps:,.0f} rps, "
            f"p50 {p.load.latency.p50} us, p99 {p.load.latency.p99} us, "
            f"CPU {p.cpu_us_per_request or 0:.1f} us/request"
            + (f", {p.load.error_count} errors" if p.load.error_count else "")
            + (f", {p.load.late} late" if p.load.late else "")
            + (
                f", max {p.load.latency.max} us, {p.load.over_1s} over 1 s"
                if name == "many"
                else ""
            )
            + (
                f", {p.pair_connections} connection(s) between the pair"
                if p.pair_connections is not None
                else ""
            ),
        )

    def snapshot(self) -> None:
        mem = procfs.memory(self.running_target().pids)
        self.rss_kib, self.hwm_kib = mem.rss_kib, mem.hwm_kib

    def run_volume(self) -> None:
        """Load at saturation in chunks until each milestone; sample memory at each."""
        load = self.running_load()
        t = self.running_target()
        sat = [p.load.rps for p in self.phases if p.name == "saturation"]
        rps = max(max(sat, default=0.0), 100.0)
        start = time.monotonic()
        deadline = start + self.s.volume_timeout_s
        for milestone in self.s.volume_milestones:
            while self.requests < milestone:
                left_s = deadline - time.monotonic()
                if left_s < 1:
                    self.volume_error = (
                        f"volume timeout ({self.s.volume_timeout_s:g} s) at "
                        f"{self.requests:,} requests"
                    )
                    return
                need_s = math.ceil((milestone - self.requests) / rps * 1.03)
                dur = int(max(1, min(need_s, MAX_CHUNK_S, left_s)))
                run = load.run(dur)
                if run.requests == 0:
                    self.volume_error = f"no request completed in a {dur} s chunk"
                    return
                self.requests += run.requests
                rps = max(run.rps, 1.0)
                mem = procfs.memory(t.pids)
                _progress(
                    self.console,
                    f"{self.name}: volume {self.requests:,}/{milestone:,} requests, "
                    f"{run.rps:,.0f} rps, RSS {mb(mem.rss_kib):.1f} MB"
                    + (f", {run.error_count} errors" if run.error_count else ""),
                )
            mem = procfs.memory(t.pids)
            self.volume.append(
                VolumeSample(self.requests, mem.rss_kib, mem.hwm_kib, time.monotonic() - start)
            )

    def transfer(self, direction: str) -> None:
        t = self.running_target()
        tr = stream.sampled(direction, t.pids, t.port, self.s.stream_bytes)
        self.transfers.append(tr)
        rate = tr.bytes_done / 1e6 / tr.seconds if tr.seconds > 0 else 0.0
        _progress(
            self.console,
            f"{self.name}: {direction} {tr.bytes_done / 1e6:.0f} MB in {tr.seconds:.2f} s "
            f"({rate:,.0f} MB/s), RSS {mb(tr.rss_before_kib):.1f} -> peak "
            f"{mb(tr.rss_peak_kib):.1f} MB" + (f", error: {tr.error}" if tr.error else ""),
        )

    def result(self) -> CaseResult:
        return CaseResult(
            name=self.name,
            status=self.status,
            reason=self.reason,
            measured=None if self.target is None else self.target.describe(),
            phases=tuple(self.phases),
            rss_start_kib=self.rss_start_kib,
            rss_kib=self.rss_kib,
            hwm_kib=self.hwm_kib,
            volume=tuple(self.volume),
            volume_error=self.volume_error,
            transfers=tuple(self.transfers),
            config=None if self.target is None else self.target.config,
            idle=tuple(self.idle),
        )


_FAILURES = (ServerFailed, LoadFailed, ProcessLookupError)


def _measure(
    cases: list[_Case], sup: Supervisor, workdir: Path, backends: dict[str, Target], s: Settings
) -> None:
    """Start every case, then run the rounds with the cases taking turns, then the rest.

    ``backends``: the backend of each protocol the cases speak (``http1``, ``h2``; gRPC cases
    use the HTTP/2 one)."""
    shared = {b.server for b in backends.values()}

    def stop(c: _Case) -> None:
        if c.target is not None and c.target.server not in shared:
            for server in c.target.servers:
                sup.stop(server)

    def restart(c: _Case) -> None:
        """Stop the case and start it again, warmed up (the connection cases' idle shapes)."""
        stop(c)
        c.target = None
        c.started(start_case(c.name, sup, workdir, backends[_backend_of(c.name)], s))
        c.warmup()

    for c in cases:
        _progress(c.console, f"{c.name}: starting")
        try:
            backend = backends[_backend_of(c.name)]
            c.started(start_case(c.name, sup, workdir, backend, s))
            c.rss_start_kib = procfs.memory(c.running_target().pids).rss_kib
            c.warmup()
        except Skipped as e:
            _progress(c.console, f"{c.name}: skipped: {e}")
            c.status, c.reason = "skipped", str(e)
        except _FAILURES as e:
            c.fail(e)
            stop(c)

    for rnd in range(s.rounds):
        order = cases[rnd % len(cases) :] + cases[: rnd % len(cases)]
        for c in order:
            if not c.running:
                continue
            try:
                if is_conn_case(c.name):
                    c.conn_round(rnd, backends["http1"].port, functools.partial(restart, c))
                else:
                    c.phase("saturation", rnd, None)
                    c.phase("fixed", rnd, s.rate)
            except _FAILURES as e:
                c.fail(e)
                stop(c)
    for c in cases:
        if not c.running:
            continue
        try:
            c.snapshot()
            if c.name in s.volume_cases and s.volume_milestones:
                c.run_volume()
            # the streaming client speaks HTTP/1.1; the connection cases measure connections
            if protocol_of(c.name) == "http1" and not is_conn_case(c.name):
                for direction in ("upload", "download"):
                    c.transfer(direction)
            for server in c.running_target().servers:
                server.check_alive()
        except _FAILURES as e:
            c.fail(e)
        finally:
            stop(c)


def _backend_of(case: str) -> str:
    return "http1" if protocol_of(case) == "http1" else "h2"


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def run(s: Settings, argv: Sequence[str], console: Console) -> RunResult:
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    if s.pin:
        os.sched_setaffinity(0, {s.cpu_load})  # this process: the streaming client and sampler
    machine = machine_info()
    notes: list[str] = []
    if s.pin:
        load = (
            "wrk, the backend"
            if all(protocol_of(c) == "http1" for c in s.cases)
            else "the load generators (wrk, h2load, the gRPC client), the backends"
        )
        notes.append(
            f"pinned with taskset: servers under test on CPU {s.cpu_server}; {load} "
            f"and the streaming client on CPU {s.cpu_load}"
        )
    if any(is_conn_case(c) for c in s.cases):
        notes += conn.raise_limits(s)  # before anything starts: every server inherits it
    with (
        tempfile.TemporaryDirectory(prefix="weft-bench-") as tmp,
        Supervisor(Path(tmp)) as sup,
    ):
        workdir = Path(tmp)
        needed = {_backend_of(name) for name in s.cases}
        backends: dict[str, Target] = {}
        if "http1" in needed:
            _progress(console, f"backend: starting (work dir {workdir})")
            backends["http1"] = start_backend(sup, workdir, s)
        if "h2" in needed:
            _progress(console, f"HTTP/2 backend: starting (work dir {workdir})")
            backends["h2"] = start_h2_backend(sup, workdir, s)
        cases = [_Case(name, s, workdir, console) for name in s.cases]
        _measure(cases, sup, workdir, backends, s)
    machine["loadavg_after"] = Path("/proc/loadavg").read_text().split()[0]
    return RunResult(
        started=started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        command=["python", "-m", "bench.run", *argv],
        settings=asdict(s),
        machine=machine,
        cases=tuple(c.result() for c in cases),
        seconds=round(time.monotonic() - t0, 1),
        notes=tuple(notes),
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if _asks_for_control_plane(argv):
        from bench import controlplane

        return controlplane.main([a for a in argv if a not in ("--cases", "control-plane")])
    args = parse_args(argv)
    # Off a terminal (make bench | tee), rich would wrap the tables at 80 columns.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    if args.report is not None:
        result = from_json(json.loads(args.report.read_text()))
    else:
        try:
            s = settings_from(args)
        except ValueError as e:
            console.print(f"bench: {e}")
            return 2
        signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            result = run(s, argv, console)
        except ServerFailed as e:
            console.print(f"bench: the backend did not start: {e}")
            return 1
        except KeyboardInterrupt:
            console.print("bench: interrupted; every server it started has been stopped")
            return 130
        except SystemExit:
            console.print("bench: terminated; every server it started has been stopped")
            raise
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"{result.started.replace(':', '').replace('-', '')}.json"
        path.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        console.print(f"results: {path}")
    print_console(result, console)
    if args.markdown:
        print()
        print(markdown(result))
    return 0 if any(c.status == "ok" for c in result.cases) else 1


if __name__ == "__main__":
    raise SystemExit(main())
