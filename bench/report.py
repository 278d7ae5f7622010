"""Tables and target verdicts from a :class:`~bench.model.RunResult`.

Three tables -- load (throughput, latency, CPU per request, memory), streaming, volume -- rendered
as a ``rich`` table on the terminal or as Markdown for ``docs/benchmarks.md``; the CPU ratios of
weft to the anchors (and of the weft meshed pair to the Envoy pair, with their p99 ratio); and the
targets (:func:`verdicts` for weft, :func:`mesh_verdicts` for the meshed pair when the run has
one), each computed from the figures of this run and reported as ``pass``, ``FAIL`` or ``n/a``
(not measured in this run). A meshed pair's CPU and memory are those of both its processes.

Units on display: milliseconds for latency, microseconds of CPU per request, decimal megabytes
(10^6 bytes) for memory, as in the targets.

Not for: measuring anything, or deciding exit codes (the benchmark is not a test).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from bench.model import CaseResult, PhaseSummary, RunResult, mb
from bench.settings import MESH_CASES

RSS_LIMIT_MB = 30.0
RSS_GROWTH_LIMIT_MB = 1.0  # "no growth" between the first and fifth million, allowing for noise
STREAM_GROWTH_LIMIT_MB = 10.0
NGINX_CPU_FACTOR = 2.0


@dataclass(frozen=True, slots=True)
class Verdict:
    target: str
    outcome: str  # "pass", "FAIL" or "n/a"
    detail: str


def _ms(us: float) -> str:
    return f"{us / 1000:.3f}"


def _num(x: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def _cpu(case: CaseResult, phase: str) -> float | None:
    s = case.summary(phase)
    return None if s is None else s.cpu_us_per_request


def _cpu_cell(s: PhaseSummary | None) -> str:
    if s is None or s.cpu_us_per_request is None:
        return "-"
    if s.rounds == 1 or s.cpu_min is None or s.cpu_max is None:
        return f"{s.cpu_us_per_request:.1f}"
    return f"{s.cpu_us_per_request:.1f} ({s.cpu_min:.1f}-{s.cpu_max:.1f})"


LOAD_HEADERS = (
    "case",
    "rps (sat)",
    "p50 ms (sat)",
    "p99 ms (sat)",
    "rps (fixed)",
    "p50 ms (fixed)",
    "p99 ms (fixed)",
    "CPU us/req (sat)",
    "CPU us/req (fixed)",
    "RSS MB (start)",
    "RSS MB",
    "HWM MB",
)


def load_rows(run: RunResult) -> list[list[str]]:
    rows = []
    for c in run.cases:
        if c.status != "ok":
            rows.append([c.name, c.status] + [""] * (len(LOAD_HEADERS) - 2))
            continue
        sat, fixed = c.summary("saturation"), c.summary("fixed")
        row = [c.name if c.name != "direct" else "direct (backend)"]
        for s in (sat, fixed):
            if s is None:
                row += ["-", "-", "-"]
            else:
                trouble = f", {s.errors} errors" if s.errors else ""
                trouble += f", {s.late} late" if s.late else ""
                row += [f"{s.rps:,.0f}{trouble}", _ms(s.p50_us), _ms(s.p99_us)]
        row += [_cpu_cell(sat), _cpu_cell(fixed)]
        row += [
            _num(None if c.rss_start_kib is None else mb(c.rss_start_kib)),
            _num(None if c.rss_kib is None else mb(c.rss_kib)),
            _num(None if c.hwm_kib is None else mb(c.hwm_kib)),
        ]
        rows.append(row)
    return rows


STREAM_HEADERS = (
    "case",
    "upload MB/s",
    "upload RSS growth MB",
    "download MB/s",
    "download RSS growth MB",
)


def stream_rows(run: RunResult) -> list[list[str]]:
    rows = []
    for c in run.cases:
        if c.status != "ok" or not c.transfers:
            continue
        row = [c.name if c.name != "direct" else "direct (backend)"]
        for direction in ("upload", "download"):
            t = c.transfer(direction)
            if t is None:
                row += ["-", "-"]
            elif not t.ok:
                row += [f"failed: {t.error or f'status {t.status}, {t.bytes_done} bytes'}", "-"]
            else:
                rate = t.bytes_done / 1e6 / t.seconds if t.seconds > 0 else 0.0
                row += [f"{rate:,.0f}", f"{mb(t.growth_kib):.1f}"]
        rows.append(row)
    return rows


VOLUME_HEADERS = ("case", "requests", "RSS MB", "HWM MB", "elapsed s")


def volume_rows(run: RunResult) -> list[list[str]]:
    rows = []
    for c in run.cases:
        for v in c.volume:
            rows.append(
                [
                    c.name,
                    f"{v.requests:,}",
                    f"{mb(v.rss_kib):.1f}",
                    f"{mb(v.hwm_kib):.1f}",
                    f"{v.elapsed_s:.0f}",
                ]
            )
        if c.volume_error:
            rows.append([c.name, f"stopped: {c.volume_error}", "", "", ""])
    return rows


def not_measured(run: RunResult) -> list[str]:
    """Why a case has no figures (skipped or failed), one line each."""
    return [f"{c.name}: {c.status}: {c.reason}" for c in run.cases if c.status != "ok"]


def ratios(run: RunResult) -> list[str]:
    """weft's CPU per request over each anchor's, at saturation and at the fixed rate."""
    weft = run.case("weft")
    out = []
    for anchor in ("envoy", "nginx"):
        other = run.case(anchor)
        for phase in ("saturation", "fixed"):
            label = f"CPU per request weft/{anchor} ({phase})"
            a = None if weft is None else _cpu(weft, phase)
            b = None if other is None else _cpu(other, phase)
            out.append(f"{label}: {'n/a' if a is None or not b else f'{a / b:.2f}x'}")
    if _has_mesh(run):
        weft_pair, envoy_pair = run.case("weft-mtls"), run.case("envoy-mtls")
        for what, metric in (("CPU per request", _cpu), ("p99", _p99)):
            for phase in ("saturation", "fixed"):
                a = None if weft_pair is None else metric(weft_pair, phase)
                b = None if envoy_pair is None else metric(envoy_pair, phase)
                label = f"{what} weft-mtls/envoy-mtls ({phase})"
                out.append(f"{label}: {'n/a' if a is None or not b else f'{a / b:.2f}x'}")
    return out


def _us(us: float) -> str:
    return f"{us:.1f} us"


def _ms_unit(us: float) -> str:
    return f"{_ms(us)} ms"


def _has_mesh(run: RunResult) -> bool:
    return any(c.name in MESH_CASES for c in run.cases)


def _p99(case: CaseResult, phase: str) -> float | None:
    s = case.summary(phase)
    return None if s is None else s.p99_us


def mesh_verdicts(run: RunResult) -> list[Verdict]:
    """Issue #4's targets for the meshed pair: CPU per request and p99 below the Envoy pair's."""
    weft, envoy = run.case("weft-mtls"), run.case("envoy-mtls")
    out: list[Verdict] = []
    for phase in ("fixed", "saturation"):
        for what, metric, fmt in (("CPU/request", _cpu, _us), ("p99 latency", _p99, _ms_unit)):
            target = f"meshed pair {what} below the Envoy pair's ({phase})"
            w = None if weft is None else metric(weft, phase)
            e = None if envoy is None else metric(envoy, phase)
            if w is None or e is None:
                out.append(Verdict(target, "n/a", "weft-mtls or envoy-mtls not measured"))
            else:
                detail = f"weft-mtls {fmt(w)} vs envoy-mtls {fmt(e)}"
                out.append(Verdict(target, "pass" if w < e else "FAIL", detail))
    return out


def verdicts(run: RunResult) -> list[Verdict]:
    """The issue's targets for weft, from this run's figures."""
    weft, envoy, nginx = run.case("weft"), run.case("envoy"), run.case("nginx")
    out: list[Verdict] = []
    for phase in ("fixed", "saturation"):
        w = None if weft is None else _cpu(weft, phase)
        e = None if envoy is None else _cpu(envoy, phase)
        n = None if nginx is None else _cpu(nginx, phase)
        t1 = f"CPU/request below Envoy's ({phase})"
        if w is None or e is None:
            out.append(Verdict(t1, "n/a", "weft or envoy not measured"))
        else:
            ok = w < e
            out.append(
                Verdict(t1, "pass" if ok else "FAIL", f"weft {w:.1f} us vs envoy {e:.1f} us")
            )
        t2 = f"CPU/request at most {NGINX_CPU_FACTOR:g}x nginx's ({phase})"
        if w is None or n is None:
            out.append(Verdict(t2, "n/a", "weft or nginx not measured"))
        else:
            ok = w <= NGINX_CPU_FACTOR * n
            out.append(
                Verdict(t2, "pass" if ok else "FAIL", f"weft {w:.1f} us vs nginx {n:.1f} us")
            )
    at1m = None if weft is None else weft.volume_at(1_000_000)
    t3 = f"RSS at most {RSS_LIMIT_MB:g} MB after 1M requests"
    if at1m is None:
        out.append(Verdict(t3, "n/a", "no weft sample at 1M requests in this run"))
    else:
        r = mb(at1m.rss_kib)
        out.append(
            Verdict(t3, "pass" if r <= RSS_LIMIT_MB else "FAIL", f"{r:.1f} MB at {at1m.requests:,}")
        )
    at5m = None if weft is None else weft.volume_at(5_000_000)
    t4 = f"no RSS growth from 1M to 5M requests (<= {RSS_GROWTH_LIMIT_MB:g} MB)"
    if at1m is None or at5m is None:
        out.append(Verdict(t4, "n/a", "needs --long"))
    else:
        g = mb(at5m.rss_kib) - mb(at1m.rss_kib)
        out.append(
            Verdict(
                t4,
                "pass" if g <= RSS_GROWTH_LIMIT_MB else "FAIL",
                f"{mb(at1m.rss_kib):.1f} MB -> {mb(at5m.rss_kib):.1f} MB ({g:+.1f} MB)",
            )
        )
    size_mib = run.settings.get("stream_bytes", 0) / 2**20
    for direction in ("upload", "download"):
        t5 = f"{size_mib:.0f} MiB {direction} grows RSS by less than {STREAM_GROWTH_LIMIT_MB:g} MB"
        t = None if weft is None else weft.transfer(direction)
        if t is None:
            out.append(Verdict(t5, "n/a", "weft not measured"))
        elif not t.ok:
            out.append(Verdict(t5, "FAIL", f"transfer failed: {t.error or t.status}"))
        else:
            g = mb(t.growth_kib)
            out.append(
                Verdict(t5, "pass" if g < STREAM_GROWTH_LIMIT_MB else "FAIL", f"+{g:.1f} MB")
            )
    return out


def machine_line(run: RunResult) -> str:
    m = run.machine
    return (
        f"{m.get('cpu_model', '?')}, {m.get('nproc', '?')} CPUs, Linux {m.get('kernel', '?')}; "
        f"nginx {m.get('nginx', '?')}, envoy {m.get('envoy', '?')}, wrk {m.get('wrk', '?')}, "
        f"Python {m.get('python', '?')}, weft {m.get('weft', '?')}; "
        f"load average before/after {m.get('loadavg_before', '?')} / {m.get('loadavg_after', '?')}"
    )


def _rich_table(title: str, headers: Sequence[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def print_console(run: RunResult, console: Console) -> None:
    s = run.settings
    console.print(machine_line(run))
    title = (
        f"Load: wrk 1 thread, {s['connections']} connections, {s['duration_s']} s per phase; "
        f"fixed rate {s['rate']:,} rps"
    )
    console.print(_rich_table(title, LOAD_HEADERS, load_rows(run)))
    for line in not_measured(run):
        console.print(line)
    if rows := stream_rows(run):
        size = f"{s['stream_bytes'] / 2**20:.0f} MiB"
        console.print(_rich_table(f"Streaming ({size} each way)", STREAM_HEADERS, rows))
    if rows := volume_rows(run):
        console.print(
            _rich_table("Volume (memory after N requests in total)", VOLUME_HEADERS, rows)
        )
    for line in ratios(run):
        console.print(line)
    for v in verdicts(run) + (mesh_verdicts(run) if _has_mesh(run) else []):
        console.print(f"target: {v.target}: {v.outcome} ({v.detail})")
    for note in run.notes:
        console.print(f"note: {note}")


def _md_table(headers: Sequence[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r.replace("|", "/") for r in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(run: RunResult) -> str:
    """The figures of a run as the Markdown block of ``docs/benchmarks.md``."""
    s = run.settings
    parts = [
        f"Run {run.started} ({run.seconds:.0f} s): `{' '.join(run.command)}`",
        "",
        f"Machine: {machine_line(run)}.",
        "",
        f"Load: wrk, 1 thread, {s['connections']} keep-alive connections, {s['duration_s']} s per "
        f"phase after {s['warmup_s']} s of warm-up; fixed rate {s['rate']:,} rps; "
        + (
            f"measured server on CPU {s['cpu_server']}, wrk and backend on CPU {s['cpu_load']}."
            if s["pin"]
            else "no CPU pinning."
        ),
        "",
        _md_table(LOAD_HEADERS, load_rows(run)),
        "",
        *[f"- {line}" for line in not_measured(run)],
        *[f"- {line}" for line in ratios(run)],
    ]
    if rows := stream_rows(run):
        parts += ["", f"Streaming, {s['stream_bytes'] / 2**20:.0f} MiB each way:", ""]
        parts += [_md_table(STREAM_HEADERS, rows)]
    if rows := volume_rows(run):
        parts += ["", "Volume (memory after N requests in total):", ""]
        parts += [_md_table(VOLUME_HEADERS, rows)]
    parts += ["", "Targets (weft):", ""]
    parts += [f"- {v.target}: **{v.outcome}** ({v.detail})" for v in verdicts(run)]
    if _has_mesh(run):
        parts += ["", "Targets (meshed pair, CPU and memory of both proxies):", ""]
        parts += [f"- {v.target}: **{v.outcome}** ({v.detail})" for v in mesh_verdicts(run)]
    parts += [f"- note: {n}" for n in run.notes]
    return "\n".join(parts)
