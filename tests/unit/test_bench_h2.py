"""Unit tests of the benchmark's HTTP/2 and gRPC pieces that need no server: h2load's output and
log, the late-send count, percentiles, the gRPC client's result line, case selection and
settings, the connection count from /proc/net/tcp, and the HTTP/1.1-vs-HTTP/2 report."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from bench.grpc_load import REPLY, _Tally, frame, parse_args
from bench.h2load import (
    STAGGER_US,
    TIMER_US,
    H2load,
    LogRow,
    late_sends,
    parse_log,
    parse_output,
    to_load_run,
)
from bench.load import parse_result
from bench.model import CaseResult, Latency, LoadRun, Phase, RunResult, from_json
from bench.procfs import established_to
from bench.report import load_notes, protocol_lines, protocol_rows, ratios
from bench.settings import DEFAULT_CASES, H2_CASES, Settings, expand_cases, protocol_of
from hypothesis import given, settings
from hypothesis import strategies as st

# What h2load 1.52 prints (timing-based run, then a fixed-rate run).
H2LOAD_SATURATION = """\
starting benchmark...
spawning thread #0: 16 total client(s). Timing-based test with 0s of warm-up time and 1s of main duration for measurements.
Warm-up started for thread #0.
Main benchmark duration is started for thread #0.
Application protocol: h2c
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 1.00s, 132765.00 req/s, 8.61MB/s
requests: 132765 total, 132781 started, 132765 done, 132760 succeeded, 5 failed, 3 errored, 1 timeout
status codes: 132758 2xx, 0 3xx, 1 4xx, 1 5xx
traffic: 8.61MB (9028216) total, 6.08MB (6372720) headers (space savings 51.02%), 259.31KB (265530) data
                     min         max         mean         sd        +/- sd
time for request:       12us      3.59ms       105us        63us    96.82%
"""  # noqa: E501

H2LOAD_SHORT = """\
finished in 2.02ms, 4960.32 req/s, 353.13KB/s
requests: 10 total, 10 started, 10 done, 10 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 10 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 729B (729) total, 480B (480) headers (space savings 51.02%), 20B (20) data
"""


# -- h2load output and log ---------------------------------------------------------------------


def test_parse_output_reads_the_totals() -> None:
    s = parse_output(H2LOAD_SATURATION)
    assert s.seconds == pytest.approx(1.0)
    assert (s.done, s.succeeded, s.errored, s.timeout) == (132765, 132760, 3, 1)
    assert (s.status_4xx, s.status_5xx) == (1, 1)
    assert s.bytes == 9028216


def test_parse_output_converts_the_duration_unit() -> None:
    assert parse_output(H2LOAD_SHORT).seconds == pytest.approx(0.00202)


@pytest.mark.parametrize("missing", ["finished in", "requests:", "status codes:", "traffic:"])
def test_parse_output_names_a_missing_line(missing: str) -> None:
    text = "\n".join(ln for ln in H2LOAD_SHORT.splitlines() if not ln.startswith(missing))
    with pytest.raises(ValueError, match="no '"):
        parse_output(text)


def test_parse_output_rejects_an_error_message() -> None:
    with pytest.raises(ValueError, match="finished"):
        parse_output("No protocol negotiated\n")


def test_parse_log_reads_rows_and_failed_streams() -> None:
    rows = parse_log("1795697781848527\t200\t254\n1795697781848528\t-1\t272\n\n")
    assert rows == [
        LogRow(1795697781848527, 200, 254),
        LogRow(1795697781848528, -1, 272),
    ]


@pytest.mark.parametrize("bad", ["1\t200", "x\t200\t3", "1 200 3"])
def test_parse_log_names_the_bad_line(bad: str) -> None:
    with pytest.raises(ValueError, match="line 2"):
        parse_log(f"1\t200\t3\n{bad}\n")


def test_to_load_run_takes_latency_from_completed_requests_only() -> None:
    summary = parse_output(H2LOAD_SATURATION)
    rows = [LogRow(1_000_000 + i, 200, 100 + i) for i in range(100)]
    rows.append(LogRow(2_000_000, -1, 999_999))
    run = to_load_run(summary, rows, None, 16)
    assert run.requests == 132760
    assert run.latency.max == 199
    assert run.latency.p50 == 149
    assert run.errors == {"status": 2, "errored": 2, "timeout": 1}
    assert run.error_count == 5
    assert run.late == 0  # not counted at saturation


def test_to_load_run_counts_late_sends_at_a_fixed_rate() -> None:
    summary = parse_output(H2LOAD_SHORT)
    tolerance = TIMER_US + 4 * STAGGER_US
    on_time = [LogRow(i * 1000, 200, 50) for i in range(10)]  # 1,000 rps
    assert to_load_run(summary, on_time, 1000, 4).late == 0
    behind = [*on_time[:5], *(LogRow(r.start_us + tolerance + 1, 200, 50) for r in on_time[5:])]
    assert to_load_run(summary, behind, 1000, 4).late == 5


# -- late_sends --------------------------------------------------------------------------------


def test_late_sends_is_zero_without_requests() -> None:
    assert late_sends([], 100, 0) == 0


def test_late_sends_rejects_a_rate_of_zero() -> None:
    with pytest.raises(ValueError, match="rate"):
        late_sends([1, 2], 0, 10)


@given(
    rate=st.integers(1, 100_000),
    tolerance=st.integers(1, 20_000),
    data=st.data(),
)
@settings(max_examples=100, deadline=None)
def test_late_sends_spares_sends_within_the_tolerance(
    rate: int, tolerance: int, data: st.DataObject
) -> None:
    # each send at most tolerance - 1 us after its slot (the first on it): none is late
    delays = data.draw(st.lists(st.integers(0, tolerance - 1), min_size=1, max_size=300))
    delays[0] = 0
    starts = [10**15 + round(i * 1e6 / rate) + d for i, d in enumerate(delays)]
    assert late_sends(data.draw(st.permutations(starts)), rate, tolerance) == 0


@given(rate=st.integers(1, 10_000), n=st.integers(2, 200), stall=st.integers(1, 199))
@settings(max_examples=100, deadline=None)
def test_late_sends_counts_every_request_after_a_stall(rate: int, n: int, stall: int) -> None:
    stall = min(stall, n - 1)
    tolerance = 10_000
    starts = [round(i * 1e6 / rate) for i in range(n)]
    stalled = starts[:stall] + [s + tolerance + 1_000 for s in starts[stall:]]
    assert late_sends(stalled, rate, tolerance) == n - stall


# -- h2load command line -----------------------------------------------------------------------


def test_h2load_argv_at_saturation_is_timing_based() -> None:
    argv = H2load(8080, Path("/w"), clients=16, streams=10).argv(10, None, Path("/w/log"))
    assert argv[0] == "h2load"
    assert {"-t1", "-c16", "-m10", "-D", "10s", "--log-file=/w/log"} <= set(argv)
    assert argv[-1] == "http://127.0.0.1:8080/"
    assert not any(a.startswith(("--rps", "-n")) for a in argv)


def test_h2load_argv_at_a_fixed_rate_staggers_the_connections() -> None:
    argv = H2load(8080, Path("/w"), clients=16, streams=1).argv(10, 2000, Path("/w/log"))
    assert {"-n20000", "--rps=125", "-r1", "--rate-period=1ms", "-m1"} <= set(argv)
    assert "-D" not in argv


def test_h2load_argv_rejects_a_rate_that_does_not_split() -> None:
    with pytest.raises(ValueError, match="multiple"):
        H2load(8080, Path("/w"), clients=16, streams=1).argv(10, 1000 + 1, Path("/w/log"))


def test_h2load_argv_rejects_a_fraction_of_a_second() -> None:
    with pytest.raises(ValueError, match="duration_s"):
        H2load(8080, Path("/w"), clients=1, streams=1).argv(0, None, Path("/w/log"))


# -- percentiles -------------------------------------------------------------------------------


def test_latency_of_nothing_is_zero() -> None:
    assert Latency.of([]) == Latency(0, 0, 0, 0, 0, 0.0)


def test_latency_of_takes_the_nearest_rank() -> None:
    lat = Latency.of(list(range(1, 1001)))  # 1..1000 us
    assert (lat.p50, lat.p90, lat.p99, lat.p999, lat.max) == (500, 900, 990, 999, 1000)
    assert lat.mean == 500.5


@given(st.lists(st.integers(0, 10**7), min_size=1, max_size=500))
def test_latency_percentiles_are_ordered_observed_values(values: list[int]) -> None:
    lat = Latency.of(values)
    assert min(values) <= lat.p50 <= lat.p90 <= lat.p99 <= lat.p999 <= lat.max == max(values)
    assert {lat.p50, lat.p90, lat.p99, lat.p999} <= set(values)


# -- the gRPC client's result ------------------------------------------------------------------


def test_frame_is_a_length_prefixed_message() -> None:
    assert frame(REPLY) == b"\x00\x00\x00\x00\x02ok"
    assert frame(b"") == b"\x00" * 5


def test_grpc_client_result_reads_as_a_load_run() -> None:
    tally = _Tally(RuntimeError)
    tally.latencies_us = [300, 100, 200]
    tally.errors.update({"unavailable": 2, "bad_reply": 1})
    tally.bytes = 6
    tally.late = 4
    run = parse_result(json.dumps(tally.result(1.5)))
    assert run == LoadRun(
        requests=3,
        duration_s=1.5,
        bytes=6,
        latency=Latency(200, 300, 300, 300, 300, 200.0),
        errors={"unavailable": 2, "bad_reply": 1},
        late=4,
    )
    assert run.rps == 2.0
    assert run.error_count == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "1", "--concurrency", "2", "--channels", "3", "--duration", "1"], "channels"),
        (["--port", "1", "--concurrency", "0", "--duration", "1"], "must be > 0"),
        (["--port", "x", "--concurrency", "1", "--duration", "1"], "not a whole number"),
        (["--port", "1", "--concurrency", "1"], "--duration"),
    ],
)
def test_grpc_client_rejects_bad_arguments(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# -- cases and settings ------------------------------------------------------------------------


def test_default_run_has_only_the_http1_cases() -> None:
    assert Settings().cases == DEFAULT_CASES
    assert {protocol_of(c) for c in DEFAULT_CASES} == {"http1"}


def test_protocol_of_each_kind() -> None:
    assert protocol_of("weft-mtls") == "http1"
    assert protocol_of("envoy-h2-mtls") == "h2"
    assert protocol_of("weft-grpc") == "grpc"


def test_expand_cases_expands_groups_in_order_once() -> None:
    assert expand_cases("weft-h2, h2") == H2_CASES[1:2] + H2_CASES[:1] + H2_CASES[2:]
    assert expand_cases("mesh-protocols") == ("weft", "weft-h2", "weft-mtls", "weft-h2-mtls")
    assert expand_cases("grpc,weft") == ("direct-grpc", "weft-grpc", "envoy-grpc", "weft")
    assert expand_cases("none") == ()
    assert expand_cases("") == ()


def test_expand_cases_leaves_unknown_names_for_settings_to_reject() -> None:
    cases = expand_cases("weft,h3")
    with pytest.raises(ValueError, match="unknown case 'h3'"):
        Settings(cases=cases)


def test_settings_need_a_rate_that_splits_over_the_h2load_clients() -> None:
    with pytest.raises(ValueError, match="h2_clients=16"):
        Settings(cases=("weft-h2",), rate=1002)
    Settings(cases=("weft",), rate=1002)  # no HTTP/2 case: no constraint
    Settings(cases=("weft-h2",), rate=1002, h2_clients=2)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"h2_clients": 0}, "h2_clients"),
        ({"h2_streams": 0}, "h2_streams"),
        ({"grpc_concurrency": 0}, "grpc_concurrency"),
        ({"grpc_channels": 0}, "grpc_channels"),
        ({"grpc_channels": 5, "grpc_concurrency": 4}, "idle"),
    ],
)
def test_settings_reject_bad_load_shapes(changes: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(cases=("weft-grpc", "weft-h2"), **changes)  # type: ignore[arg-type]


# -- connections between a pair ------------------------------------------------------------------

PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:A000 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 0100007F:1F90 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 3 1
   3: 0100007F:A001 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4 1
   4: 0100007F:A002 0100007F:1F90 06 00000000:00000000 00:00000000 00000000     0        0 5 1
   5: 0100007F:A003 0100007F:1F91 01 00000000:00000000 00:00000000 00000000     0        0 6 1
   6: garbage
"""


def test_established_to_counts_the_dialing_ends_only() -> None:
    # 0x1F90 = 8080: two established connections dial it; a TIME_WAIT one and a listener don't
    assert established_to(PROC_NET_TCP, 8080) == 2
    assert established_to(PROC_NET_TCP, 8081) == 1
    assert established_to(PROC_NET_TCP, 9) == 0
    assert established_to("", 8080) == 0


# -- the report: HTTP/1.1 or HTTP/2 between the proxies ----------------------------------------


def _phase(name: str, requests: int, cpu_s: float, p99: int, conns: int | None) -> Phase:
    latency = Latency(p99 // 2, p99, p99, p99, p99, float(p99 // 2))
    return Phase(
        name=name,
        round=0,
        target_rps=None if name == "saturation" else 2000,
        load=LoadRun(requests, 1.0, 0, latency, {}, 0),
        cpu_user_s=cpu_s,
        cpu_system_s=0.0,
        pair_connections=conns,
        load_cpu_s=0.95 if name == "saturation" else 0.3,
    )


def _case(name: str, cpu_us: float, p99: int, conns: int | None = None) -> CaseResult:
    phases = tuple(
        _phase(phase, 10_000, cpu_us * 10_000 / 1e6, p99, conns)
        for phase in ("saturation", "fixed")
    )
    return CaseResult(name=name, status="ok", phases=phases, rss_kib=50_000, hwm_kib=51_000)


def _run(cases: tuple[CaseResult, ...], h2_streams: int = 1) -> RunResult:
    s = Settings(cases=tuple(c.name for c in cases), h2_streams=h2_streams)
    return RunResult("t", [], asdict(s), {}, cases, 1.0)


def test_protocol_rows_need_both_pairs() -> None:
    assert protocol_rows(_run((_case("weft-mtls", 100, 2000, 16),))) == []
    assert protocol_lines(_run((_case("weft-mtls", 100, 2000, 16),))) == []


def test_protocol_rows_and_the_estimate() -> None:
    run = _run(
        (
            _case("weft", 50, 1000),
            _case("weft-h2", 80, 1000),
            _case("weft-mtls", 100, 2000, 16),
            _case("weft-h2-mtls", 150, 3000, 1),
        )
    )
    rows = protocol_rows(run)
    assert [r[:4] for r in rows] == [
        ["HTTP/1.1, pooled", "weft-mtls", "wrk -c16", "16"],
        ["HTTP/2", "weft-h2-mtls", "h2load -c16 -m1", "16"],
    ]
    assert [r[9] for r in rows] == ["16 / 16", "1 / 1"]
    lines = protocol_lines(run)
    assert "CPU per request HTTP/2 / HTTP/1.1 between the proxies (fixed): 1.50x" in lines
    assert "p99 HTTP/2 / HTTP/1.1 between the proxies (saturation): 1.50x" in lines
    estimate = next(ln for ln in lines if ln.startswith("estimate (fixed)"))
    assert "150.0 - 80.0 + 50.0 = 120.0 us/request, against 100.0 over HTTP/1.1" in estimate
    assert not any("concurrency" in ln for ln in lines)


def test_the_estimate_says_when_a_case_fell_behind_the_fixed_rate() -> None:
    slow = _case("weft-h2-mtls", 150, 3000, 1)
    phases = tuple(
        replace(p, load=replace(p.load, duration_s=10.0)) if p.name == "fixed" else p
        for p in slow.phases
    )  # 10,000 requests in 10 s: 1,000 rps of 2,000
    run = _run(
        (
            _case("weft", 50, 1000),
            _case("weft-h2", 80, 1000),
            _case("weft-mtls", 100, 2000, 16),
            replace(slow, phases=phases),
        )
    )
    assert "weft-h2-mtls did not keep up with the fixed rate" in "\n".join(protocol_lines(run))


def test_protocol_lines_warn_when_the_concurrency_differs() -> None:
    run = _run((_case("weft-mtls", 100, 2000, 16), _case("weft-h2-mtls", 150, 3000, 1)), 10)
    lines = protocol_lines(run)
    assert any("16 requests in flight with wrk, 160 with h2load" in ln for ln in lines)
    assert not any(ln.startswith("estimate") for ln in lines)


def test_ratios_pair_each_weft_case_with_its_envoy_case() -> None:
    run = _run((_case("weft-grpc", 100, 2000), _case("envoy-grpc", 200, 4000)))
    assert ratios(run) == [
        "CPU per request weft-grpc/envoy-grpc (saturation): 0.50x",
        "CPU per request weft-grpc/envoy-grpc (fixed): 0.50x",
        "p99 weft-grpc/envoy-grpc (saturation): 0.50x",
        "p99 weft-grpc/envoy-grpc (fixed): 0.50x",
    ]


def test_load_notes_name_a_saturated_load_generator() -> None:
    (note,) = load_notes(_run((_case("weft-grpc", 100, 2000),)))
    assert note.startswith("weft-grpc: the gRPC client used 95% of a CPU at saturation")


def test_results_round_trip_and_older_files_read() -> None:
    run = _run((_case("weft-h2-mtls", 150, 3000, 1),))
    again = from_json(json.loads(json.dumps(run.to_json())))
    assert again.cases == run.cases
    # before the HTTP/2 cases a phase's load run was stored as "wrk", without the new fields
    data = run.to_json()
    for phase in data["cases"][0]["phases"]:
        phase["wrk"] = phase.pop("load")
        del phase["pair_connections"], phase["load_cpu_s"]
    old = from_json(data).cases[0].phases[0]
    assert old.load == run.cases[0].phases[0].load
    assert old.pair_connections is None and old.load_busy is None


def _rounds(name: str, p99s: list[int]) -> CaseResult:
    phases = tuple(
        replace(_phase(phase, 10_000, 0.5, p99, None), round=k)
        for k, p99 in enumerate(p99s)
        for phase in ("saturation", "fixed")
    )
    return CaseResult(name=name, status="ok", phases=phases, rss_kib=50_000, hwm_kib=51_000)


def test_ratios_show_the_p99_of_each_round_beside_the_median() -> None:
    run = _run((_rounds("weft-grpc", [900, 2200, 1000]), _rounds("envoy-grpc", [1000, 2000, 800])))
    lines = ratios(run)
    assert "p99 weft-grpc/envoy-grpc (saturation): 1.00x" in lines  # medians: 1000 and 1000
    assert (
        "p99 weft-grpc/envoy-grpc round by round (saturation): 0.90 1.10 1.25; "
        "lower in 1 of 3 rounds"
    ) in lines


def test_round_by_round_needs_two_rounds_in_common() -> None:
    run = _run((_rounds("weft-grpc", [900]), _rounds("envoy-grpc", [1000])))
    assert not any("round by round" in line for line in ratios(run))
