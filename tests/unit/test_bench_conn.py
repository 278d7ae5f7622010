"""Unit tests of the benchmark's connection cases (issue 12) that need no proxy: the HTTP/1.1
response framing and the idle clients (against small loopback servers), nginx's stub_status,
wrk's result line with the count of slow answers, the settings and case group, the results'
JSON round trip and the connection report (tables, ratios round by round, verdicts)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from bench.conn import parse_stub_status
from bench.connreport import (
    churn_rows,
    conn_ratios,
    conn_verdicts,
    idle_rows,
    many_rows,
)
from bench.idle import IdleClients, response_end
from bench.load import parse_result, run_wrk
from bench.model import CaseResult, IdleRun, Latency, LoadRun, Phase, RunResult, from_json
from bench.report import load_rows, markdown
from bench.settings import CONN_CASES, DEFAULT_CASES, Settings, expand_cases, is_conn_case
from bench.targets import worker_connections

# --- response framing ------------------------------------------------------------------------


def test_response_end_content_length() -> None:
    whole = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: x\r\n\r\nok"
    assert response_end(whole) == (200, len(whole))
    assert response_end(whole[:-1]) is None
    assert response_end(whole[:10]) is None


def test_response_end_chunked_and_bodiless() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    assert response_end(chunked) == (200, len(chunked))
    assert response_end(chunked[:-2]) is None
    assert response_end(b"HTTP/1.1 204 No Content\r\n\r\n") == (204, 27)


@pytest.mark.parametrize(
    "bad",
    [
        b"SSH-2.0-x\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\nbody until close",
        b"x" * 20000,
    ],
)
def test_response_end_rejects(bad: bytes) -> None:
    with pytest.raises(ValueError):
        response_end(bad)


# --- idle clients against loopback servers ---------------------------------------------------


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize("request_first", [False, True])
def test_idle_clients_open_and_hold(http_server: int, request_first: bool) -> None:
    clients = IdleClients(http_server, 20, request=request_first, in_flight=4)
    try:
        clients.open(timeout_s=30)
        clients.wait(0.2)
        assert (clients.opened, clients.failed, clients.closed_by_server) == (20, 0, 0)
        assert clients.errors == {}
    finally:
        clients.close()


def test_idle_clients_count_what_the_server_closes() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        stop = threading.Event()

        def close_each() -> None:  # accept and close at once
            listener.settimeout(0.2)
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                conn.close()

        thread = threading.Thread(target=close_each, daemon=True)
        thread.start()
        clients = IdleClients(port, 10, request=False)
        try:
            clients.open(timeout_s=30)
            deadline = time.monotonic() + 30
            while clients.closed_by_server < 10 and time.monotonic() < deadline:
                clients.wait(0.1)
            assert clients.opened == 10
            assert clients.closed_by_server == 10
            assert clients.open_now == 0
        finally:
            clients.close()
            stop.set()
            thread.join(timeout=10)


def test_idle_clients_count_refused_connections() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clients = IdleClients(port, 5, request=False)
    try:
        clients.open(timeout_s=30)
    finally:
        clients.close()
    assert (clients.opened, clients.failed) == (0, 5)
    assert sum(clients.errors.values()) == 5


# --- nginx stub_status, wrk's result ---------------------------------------------------------

# nginx ends its lines with a space
STUB_STATUS = (
    "Active connections: 291 \n"
    "server accepts handled requests\n"
    " 16630948 16630948 31070465 \n"
    "Reading: 6 Writing: 179 Waiting: 106 \n"
)


def test_parse_stub_status() -> None:
    assert parse_stub_status(STUB_STATUS) == 16630948
    with pytest.raises(ValueError):
        parse_stub_status("Active connections: 1\n")


WRK_LINE = (
    '{"requests": 1000, "duration_us": 2000000, "bytes": 5000, '
    '"errors": {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 2}, '
    '"latency_us": {"p50": 100, "p90": 200, "p99": 900000, "p999": 1500000, "max": 2000000, '
    '"mean": 150.5}, "late": 0'
)


def test_parse_result_counts_slow_answers() -> None:
    assert parse_result(WRK_LINE + ', "over_1s": 7}').over_1s == 7
    assert parse_result(WRK_LINE + "}").over_1s is None  # results before the count


def test_run_wrk_refuses_a_paced_run_on_several_threads(tmp_path: object) -> None:
    with pytest.raises(ValueError, match="threads"):
        run_wrk(1, workdir=tmp_path, connections=4, duration_s=1, rate=100, threads=2)  # type: ignore[arg-type]


# --- settings --------------------------------------------------------------------------------


def test_conn_group_is_opt_in() -> None:
    assert expand_cases("conn") == CONN_CASES
    assert all(is_conn_case(c) for c in CONN_CASES)
    assert not any(is_conn_case(c) for c in DEFAULT_CASES)
    assert Settings(cases=expand_cases("weft-conn,envoy-conn")).cases == ("weft-conn", "envoy-conn")


def test_settings_reject_bad_connection_shapes() -> None:
    with pytest.raises(ValueError, match="many_connections"):
        Settings(many_connections=1, many_threads=2)
    with pytest.raises(ValueError, match="idle_connections"):
        Settings(idle_connections=0)
    with pytest.raises(ValueError, match="idle_hold_s"):
        Settings(idle_hold_s=0)
    quick = Settings.for_preset("quick")
    assert quick.idle_connections < Settings().idle_connections


def test_nginx_connection_limit_fits_the_idle_shapes() -> None:
    assert worker_connections(Settings()) == 4096
    s = Settings(cases=CONN_CASES, idle_connections=10_000)
    assert worker_connections(s) >= 2 * 10_000


# --- results and report ----------------------------------------------------------------------


def _load(requests: int, p99: int, *, over: int = 0, maximum: int | None = None) -> LoadRun:
    lat = Latency(p50=p99 // 2, p90=p99, p99=p99, p999=p99, max=maximum or p99, mean=p99 / 2)
    return LoadRun(requests, 10.0, requests * 100, lat, {"timeout": 0}, 0, over_1s=over)


def _phases(rnd: int, churn_us: float, p99: int, over: int) -> list[Phase]:
    """A round of wrk phases whose CPU per request is ``churn_us`` (10,000 requests each)."""
    cpu_s = churn_us * 10_000 / 1e6
    return [
        Phase("churn", rnd, None, _load(10_000, 500), cpu_s, 0.0),
        Phase("churn-fixed", rnd, 2000, _load(10_000, 800), cpu_s * 1.5, 0.0),
        Phase("many", rnd, None, _load(10_000, p99, over=over, maximum=p99 * 2), 0.5, 0.0),
    ]


def _idle(rnd: int, shape: str, per_conn: int, after_kib: int) -> IdleRun:
    before = 30_000
    return IdleRun(
        shape=shape,
        round=rnd,
        asked=10_000,
        opened=10_000,
        failed=0,
        open_s=1.5,
        hold_s=13.0,
        settle_s=5.0,
        rss_before_kib=before,
        rss_open_kib=before + per_conn * 10_000 // 1024,
        rss_peak_kib=before + per_conn * 10_000 // 1024,
        rss_after_kib=after_kib,
        probe_latencies_us=(900, 1200),
        probe_failures=0,
        closed_by_server=0,
        backend_accepts=10_000 if shape == "idle-silent" else 3,
        backend_most=10_000,
    )


def _case(name: str, churn: list[float], p99: list[int], per_conn: int, after: int) -> CaseResult:
    phases = [
        p for r, (c, q) in enumerate(zip(churn, p99, strict=True)) for p in _phases(r, c, q, 0)
    ]
    idle = tuple(
        _idle(r, shape, per_conn, after)
        for r in range(len(churn))
        for shape in ("idle-silent", "idle-request")
    )
    return CaseResult(name=name, status="ok", phases=tuple(phases), idle=idle)


def _run() -> RunResult:
    settings = {
        "duration_s": 10,
        "warmup_s": 2,
        "rate": 2000,
        "pin": True,
        "cpu_server": 1,
        "cpu_load": 0,
        "connections": 16,
        "many_connections": 1000,
        "many_threads": 2,
        "idle_connections": 10_000,
        "idle_hold_s": 13.0,
        "idle_request_hold_s": 3.0,
        "idle_settle_s": 5.0,
        "stream_bytes": 1,
    }
    cases = (
        # weft: 230 us per connection, p99 2 s, 4.9 KB per idle connection, RSS not back
        _case("weft-conn", [230.0, 240.0, 220.0], [2_000_000, 3_000_000, 2_500_000], 4900, 40_000),
        _case("nginx-conn", [50.0, 60.0, 55.0], [60_000, 70_000, 65_000], 0, 30_000),
        _case("haproxy-conn", [60.0, 60.0, 60.0], [60_000, 60_000, 60_000], 1200, 30_500),
        _case("envoy-conn", [170.0, 160.0, 180.0], [190_000, 200_000, 180_000], 4000, 31_000),
    )
    return RunResult("2026-01-01T00:00:00Z", ["python"], settings, {}, cases, 1.0)


def test_json_round_trip_keeps_the_connection_figures() -> None:
    run = _run()
    back = from_json(json.loads(json.dumps(run.to_json())))
    assert back == run
    weft = back.case("weft-conn")
    assert weft is not None
    assert weft.idle[0].bytes_per_connection == pytest.approx(4900, rel=0.01)
    assert not weft.idle[0].returned


def test_connection_tables() -> None:
    run = _run()
    churn = churn_rows(run)
    assert [r[0] for r in churn] == list(CONN_CASES)
    assert churn[0][2] == "230.0 (220.0-240.0)"
    many = many_rows(run)
    assert many[0][3] == "2500.000" and many[0][4] == "6000.000"  # p99 median, max over rounds
    idle = idle_rows(run)
    assert len(idle) == 8
    weft_silent = idle[0]
    assert weft_silent[:2] == ["weft-conn", "idle-silent"]
    assert weft_silent[7] == "4,900" and weft_silent[8] == "0 of 3 rounds"
    assert weft_silent[11] == "10,000/10,000/10,000"
    # the request-rate table leaves the connection cases out
    assert load_rows(run) == []


def test_connection_ratios_round_by_round() -> None:
    lines = conn_ratios(_run())
    churn = next(
        ln for ln in lines if ln.startswith("CPU per connection (churn, saturation) weft/envoy")
    )
    assert "1.35x" in churn  # 230 / 170 (medians)
    assert "round by round: 1.35 1.50 1.22" in churn
    # nginx's RSS did not grow per idle connection: no ratio
    assert any("weft 4,900, nginx 0: no ratio" in ln for ln in lines)


def test_connection_verdicts() -> None:
    verdicts = {target: outcome for target, outcome, _ in conn_verdicts(_run())}
    assert verdicts["churn: CPU per connection at most 0.7x Envoy's (saturation)"] == "FAIL"
    assert verdicts["churn: CPU per connection at most 2.5x nginx's (saturation)"] == "FAIL"
    assert verdicts["many connections: p99 at most Envoy's"] == "FAIL"
    assert verdicts["many connections: no request over 1 s"] == "pass"  # none counted here
    assert verdicts["idle-silent: at most 2 KB per idle connection"] == "FAIL"
    assert verdicts["idle-silent: RSS back within 10% after they close"] == "FAIL"
    assert verdicts["idle-silent: normal requests served while they are open"] == "pass"


def test_connection_verdicts_pass_for_a_proxy_that_meets_them() -> None:
    run = _run()
    good = _case("weft-conn", [100.0, 100.0, 100.0], [100_000, 100_000, 100_000], 1000, 31_000)
    run = RunResult(
        run.started, run.command, run.settings, run.machine, (good, *run.cases[1:]), 1.0
    )
    outcomes = [outcome for _, outcome, _ in conn_verdicts(run)]
    assert outcomes == ["pass"] * len(outcomes)


def test_verdicts_say_na_without_weft() -> None:
    run = _run()
    run = RunResult(run.started, run.command, run.settings, run.machine, run.cases[1:], 1.0)
    assert {outcome for _, outcome, _ in conn_verdicts(run)} == {"n/a"}


def test_markdown_has_the_connection_tables() -> None:
    text = markdown(_run())
    assert "Connection churn" in text and "1,000 keep-alive connections" in text
    assert "10,000 idle connections" in text
    assert "Targets (connections, issue 12):" in text
    assert "| case | rps (sat)" not in text  # no empty request-rate table
