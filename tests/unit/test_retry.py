"""Unit, simulation and property tests for weft.core.retry (all on a fake clock)."""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.core.retry import (
    IDEMPOTENT_METHODS,
    MAX_RETRY_BODY,
    RetryBudget,
    backoff_delay,
    is_retryable_status,
    may_retry,
    parse_duration,
    parse_http_conditions,
    parse_timeout,
)
from weft.policy import RetryBudgetConfig, RetryPolicy
from weft.testing.clock import FakeClock

# -- parse_http_conditions --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5xx", ((500, 599),)),
        ("5XX", ((500, 599),)),
        ("gateway-error", ((502, 504),)),
        ("Gateway-Error", ((502, 504),)),
        ("500", ((500, 500),)),
        ("500-504", ((500, 504),)),
        (" 500 - 504 ", ((500, 504),)),
        ("504,500", ((500, 500), (504, 504))),
        ("500,501-503", ((500, 503),)),  # adjacent ranges merge
        ("gateway-error,5xx", ((500, 599),)),  # contained ranges merge
        ("429, 503", ((429, 429), (503, 503))),
        ("4xx,5xx", ((400, 599),)),
        ("100-599", ((100, 599),)),
    ],
)
def test_parse_http_conditions_examples(text: str, expected: tuple[tuple[int, int], ...]) -> None:
    assert parse_http_conditions(text) == expected
    RetryPolicy(statuses=parse_http_conditions(text))  # the result is a valid policy field


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("", "''"),
        ("   ", "'   '"),
        ("5xx,,500", "''"),
        ("5xx,", "''"),
        ("6xx", "'6xx'"),
        ("0xx", "'0xx'"),
        ("5x", "'5x'"),
        ("600", "'600'"),
        ("099", "'099'"),
        ("5000", "'5000'"),
        ("504-500", "'504-500'"),
        ("500-600", "'500-600'"),
        ("500-", "'500-'"),
        ("gateway_error", "'gateway_error'"),
        ("5xx, timeout", "'timeout'"),
        ("-1", "'-1'"),
    ],
)
def test_parse_http_conditions_errors_name_the_token(text: str, named: str) -> None:
    with pytest.raises(ValueError, match="retry http conditions") as info:
        parse_http_conditions(text)
    assert named in str(info.value)


_ranges = st.tuples(st.integers(100, 599), st.integers(100, 599)).map(lambda t: (min(t), max(t)))


@given(
    st.lists(
        st.one_of(
            _ranges.map(lambda r: (f"{r[0]}-{r[1]}", r)),
            st.integers(100, 599).map(lambda c: (str(c), (c, c))),
            st.integers(1, 5).map(lambda k: (f"{k}XX", (k * 100, k * 100 + 99))),
            st.just(("gateway-error", (502, 504))),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_parse_http_conditions_covers_exactly_the_union(
    tokens: list[tuple[str, tuple[int, int]]],
) -> None:
    text = ", ".join(t for t, _ in tokens)
    result = parse_http_conditions(text)
    want = {c for _, (lo, hi) in tokens for c in range(lo, hi + 1)}
    got = {c for lo, hi in result for c in range(lo, hi + 1)}
    assert got == want
    # Canonical: sorted, disjoint and not adjacent (so merged as far as possible).
    for (_, hi), (lo, _) in itertools.pairwise(result):
        assert lo > hi + 1


@given(st.text(max_size=30))
def test_parse_http_conditions_fuzz_parses_or_raises_value_error(text: str) -> None:
    try:
        result = parse_http_conditions(text)
    except ValueError:
        return
    assert result and all(100 <= lo <= hi <= 599 for lo, hi in result)


# -- parse_duration / parse_timeout -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("100ms", 0.1),
        ("1s", 1.0),
        ("1m", 60.0),
        ("1.5s", 1.5),
        ("0s", 0.0),
        ("0", 0.0),
        (" 250ms ", 0.25),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("2h45m", 9900.0),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("1500us", 0.0015),
        ("1500\u00b5s", 0.0015),
        ("1500\u03bcs", 0.0015),
        ("20ns", 2e-8),
        ("1s500ms", 1.5),
        ("24h", 86400.0),
    ],
)
def test_parse_duration_examples(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["", " ", "1", "10", "-1s", "+1s", "1M", "1S", "s", "ms", "1 s", "1s 2s", "1d", "1sec", "1e3s",
     "inf", "nan", "1.2.3s", "25h", "86401s", "1m-1s"],
)  # fmt: skip
def test_parse_duration_errors_name_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="duration") as info:
        parse_duration(text)
    assert repr(text) in str(info.value)


_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


@given(st.lists(st.tuples(st.integers(0, 999), st.sampled_from(sorted(_UNITS))), min_size=1))
def test_parse_duration_sums_its_parts(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{unit}" for n, unit in parts)
    want = sum(n * _UNITS[unit] for n, unit in parts)
    if want > 86400.0:
        with pytest.raises(ValueError, match="longer than"):
            parse_duration(text)
    else:
        assert parse_duration(text) == pytest.approx(want, rel=1e-9, abs=1e-12)


@given(st.text(max_size=20))
def test_parse_duration_fuzz_parses_or_raises_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert math.isfinite(seconds) and 0.0 <= seconds <= 86400.0


def test_parse_timeout_zero_disables() -> None:
    assert parse_timeout("0s") is None
    assert parse_timeout("0") is None
    assert parse_timeout("0ms") is None
    assert parse_timeout("250ms") == pytest.approx(0.25)
    with pytest.raises(ValueError, match="'soon'"):
        parse_timeout("soon")


# -- is_retryable_status / may_retry ----------------------------------------------------------


@given(
    st.lists(_ranges, max_size=4),
    st.integers(0, 999),
)
def test_is_retryable_status_is_membership_in_the_ranges(
    ranges: list[tuple[int, int]], status: int
) -> None:
    policy = RetryPolicy(statuses=tuple(ranges))
    assert is_retryable_status(policy, status) == any(lo <= status <= hi for lo, hi in ranges)


def test_is_retryable_status_named_conditions() -> None:
    gw = RetryPolicy(statuses=parse_http_conditions("gateway-error"))
    assert [s for s in range(100, 600) if is_retryable_status(gw, s)] == [502, 503, 504]
    default = RetryPolicy()
    assert is_retryable_status(default, 500) and is_retryable_status(default, 599)
    assert not is_retryable_status(default, 499) and not is_retryable_status(default, 200)


def test_idempotent_methods_are_rfc9110s() -> None:
    assert {b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"} == IDEMPOTENT_METHODS
    assert MAX_RETRY_BODY == 65536


@pytest.mark.parametrize(
    ("method", "body_len", "complete", "all_methods", "expected"),
    [
        (b"GET", 0, True, False, True),
        (b"GET", 0, False, False, True),
        (b"DELETE", 10, False, False, True),
        (b"PUT", MAX_RETRY_BODY, False, False, True),  # declared, fits: buffered while sent
        (b"PUT", MAX_RETRY_BODY + 1, True, False, False),  # too big, ever
        (b"PUT", None, False, False, False),  # unknown length, not yet complete
        (b"PUT", None, True, False, True),  # unknown length, complete within the buffer
        (b"POST", 0, True, False, False),  # not idempotent
        (b"PATCH", 0, True, False, False),
        (b"CONNECT", 0, True, False, False),
        (b"get", 0, True, False, False),  # methods are case-sensitive
        (b"POST", 0, True, True, True),  # the route retries every method
        (b"POST", 100, False, True, True),
        (b"POST", MAX_RETRY_BODY + 1, True, True, False),
        (b"POST", None, False, True, False),
        (b"POST", None, True, True, True),
    ],
)
def test_may_retry(
    method: bytes, body_len: int | None, complete: bool, all_methods: bool, expected: bool
) -> None:
    policy = RetryPolicy(all_methods=all_methods)
    assert may_retry(policy, method, body_len, complete) is expected


# -- backoff_delay ----------------------------------------------------------------------------


@given(
    st.floats(0.0, 1.0),
    st.floats(0.0, 10.0),
    st.integers(0, 10_000),
    st.integers(0, 2**32),
)
def test_backoff_delay_stays_between_min_and_max(
    lo: float, span: float, attempt: int, seed: int
) -> None:
    policy = RetryPolicy(backoff_min=lo, backoff_max=lo + span)
    d = backoff_delay(policy, attempt, random.Random(seed))
    assert lo <= d <= lo + span
    assert d <= max(lo, lo * 2.0 ** min(attempt + 1, 64))  # exponential ceiling


def test_backoff_delay_first_retry_and_full_jitter() -> None:
    policy = RetryPolicy()  # 25 ms .. 250 ms
    rng = random.Random(7)
    first = [backoff_delay(policy, 0, rng) for _ in range(2000)]
    assert min(first) >= 0.025 and max(first) <= 0.050
    late = [backoff_delay(policy, 8, rng) for _ in range(2000)]
    assert min(late) >= 0.025 and max(late) <= 0.250
    # Full jitter: spread over the whole interval, not bunched at the ceiling.
    assert min(late) < 0.035 and max(late) > 0.240
    assert sum(late) / len(late) == pytest.approx((0.025 + 0.250) / 2, rel=0.05)


def test_backoff_delay_degenerate_and_invalid() -> None:
    assert backoff_delay(RetryPolicy(backoff_min=0.1, backoff_max=0.1), 3, random.Random()) == 0.1
    assert backoff_delay(RetryPolicy(backoff_min=0.0, backoff_max=1.0), 5, random.Random()) == 0.0
    with pytest.raises(ValueError, match="-1"):
        backoff_delay(RetryPolicy(), -1, random.Random())


# -- RetryBudget: examples --------------------------------------------------------------------


def budget(
    ratio: float = 0.2, min_per_second: float = 10.0, ttl: float = 10.0, start: float = 1000.0
) -> tuple[RetryBudget, FakeClock]:
    clock = FakeClock(start)
    return RetryBudget(RetryBudgetConfig(ratio, min_per_second, ttl), clock=clock), clock


def drain(b: RetryBudget, cap: int = 100_000) -> int:
    n = 0
    while n < cap and b.try_withdraw():
        n += 1
    return n


def test_budget_reserve_alone_and_its_refill_after_ttl() -> None:
    b, clock = budget(ratio=0.0, min_per_second=10.0, ttl=10.0)
    assert b.balance() == 100.0
    assert drain(b) == 100  # min_per_second * ttl
    assert not b.try_withdraw()
    clock.advance(5.0)
    assert not b.try_withdraw()  # the window still holds the 100 withdrawals
    clock.advance(5.0)
    assert drain(b) == 100  # they have expired


def test_budget_ratio_alone() -> None:
    b, _ = budget(ratio=0.2, min_per_second=0.0)
    assert not b.try_withdraw()
    for _ in range(10):
        b.record_request()
    assert b.balance() == pytest.approx(2.0)
    assert drain(b) == 2
    for _ in range(4):
        b.record_request()
    assert not b.try_withdraw()  # 0.8 of a retry: not enough
    b.record_request()
    assert b.try_withdraw()


def test_budget_deposits_expire_after_ttl() -> None:
    b, clock = budget(ratio=0.5, min_per_second=1.0, ttl=10.0)
    for _ in range(100):
        b.record_request()
    assert b.balance() == pytest.approx(60.0)
    clock.advance(10.0)  # a new window: only the reserve is left
    assert b.balance() == pytest.approx(10.0)
    assert drain(b) == 10


def test_budget_every_window_holds_not_only_the_latest() -> None:
    # 100 requests at t=0 fund 20 retries at t=0; retries one bucket later would make the
    # window starting there (with no requests yet) exceed its budget, so only its reserve counts.
    b, clock = budget(ratio=0.2, min_per_second=0.5, ttl=10.0)
    for _ in range(100):
        b.record_request()
    clock.advance(1.0)
    assert drain(b) == 5  # the reserve (0.5 * 10), not 25
    b.record_request()
    assert not b.try_withdraw()
    for _ in range(4):
        b.record_request()
    assert b.try_withdraw()  # 5 requests in this bucket: one more retry


def test_budget_long_idle_and_ratio_zero_min_zero() -> None:
    b, _ = budget(ratio=0.0, min_per_second=0.0)
    for _ in range(1000):
        b.record_request()
    assert not b.try_withdraw()
    b2, clock2 = budget(ratio=1.0, min_per_second=0.0, ttl=1.0)
    b2.record_request()
    assert b2.try_withdraw() and not b2.try_withdraw()
    clock2.advance(1e6)  # far beyond ttl: everything expired, no O(gap) work
    assert b2.balance() == 0.0
    b2.record_request()
    assert b2.try_withdraw()


def test_budget_repr_and_config() -> None:
    b, _ = budget()
    assert "RetryBudget" in repr(b) and "balance=100.00" in repr(b)
    assert b.config == RetryBudgetConfig()


# -- RetryBudget: properties ------------------------------------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.floats(0.0, 3.0)),
        st.tuples(st.just("request"), st.integers(1, 50)),
        st.tuples(st.just("retry"), st.integers(1, 50)),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(
    st.floats(0.0, 2.0),
    st.floats(0.0, 5.0),
    st.floats(1.0, 20.0),
    st.floats(0.0, 1000.0),
    _ops,
)
def test_budget_bound_holds_on_every_window(
    ratio: float,
    min_per_second: float,
    ttl: float,
    start: float,
    ops: list[tuple[str, float]],
) -> None:
    config = RetryBudgetConfig(ratio, min_per_second, ttl)
    clock = FakeClock(start)
    b = RetryBudget(config, clock=clock)
    width_inv = 10 / ttl  # windows are 10 consecutive buckets of ttl / 10
    deposits: Counter[int] = Counter()
    withdrawals: Counter[int] = Counter()
    for op, arg in ops:
        bucket = math.floor(clock() * width_inv)
        if op == "advance":
            clock.advance(arg)
        elif op == "request":
            for _ in range(int(arg)):
                b.record_request()
            deposits[bucket] += int(arg)
        else:
            for _ in range(int(arg)):
                withdrawals[bucket] += b.try_withdraw()
    if not withdrawals:
        return
    first = min(withdrawals) - 9
    for lo in range(first, max(withdrawals) + 1):
        d = sum(deposits[i] for i in range(lo, lo + 10))
        w = sum(withdrawals[i] for i in range(lo, lo + 10))
        # Exact up to the ratio's resolution of 1e-6 (half a micro-token per deposit).
        assert w <= ratio * d + min_per_second * ttl + 5e-7 * (d + 1), (lo, d, w)


def simulate_failing_load(
    rps: float, seconds: float, fail: float, limit: int, seed: int, config: RetryBudgetConfig
) -> tuple[int, int, int]:
    """Open-loop load on a backend failing each attempt with probability ``fail``; each failure
    is retried after the policy's backoff if the budget allows, up to ``limit`` times.
    Returns (requests, retries, requests that failed in the end)."""
    rng = random.Random(seed)
    clock = FakeClock(0.0)
    b = RetryBudget(config, clock=clock)
    policy = RetryPolicy(limit=limit, budget=config)
    events: list[tuple[float, int, int]] = []  # (time, request id, attempt)
    n = int(rps * seconds)
    for i in range(n):
        heapq.heappush(events, (i / rps, i, 0))
    retries = failed = 0
    while events:
        t, i, attempt = heapq.heappop(events)
        clock.set(max(t, clock()))
        if attempt == 0:
            b.record_request()
        if rng.random() >= fail:
            continue
        if attempt < policy.limit and b.try_withdraw():
            retries += 1
            delay = backoff_delay(policy, attempt, rng)
            heapq.heappush(events, (t + delay, i, attempt + 1))
        else:
            failed += 1
    return n, retries, failed


@pytest.mark.parametrize("rps", [5.0, 50.0, 400.0])
def test_budget_caps_extra_load_of_a_backend_failing_everything(rps: float) -> None:
    config = RetryBudgetConfig()  # 20% + 10/s over 10 s
    seconds = 40.0
    requests, retries, failed = simulate_failing_load(rps, seconds, 1.0, 3, 1, config)
    assert failed == requests
    # The bound, window by window: ratio of the requests plus the reserve of each window the
    # run touches (the run spans seconds / ttl windows, plus one for the retries' backoff tail).
    bound = config.ratio * requests + config.min_per_second * config.ttl * (
        seconds / config.ttl + 1
    )
    assert retries <= bound
    extra = retries / requests
    assert extra <= config.ratio + config.min_per_second / rps + 0.25 * config.min_per_second / rps
    # ... and the budget is not stingier than it says: it grants most of what it promises.
    assert retries >= min(3 * requests, config.ratio * requests) * 0.9


def test_budget_lets_retries_mask_a_30_percent_failure_rate_at_low_rps() -> None:
    # 3 retries need 0.3 + 0.09 + 0.027 = 0.417 retries per request; 20% + 10/s covers that
    # up to ~46 requests per second.
    requests, retries, failed = simulate_failing_load(40.0, 30.0, 0.3, 3, 2, RetryBudgetConfig())
    assert 1 - failed / requests >= 0.99
    assert retries <= 0.2 * requests + 10 * 10 * 4


def test_budget_limits_a_30_percent_failure_rate_at_high_rps() -> None:
    # At 400 rps the same retries would need 0.417 per request; the budget holds them near 0.2.
    requests, retries, failed = simulate_failing_load(400.0, 30.0, 0.3, 3, 3, RetryBudgetConfig())
    assert retries / requests <= 0.2 + 10 / 400 + 0.01
    assert 1 - failed / requests < 0.99
