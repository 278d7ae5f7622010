"""Tables and target verdicts from a :class:`~bench.model.RunResult`.

Three tables -- load (throughput, latency, CPU per request, memory), streaming, volume -- rendered
as a ``rich`` table on the terminal or as Markdown for ``docs/benchmarks.md``; the CPU ratios of
weft to the anchors, and of each weft case to its Envoy counterpart (meshed pair, HTTP/2, gRPC,
HTTP/2 meshed pair) with their p99 ratio, overall and round by round (the spread shows how much
of a difference the machine's noise could make); and the targets (:func:`verdicts` for weft,
:func:`pair_verdicts` for each weft/Envoy pair of cases the run has), each computed from the
figures of this run and reported as ``pass``, ``FAIL`` or ``n/a`` (not measured in this run). A
meshed pair's CPU and memory are those of both its processes.

When the run has the weft pair both ways (``weft-mtls`` and ``weft-h2-mtls``),
:func:`protocol_rows` sets HTTP/1.1 and HTTP/2 between the proxies side by side (with the
connections between them) and :func:`protocol_lines` adds the ratios and, when ``weft`` and
``weft-h2`` ran too, the estimate of HTTP/1.1 traffic carried over HTTP/2 between the proxies.
:func:`load_notes` says when a load generator used (nearly) a whole CPU, i.e. set the rate itself.

Units on display: milliseconds for latency, microseconds of CPU per request, decimal megabytes
(10^6 bytes) for memory, as in the targets.

Not for: measuring anything, or deciding exit codes (the benchmark is not a test).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from bench import connreport
from bench.model import CaseResult, PhaseSummary, RunResult, mb
from bench.settings import is_conn_case, protocol_of

RSS_LIMIT_MB = 30.0
RSS_GROWTH_LIMIT_MB = 1.0  # "no growth" between the first and fifth million, allowing for noise
STREAM_GROWTH_LIMIT_MB = 10.0
NGINX_CPU_FACTOR = 2.0
BUSY_LOAD = 0.9  # a load generator using this much of a CPU set the rate itself
# weft's case, Envoy's case set up the same way, and what the pair of cases compares
COMPARED = (
    ("weft-mtls", "envoy-mtls", "meshed pair"),
    ("weft-h2", "envoy-h2", "HTTP/2"),
    ("weft-grpc", "envoy-grpc", "gRPC"),
    ("weft-h2-mtls", "envoy-h2-mtls", "HTTP/2 meshed pair"),
)


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
        if is_conn_case(c.name):  # their tables: connreport.conn_tables
            continue
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


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or not b else f"{a / b:.2f}x"


def _in_run(run: RunResult, *names: str) -> bool:
    return any(c.name in names for c in run.cases)


def _compared(run: RunResult) -> list[tuple[str, str, str]]:
    """The weft/Envoy pairs of cases this run was asked for (both of each; measured or not)."""
    return [(w, e, what) for w, e, what in COMPARED if _in_run(run, w) and _in_run(run, e)]


def ratios(run: RunResult) -> list[str]:
    """weft's CPU per request over each anchor's in the run, at saturation and at the fixed rate;
    then for each weft/Envoy pair of cases in the run, their CPU per request and p99 ratios."""
    out = []
    weft = run.case("weft")
    for anchor in ("envoy", "nginx"):
        if not (_in_run(run, "weft") and _in_run(run, anchor)):
            continue
        other = run.case(anchor)
        for phase in ("saturation", "fixed"):
            a = None if weft is None else _cpu(weft, phase)
            b = None if other is None else _cpu(other, phase)
            out.append(f"CPU per request weft/{anchor} ({phase}): {_ratio(a, b)}")
    for weft_name, envoy_name, _what in _compared(run):
        w, e = run.case(weft_name), run.case(envoy_name)
        for what, metric in (("CPU per request", _cpu), ("p99", _p99)):
            for phase in ("saturation", "fixed"):
                a = None if w is None else metric(w, phase)
                b = None if e is None else metric(e, phase)
                out.append(f"{what} {weft_name}/{envoy_name} ({phase}): {_ratio(a, b)}")
        if w is not None and e is not None:
            out += [line for phase in ("saturation", "fixed") if (line := _by_round(w, e, phase))]
    return out


def _by_round(weft: CaseResult, envoy: CaseResult, phase: str) -> str | None:
    """The p99 ratio of two cases in each round of ``phase`` (the cases take turns, so a round's
    two phases ran on the machine in the same state): how far the verdict on medians is from
    the noise. None with fewer than two rounds in common."""
    theirs = {p.round: p for p in envoy.phases if p.name == phase}
    pairs = [(p, theirs[p.round]) for p in weft.phases if p.name == phase and p.round in theirs]
    ratios = [a.load.latency.p99 / b.load.latency.p99 for a, b in pairs if b.load.latency.p99]
    if len(ratios) < 2:
        return None
    lower = sum(r < 1 for r in ratios)
    return (
        f"p99 {weft.name}/{envoy.name} round by round ({phase}): "
        f"{' '.join(f'{r:.2f}' for r in ratios)}; lower in {lower} of {len(ratios)} rounds"
    )


def _us(us: float) -> str:
    return f"{us:.1f} us"


def _ms_unit(us: float) -> str:
    return f"{_ms(us)} ms"


def _p99(case: CaseResult, phase: str) -> float | None:
    s = case.summary(phase)
    return None if s is None else s.p99_us


def pair_verdicts(run: RunResult, weft_name: str, envoy_name: str, what: str) -> list[Verdict]:
    """CPU per request and p99 of a weft case below its Envoy counterpart's (issue 4's targets
    for the meshed pair, issue 6's for HTTP/2 and gRPC)."""
    weft, envoy = run.case(weft_name), run.case(envoy_name)
    anchor = "the Envoy pair's" if "pair" in what else "Envoy's"
    out: list[Verdict] = []
    for phase in ("fixed", "saturation"):
        for metric_name, metric, fmt in (
            ("CPU/request", _cpu, _us),
            ("p99 latency", _p99, _ms_unit),
        ):
            target = f"{what} {metric_name} below {anchor} ({phase})"
            w = None if weft is None else metric(weft, phase)
            e = None if envoy is None else metric(envoy, phase)
            if w is None or e is None:
                out.append(Verdict(target, "n/a", f"{weft_name} or {envoy_name} not measured"))
            else:
                detail = f"{weft_name} {fmt(w)} vs {envoy_name} {fmt(e)}"
                out.append(Verdict(target, "pass" if w < e else "FAIL", detail))
    return out


def _pair_sections(run: RunResult) -> list[tuple[str, list[Verdict]]]:
    """The targets of each weft/Envoy pair of cases in the run, with a heading each."""
    sections = []
    for weft_name, envoy_name, what in _compared(run):
        heading = (
            "Targets (meshed pair, CPU and memory of both proxies):"
            if what == "meshed pair"
            else f"Targets ({what}, issue 6" + (", both proxies" if "pair" in what else "") + "):"
        )
        sections.append((heading, pair_verdicts(run, weft_name, envoy_name, what)))
    return sections


PROTOCOL_HEADERS = (
    "between the proxies",
    "case",
    "load",
    "in flight",
    "rps (sat)",
    "p99 ms (sat)",
    "CPU us/req (sat)",
    "p99 ms (fixed)",
    "CPU us/req (fixed)",
    "connections between (sat / fixed)",
    "RSS MB",
    "HWM MB",
)


def _in_flight(run: RunResult, case: str) -> tuple[str, int]:
    """How the load of ``case`` was generated, and how many requests it kept in flight."""
    s = run.settings
    if protocol_of(case) == "h2":
        clients, streams = s.get("h2_clients", 0), s.get("h2_streams", 0)
        return f"h2load -c{clients} -m{streams}", clients * streams
    return f"wrk -c{s['connections']}", s["connections"]


def protocol_rows(run: RunResult) -> list[list[str]]:
    """HTTP/1.1 (``weft-mtls``) and HTTP/2 (``weft-h2-mtls``) between the weft proxies, side by
    side; empty unless the run has both."""
    cases = [(run.case("weft-mtls"), "HTTP/1.1, pooled"), (run.case("weft-h2-mtls"), "HTTP/2")]
    if any(c is None for c, _ in cases):
        return []
    rows = []
    for c, between in cases:
        assert c is not None
        sat, fixed = c.summary("saturation"), c.summary("fixed")
        load, in_flight = _in_flight(run, c.name)
        conns = " / ".join(
            "-" if x is None or x.pair_connections is None else str(x.pair_connections)
            for x in (sat, fixed)
        )
        rows.append(
            [
                between,
                c.name,
                load,
                str(in_flight),
                "-" if sat is None else f"{sat.rps:,.0f}",
                "-" if sat is None else _ms(sat.p99_us),
                _cpu_cell(sat),
                "-" if fixed is None else _ms(fixed.p99_us),
                _cpu_cell(fixed),
                conns,
                _num(None if c.rss_kib is None else mb(c.rss_kib)),
                _num(None if c.hwm_kib is None else mb(c.hwm_kib)),
            ]
        )
    return rows


def protocol_lines(run: RunResult) -> list[str]:
    """The HTTP/2-to-HTTP/1.1 ratios between the weft proxies, whether the two loads had the
    same concurrency, and (with ``weft`` and ``weft-h2`` in the run) the estimate of HTTP/1.1
    traffic carried over HTTP/2 between the proxies: each proxy pays one app-side leg and one
    mesh leg, so that pair would cost about weft-h2-mtls - weft-h2 + weft per request."""
    h1, h2 = run.case("weft-mtls"), run.case("weft-h2-mtls")
    if h1 is None or h2 is None:
        return []
    out = []
    for what, metric in (("CPU per request", _cpu), ("p99", _p99)):
        for phase in ("saturation", "fixed"):
            ratio = _ratio(metric(h2, phase), metric(h1, phase))
            out.append(f"{what} HTTP/2 / HTTP/1.1 between the proxies ({phase}): {ratio}")
    if h1.rss_kib and h2.rss_kib:
        out.append(f"RSS HTTP/2 / HTTP/1.1 between the proxies: {_ratio(h2.rss_kib, h1.rss_kib)}")
    n1, n2 = _in_flight(run, h1.name)[1], _in_flight(run, h2.name)[1]
    if n1 != n2:
        out.append(
            f"not the same concurrency ({n1} requests in flight with wrk, {n2} with h2load): "
            f"run with --h2-clients {n1} --h2-streams 1 to compare"
        )
    single, single_h2 = run.case("weft"), run.case("weft-h2")
    if single is not None and single_h2 is not None:
        behind = [c.name for c in (h1, h2, single, single_h2) if not _kept_up(run, c)]
        if behind:
            out.append(
                f"{', '.join(behind)} did not keep up with the fixed rate: the fixed-rate "
                "estimate compares cases at different rates"
            )
        for phase in ("fixed", "saturation"):
            parts = [_cpu(h2, phase), _cpu(single_h2, phase), _cpu(single, phase), _cpu(h1, phase)]
            if any(x is None for x in parts):
                continue
            pair2, one2, one1, pair1 = (x or 0.0 for x in parts)
            out.append(
                f"estimate ({phase}), HTTP/1.1 traffic over HTTP/2 between the proxies: "
                f"weft-h2-mtls - weft-h2 + weft = {pair2:.1f} - {one2:.1f} + {one1:.1f} = "
                f"{pair2 - one2 + one1:.1f} us/request, against {pair1:.1f} over HTTP/1.1"
            )
    return out


def _kept_up(run: RunResult, case: CaseResult) -> bool:
    """Whether ``case`` served the fixed rate (within 3%: h2load's stagger and rounding)."""
    fixed = case.summary("fixed")
    return fixed is not None and fixed.rps >= 0.97 * run.settings["rate"]


def load_notes(run: RunResult) -> list[str]:
    """Cases whose load generator used at least ``BUSY_LOAD`` of a CPU at saturation: there the
    generator, not the case, set the rate, and CPU per request is the case's at that rate."""
    out = []
    for c in run.cases:
        sat = c.summary("saturation") if c.status == "ok" else None
        if sat is None or sat.load_busy is None or sat.load_busy < BUSY_LOAD:
            continue
        generator = {"http1": "wrk", "h2": "h2load", "grpc": "the gRPC client"}[protocol_of(c.name)]
        out.append(
            f"{c.name}: {generator} used {sat.load_busy:.0%} of a CPU at saturation: it set "
            f"the rate ({sat.rps:,.0f}/s), and CPU per request is the case's at that rate"
        )
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
    # h2load and grpcio are named when the run used them (results before them have no entry)
    extra = "".join(
        f", {name} {m[key]}"
        for name, key, protocol in (("h2load", "h2load", "h2"), ("grpcio", "grpcio", "grpc"))
        if key in m and any(protocol_of(c.name) == protocol for c in run.cases)
    )
    if "haproxy" in m and any(c.name == "haproxy-conn" for c in run.cases):
        extra = f", haproxy {m['haproxy']}{extra}"
    return (
        f"{m.get('cpu_model', '?')}, {m.get('nproc', '?')} CPUs, Linux {m.get('kernel', '?')}; "
        f"nginx {m.get('nginx', '?')}, envoy {m.get('envoy', '?')}, wrk {m.get('wrk', '?')}"
        f"{extra}, Python {m.get('python', '?')}, weft {m.get('weft', '?')}; "
        f"load average before/after {m.get('loadavg_before', '?')} / {m.get('loadavg_after', '?')}"
    )


def generators(run: RunResult) -> list[str]:
    """How each protocol of the run was loaded: wrk (HTTP/1.1), h2load (HTTP/2), gRPC client,
    and the connection cases' shapes."""
    s = run.settings
    protocols = {protocol_of(c.name) for c in run.cases if not is_conn_case(c.name)}
    out = []
    if "http1" in protocols:
        out.append(f"wrk, 1 thread, {s['connections']} keep-alive connections")
    if any(is_conn_case(c.name) for c in run.cases):
        out.append(
            f"connection cases: wrk, 1 thread, {s['connections']} connections with "
            f"Connection: close (churn); wrk, {s.get('many_threads', 0)} threads, "
            f"{s.get('many_connections', 0):,} keep-alive connections (many); "
            f"{s.get('idle_connections', 0):,} idle connections (idle)"
        )
    if "h2" in protocols:
        out.append(
            f"h2load, 1 thread, {s['h2_clients']} h2c connections, {s['h2_streams']} stream(s) "
            "in flight on each"
        )
    if "grpc" in protocols:
        out.append(
            f"grpcio client, {s['grpc_concurrency']} unary calls in flight on "
            f"{s['grpc_channels']} channels"
        )
    return out


def _rich_table(title: str, headers: Sequence[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _all_verdicts(run: RunResult) -> list[tuple[str, list[Verdict]]]:
    """Every group of targets the run was asked for (weft's own when it has the weft case)."""
    sections = []
    if _in_run(run, "weft"):
        sections.append(("Targets (weft):", verdicts(run)))
    if _in_run(run, connreport.WEFT):
        conn = [Verdict(*v) for v in connreport.conn_verdicts(run)]
        sections.append(("Targets (connections, issue 12):", conn))
    return sections + _pair_sections(run)


def print_console(run: RunResult, console: Console) -> None:
    s = run.settings
    console.print(machine_line(run))
    title = (
        f"Load: {'; '.join(generators(run))}; {s['duration_s']} s per phase; "
        f"fixed rate {s['rate']:,} rps"
    )
    if rows := load_rows(run):
        console.print(_rich_table(title, LOAD_HEADERS, rows))
    for line in not_measured(run):
        console.print(line)
    for conn_title, headers, rows in connreport.conn_tables(run):
        console.print(_rich_table(conn_title, headers, rows))
    for line in connreport.conn_ratios(run):
        console.print(line)
    if rows := stream_rows(run):
        size = f"{s['stream_bytes'] / 2**20:.0f} MiB"
        console.print(_rich_table(f"Streaming ({size} each way)", STREAM_HEADERS, rows))
    if rows := volume_rows(run):
        console.print(
            _rich_table("Volume (memory after N requests in total)", VOLUME_HEADERS, rows)
        )
    if rows := protocol_rows(run):
        console.print(
            _rich_table("HTTP/1.1 or HTTP/2 between the weft proxies", PROTOCOL_HEADERS, rows)
        )
    for line in ratios(run) + protocol_lines(run) + load_notes(run):
        console.print(line)
    for _heading, group in _all_verdicts(run):
        for v in group:
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
    only_http1 = all(protocol_of(c.name) == "http1" for c in run.cases)
    where = "wrk and backend" if only_http1 else "load generators and backends"
    parts = [
        f"Run {run.started} ({run.seconds:.0f} s): `{' '.join(run.command)}`",
        "",
        f"Machine: {machine_line(run)}.",
        "",
        f"Load: {'; '.join(generators(run))}; {s['duration_s']} s per "
        f"phase after {s['warmup_s']} s of warm-up; fixed rate {s['rate']:,} rps; "
        + (
            f"measured server on CPU {s['cpu_server']}, {where} on CPU {s['cpu_load']}."
            if s["pin"]
            else "no CPU pinning."
        ),
        "",
        *([_md_table(LOAD_HEADERS, rows), ""] if (rows := load_rows(run)) else []),
        *[f"- {line}" for line in not_measured(run)],
        *[f"- {line}" for line in ratios(run)],
        *[f"- {line}" for line in load_notes(run)],
    ]
    for conn_title, headers, rows in connreport.conn_tables(run):
        parts += ["", f"{conn_title}:", "", _md_table(headers, rows)]
    if lines := connreport.conn_ratios(run):
        parts += ["", *[f"- {line}" for line in lines]]
    if rows := stream_rows(run):
        parts += ["", f"Streaming, {s['stream_bytes'] / 2**20:.0f} MiB each way:", ""]
        parts += [_md_table(STREAM_HEADERS, rows)]
    if rows := volume_rows(run):
        parts += ["", "Volume (memory after N requests in total):", ""]
        parts += [_md_table(VOLUME_HEADERS, rows)]
    if rows := protocol_rows(run):
        parts += ["", "HTTP/1.1 or HTTP/2 between the weft proxies:", ""]
        parts += [_md_table(PROTOCOL_HEADERS, rows), ""]
        parts += [f"- {line}" for line in protocol_lines(run)]
    for heading, group in _all_verdicts(run):
        parts += ["", heading, ""]
        parts += [f"- {v.target}: **{v.outcome}** ({v.detail})" for v in group]
    parts += [f"- note: {n}" for n in run.notes]
    # one blank line between blocks, also where a table was left out (no request-rate cases)
    return "\n".join(p for i, p in enumerate(parts) if p or i == 0 or parts[i - 1])
