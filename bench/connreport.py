"""Tables, ratios and verdicts of the connection cases (issue 12) from a
:class:`~bench.model.RunResult`.

Three tables: churn (a new connection per request: CPU per connection at saturation and at the
fixed rate), many keep-alive connections (p99, max, answers slower than 1 s) and idle connections
(RSS before, open, peak, after; bytes per idle connection; whether RSS came back; the normal
requests sent meanwhile; the connections the backend accepted). Then weft's ratio to each anchor
(``envoy-conn``, ``nginx-conn``, ``haproxy-conn``), over the medians and round by round (the
cases take turns within a round, so a round's figures come from the machine in much the same
state: on a shared machine, those are the ones to compare), and the verdicts against the issue's
targets (:func:`conn_verdicts`).

Not for: measuring (:mod:`bench.conn`), or the request-rate cases (:mod:`bench.report`).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

from bench.model import CaseResult, IdleRun, Latency, RunResult, mb
from bench.settings import CONN_CASES

WEFT = "weft-conn"
ANCHORS = ("envoy-conn", "nginx-conn", "haproxy-conn")
CHURN_ENVOY_FACTOR = 0.7
CHURN_NGINX_FACTOR = 2.5
IDLE_BYTES_LIMIT = 2000  # 2 KB (decimal, as the MB of the other targets)
SLOW_US = 1_000_000
SHAPES = ("idle-silent", "idle-request")
# below this many bytes an anchor's RSS growth per idle connection is noise (or none: nginx
# allocates its connection slots up front), and weft's over it is no ratio
MIN_IDLE_BYTES = 50.0
CHURN_PHASES = (("churn", "saturation"), ("churn-fixed", "fixed rate"))


def conn_cases(run: RunResult) -> list[CaseResult]:
    """The connection cases of the run, measured or not, in run order."""
    return [c for c in run.cases if c.name in CONN_CASES]


def _ms(us: float) -> str:
    return f"{us / 1000:.3f}"


def _range(values: list[float]) -> str:
    if not values:
        return "-"
    mid = statistics.median(values)
    if len(values) == 1:
        return f"{mid:.1f}"
    return f"{mid:.1f} ({min(values):.1f}-{max(values):.1f})"


def _cpu_values(case: CaseResult, phase: str) -> list[float]:
    return [c for p in case.phases if p.name == phase and (c := p.cpu_us_per_request) is not None]


CHURN_HEADERS = (
    "case",
    "conn/s (sat)",
    "CPU us/conn (sat)",
    "conn/s (fixed)",
    "p99 ms (fixed)",
    "CPU us/conn (fixed)",
)


def churn_rows(run: RunResult) -> list[list[str]]:
    rows = []
    for c in conn_cases(run):
        sat, fixed = c.summary("churn"), c.summary("churn-fixed")
        if c.status != "ok" or sat is None:
            continue
        row = [c.name, _trouble(f"{sat.rps:,.0f}", sat.errors, sat.late)]
        row.append(_range(_cpu_values(c, "churn")))
        if fixed is None:
            row += ["-", "-", "-"]
        else:
            row += [_trouble(f"{fixed.rps:,.0f}", fixed.errors, fixed.late), _ms(fixed.p99_us)]
            row.append(_range(_cpu_values(c, "churn-fixed")))
        rows.append(row)
    return rows


def _trouble(cell: str, errors: int, late: int) -> str:
    return cell + (f", {errors:,} errors" if errors else "") + (f", {late:,} late" if late else "")


MANY_HEADERS = (
    "case",
    "rps",
    "p50 ms",
    "p99 ms",
    "max ms",
    "over 1 s",
    "timeouts",
    "errors",
    "CPU us/req",
)


def _over_1s(case: CaseResult) -> int:
    """Answers slower than 1 s over the rounds, and the timeouts (wrk's 10 s: slower still)."""
    many = [p for p in case.phases if p.name == "many"]
    return sum((p.load.over_1s or 0) + p.load.errors.get("timeout", 0) for p in many)


def many_rows(run: RunResult) -> list[list[str]]:
    rows = []
    for c in conn_cases(run):
        s = c.summary("many")
        if c.status != "ok" or s is None:
            continue
        many = [p for p in c.phases if p.name == "many"]
        timeouts = sum(p.load.errors.get("timeout", 0) for p in many)
        rows.append(
            [
                c.name,
                f"{s.rps:,.0f}",
                _ms(s.p50_us),
                _ms(s.p99_us),
                _ms(max(p.load.latency.max for p in many)),
                f"{sum(p.load.over_1s or 0 for p in many):,}",
                f"{timeouts:,}",
                f"{s.errors - timeouts:,}",
                _range(_cpu_values(c, "many")),
            ]
        )
    return rows


IDLE_HEADERS = (
    "case",
    "shape",
    "open",
    "RSS MB before",
    "RSS MB open",
    "RSS MB peak",
    "RSS MB after",
    "bytes/conn",
    "RSS back (<= +10%)",
    "probe p50 / max ms",
    "probes failed",
    "backend accepts",
    "closed by case",
)


def _idle(case: CaseResult, shape: str) -> list[IdleRun]:
    return [r for r in case.idle if r.shape == shape]


def idle_bytes(runs: list[IdleRun]) -> float | None:
    """Median over the rounds of the RSS growth per idle connection, in bytes."""
    values = [b for r in runs if (b := r.bytes_per_connection) is not None]
    return statistics.median(values) if values else None


def idle_rows(run: RunResult) -> list[list[str]]:
    rows = []
    for c in conn_cases(run):
        for shape in SHAPES:
            runs = _idle(c, shape)
            if c.status != "ok" or not runs:
                continue

            def med(get: Callable[[IdleRun], int], runs: list[IdleRun] = runs) -> str:
                return f"{mb(round(statistics.median(get(r) for r in runs))):.1f}"

            per = idle_bytes(runs)
            probes = Latency.of([x for r in runs for x in r.probe_latencies_us])
            opened = "/".join(f"{r.opened:,}" for r in runs)
            rows.append(
                [
                    c.name,
                    shape,
                    opened + (f" of {runs[0].asked:,}" if any(r.failed for r in runs) else ""),
                    med(lambda r: r.rss_before_kib),
                    med(lambda r: r.rss_open_kib),
                    med(lambda r: r.rss_peak_kib),
                    med(lambda r: r.rss_after_kib),
                    "-" if per is None else f"{per:,.0f}",
                    f"{sum(r.returned for r in runs)} of {len(runs)} rounds",
                    f"{_ms(probes.p50)} / {_ms(probes.max)}",
                    f"{sum(r.probe_failures for r in runs)}",
                    "/".join(
                        "?" if r.backend_accepts is None else f"{r.backend_accepts:,}" for r in runs
                    ),
                    "/".join(f"{r.closed_by_server:,}" for r in runs),
                ]
            )
    return rows


def _by_round(
    weft: CaseResult,
    anchor: CaseResult,
    metric: Callable[[CaseResult, int], float | None],
    least: float = 1e-9,
) -> list[float]:
    """weft's figure over the anchor's, for each round both have (the rounds they shared)."""
    rounds = sorted({p.round for p in weft.phases} | {r.round for r in weft.idle})
    out = []
    for rnd in rounds:
        a, b = metric(weft, rnd), metric(anchor, rnd)
        if a is not None and b is not None and b >= least:
            out.append(a / b)
    return out


def _phase_cpu(phase: str) -> Callable[[CaseResult, int], float | None]:
    def get(case: CaseResult, rnd: int) -> float | None:
        p = next((p for p in case.phases if p.name == phase and p.round == rnd), None)
        return None if p is None else p.cpu_us_per_request

    return get


def _phase_p99(phase: str) -> Callable[[CaseResult, int], float | None]:
    def get(case: CaseResult, rnd: int) -> float | None:
        p = next((p for p in case.phases if p.name == phase and p.round == rnd), None)
        return None if p is None else float(p.load.latency.p99)

    return get


def _idle_per_conn(shape: str) -> Callable[[CaseResult, int], float | None]:
    def get(case: CaseResult, rnd: int) -> float | None:
        r = next((r for r in case.idle if r.shape == shape and r.round == rnd), None)
        return None if r is None else r.bytes_per_connection

    return get


def _median_of(case: CaseResult, metric: Callable[[CaseResult, int], float | None]) -> float | None:
    rounds = {p.round for p in case.phases} | {r.round for r in case.idle}
    values = [v for rnd in rounds if (v := metric(case, rnd)) is not None]
    return statistics.median(values) if values else None


def _metrics() -> list[tuple[str, Callable[[CaseResult, int], float | None], float]]:
    """(what, the figure of a case in a round, the least anchor figure a ratio is taken of)."""
    return [
        ("CPU per connection (churn, saturation)", _phase_cpu("churn"), 1e-9),
        ("CPU per connection (churn, fixed rate)", _phase_cpu("churn-fixed"), 1e-9),
        ("p99 (many keep-alive connections)", _phase_p99("many"), 1e-9),
        *[(f"bytes per idle connection ({s})", _idle_per_conn(s), MIN_IDLE_BYTES) for s in SHAPES],
    ]


def conn_ratios(run: RunResult) -> list[str]:
    """weft's figures over each anchor's: the ratio of the medians and the ratio in each round."""
    weft = run.case(WEFT)
    if weft is None:
        return []
    out = []
    for what, metric, least in _metrics():
        for name in ANCHORS:
            anchor = run.case(name)
            if anchor is None:
                continue
            a, b = _median_of(weft, metric), _median_of(anchor, metric)
            if a is None or b is None:
                continue
            short = name.removesuffix("-conn")
            if b < least:  # e.g. an RSS that did not grow: a ratio would mean nothing
                out.append(f"{what}: weft {a:,.0f}, {short} {b:,.0f}: no ratio")
                continue
            rounds = _by_round(weft, anchor, metric, least)
            per = " ".join(f"{r:.2f}" for r in rounds)
            out.append(
                f"{what} weft/{short}: {a / b:.2f}x"
                + (f" (round by round: {per})" if len(rounds) > 1 else "")
            )
    return out


def _verdict(target: str, ok: bool | None, detail: str) -> tuple[str, str, str]:
    return target, "n/a" if ok is None else "pass" if ok else "FAIL", detail


def conn_verdicts(run: RunResult) -> list[tuple[str, str, str]]:
    """(target, pass/FAIL/n/a, detail) for each of issue 12's targets, from this run."""
    weft, envoy, nginx = run.case(WEFT), run.case("envoy-conn"), run.case("nginx-conn")
    out = []
    for phase, label in CHURN_PHASES:
        w = None if weft is None else _median_of(weft, _phase_cpu(phase))
        for anchor, factor, name in (
            (envoy, CHURN_ENVOY_FACTOR, "Envoy"),
            (nginx, CHURN_NGINX_FACTOR, "nginx"),
        ):
            a = None if anchor is None else _median_of(anchor, _phase_cpu(phase))
            target = f"churn: CPU per connection at most {factor:g}x {name}'s ({label})"
            if w is None or a is None:
                out.append(_verdict(target, None, f"weft-conn or {name} not measured"))
            else:
                detail = f"weft {w:.1f} us vs {name} {a:.1f} us: {w / a:.2f}x"
                out.append(_verdict(target, w <= factor * a, detail))
    w99 = None if weft is None else _median_of(weft, _phase_p99("many"))
    e99 = None if envoy is None else _median_of(envoy, _phase_p99("many"))
    target = "many connections: p99 at most Envoy's"
    if w99 is None or e99 is None:
        out.append(_verdict(target, None, "weft-conn or envoy-conn not measured"))
    else:
        detail = f"weft {_ms(w99)} ms vs Envoy {_ms(e99)} ms: {w99 / e99:.2f}x"
        out.append(_verdict(target, w99 <= e99, detail))
    target = "many connections: no request over 1 s"
    if weft is None or weft.summary("many") is None:
        out.append(_verdict(target, None, "weft-conn not measured"))
    else:
        slow = _over_1s(weft)
        out.append(_verdict(target, slow == 0, f"{slow:,} over 1 s, timeouts included"))
    for shape in SHAPES:
        runs = [] if weft is None else _idle(weft, shape)
        per = idle_bytes(runs)
        target = f"{shape}: at most {IDLE_BYTES_LIMIT / 1000:g} KB per idle connection"
        if per is None:
            out.append(_verdict(target, None, "weft-conn not measured"))
            continue
        out.append(_verdict(target, per <= IDLE_BYTES_LIMIT, f"{per:,.0f} bytes (median)"))
        back = sum(r.returned for r in runs)
        detail = "; ".join(
            f"{mb(r.rss_before_kib):.1f} -> {mb(r.rss_after_kib):.1f} MB" for r in runs
        )
        out.append(
            _verdict(f"{shape}: RSS back within 10% after they close", back == len(runs), detail)
        )
        failed = sum(r.probe_failures for r in runs)
        served = sum(len(r.probe_latencies_us) for r in runs)
        dials = "/".join(
            "?" if r.backend_accepts is None else f"{r.backend_accepts:,}" for r in runs
        )
        out.append(
            _verdict(
                f"{shape}: normal requests served while they are open",
                failed == 0,
                f"{served} served, {failed} failed; backend accepted {dials} connections (rounds)",
            )
        )
    return out


def conn_tables(run: RunResult) -> list[tuple[str, Sequence[str], list[list[str]]]]:
    """The connection cases' tables (title, headers, rows), those with rows."""
    s = run.settings
    tables = [
        (
            f"Connection churn (wrk -c{s['connections']}, Connection: close; fixed rate "
            f"{s['rate']:,} connections/s)",
            CHURN_HEADERS,
            churn_rows(run),
        ),
        (
            f"{s.get('many_connections', 0):,} keep-alive connections (wrk "
            f"-t{s.get('many_threads', 0)} -c{s.get('many_connections', 0)}, saturation)",
            MANY_HEADERS,
            many_rows(run),
        ),
        (
            f"{s.get('idle_connections', 0):,} idle connections (silent: held "
            f"{s.get('idle_hold_s', 0):g} s; after one request: held "
            f"{s.get('idle_request_hold_s', 0):g} s; RSS after {s.get('idle_settle_s', 0):g} s)",
            IDLE_HEADERS,
            idle_rows(run),
        ),
    ]
    return [(title, headers, rows) for title, headers, rows in tables if rows]
