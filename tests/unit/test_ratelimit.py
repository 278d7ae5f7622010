"""Unit, simulation and property tests for weft.core.ratelimit (all on simulated time)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.core.ratelimit import IDENTITY, OVERRIDE, TOTAL, Gcra, LocalRateLimiter, check_config
from weft.inbound import RateLimit, RateLimitOverride
from weft.testing.clock import FakeClock

SLACK = 1e-6  # float rounding allowed on the bounds

# -- Gcra ---------------------------------------------------------------------------------------


def test_a_full_bucket_allows_one_second_of_burst_then_the_rate() -> None:
    g = Gcra(10.0)
    assert [g.check(0.0) for _ in range(10)] == [0.0] * 10
    retry = g.check(0.0)
    assert retry == pytest.approx(0.1)
    assert g.check(0.05) == pytest.approx(0.05)  # denied requests are not counted
    assert g.check(0.1) == 0.0
    assert g.check(0.1) > 0.0
    assert g.burst == pytest.approx(10.0)


def test_retry_after_is_exactly_when_the_next_request_passes() -> None:
    g = Gcra(3.0, tolerance=2.0)
    now = 0.0
    for _ in range(6):
        assert g.check(now) == 0.0
    for _ in range(20):
        retry = g.check(now)
        assert retry > 0.0
        assert g.check(now + retry * 0.99) > 0.0
        now += retry
        assert g.check(now) == 0.0


def test_slow_rates_still_allow_one_request() -> None:
    g = Gcra(0.5)  # one request every 2 s: a 1 s tolerance would allow nothing
    assert g.check(0.0) == 0.0
    assert g.check(0.0) == pytest.approx(2.0)
    assert g.check(2.0) == 0.0
    assert g.burst == pytest.approx(1.0)


def test_zero_tolerance_allows_one_at_a_time() -> None:
    g = Gcra(4.0, tolerance=0.0)
    assert g.check(0.0) == 0.0
    assert g.check(0.0) == pytest.approx(0.25)
    assert g.check(0.25) == 0.0


def test_wait_counts_nothing_and_take_counts() -> None:
    g = Gcra(1.0, tolerance=1.0)
    assert g.wait(0.0) == 0.0
    assert g.wait(0.0) == 0.0
    g.take(0.0)
    assert g.wait(0.0) == pytest.approx(1.0)
    assert not g.full(0.5)
    assert g.full(1.0)


def test_an_idle_bucket_refills_to_its_burst_only() -> None:
    g = Gcra(5.0)
    allowed = sum(1 for _ in range(100) if g.check(1000.0) == 0.0)
    assert allowed == 5


@pytest.mark.parametrize("rate", [0, -1, math.nan, math.inf, True, "5", None])
def test_bad_rates_are_refused(rate: object) -> None:
    with pytest.raises(ValueError, match="requests per second"):
        Gcra(rate)  # type: ignore[arg-type]


@pytest.mark.parametrize("tolerance", [-0.1, math.nan, math.inf, False])
def test_bad_tolerances_are_refused(tolerance: object) -> None:
    with pytest.raises(ValueError, match="tolerance"):
        Gcra(1.0, tolerance)  # type: ignore[arg-type]


rates = st.floats(min_value=0.05, max_value=2000.0, allow_nan=False)
tolerances = st.floats(min_value=0.0, max_value=5.0, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    rate=rates,
    tolerance=tolerances,
    gaps=st.lists(st.floats(min_value=0.0, max_value=0.5), min_size=1, max_size=150),
)
def test_any_window_allows_at_most_rate_times_window_plus_burst(
    rate: float, tolerance: float, gaps: list[float]
) -> None:
    g = Gcra(rate, tolerance)
    now = 0.0
    allowed: list[float] = []
    for gap in gaps:
        now += gap
        if g.check(now) == 0.0:
            allowed.append(now)
    for i in range(len(allowed)):
        for j in range(i, len(allowed)):
            window = allowed[j] - allowed[i]
            assert j - i + 1 <= rate * window + g.burst + SLACK


@settings(max_examples=200, deadline=None)
@given(
    rate=rates,
    tolerance=tolerances,
    fraction=st.floats(min_value=0.01, max_value=1.0),
    start=st.floats(min_value=0.0, max_value=1e6),
    n=st.integers(min_value=1, max_value=500),
)
def test_a_client_at_or_below_the_rate_is_never_denied(
    rate: float, tolerance: float, fraction: float, start: float, n: int
) -> None:
    g = Gcra(rate, tolerance)
    interval = 1.0 / (rate * fraction)
    for k in range(n):
        assert g.check(start + k * interval) == 0.0


@settings(max_examples=100, deadline=None)
@given(
    rate=st.floats(min_value=0.1, max_value=1000.0),
    phase=st.floats(min_value=0.0, max_value=1.0),
    jitter=st.floats(min_value=0.0, max_value=0.5),
    seed=st.integers(0, 2**32),
)
def test_at_twice_the_rate_the_allowed_rate_stays_within_ten_percent(
    rate: float, phase: float, jitter: float, seed: int
) -> None:
    rng = random.Random(seed)
    if rate < 5.0:
        jitter = 0.0  # a burst of under 5 requests cannot absorb late requests (see below)
    g = Gcra(rate)
    interval = 1.0 / (2.0 * rate)
    duration = max(200.0, 2000.0 / rate)  # at least 2000 allowed requests' worth
    allowed = 0
    for k in range(int(duration / interval)):
        # a client sending at twice the limit, each request up to half an interval late
        if g.check((k + phase + jitter * rng.random()) * interval) == 0.0:
            allowed += 1
    assert abs(allowed / duration - rate) <= 0.1 * rate


@settings(max_examples=30, deadline=None)
@given(rate=st.floats(min_value=5.0, max_value=500.0), seed=st.integers(0, 2**32))
def test_poisson_arrivals_at_twice_the_rate_are_held_within_ten_percent(
    rate: float, seed: int
) -> None:
    # with random arrivals the one-second burst absorbs the gaps once it holds a few requests
    # (at 1 rps, a burst of one, bursty clients lose a third of their allowance)
    rng = random.Random(seed)
    g = Gcra(rate)
    duration = 100.0
    now = 0.0
    allowed = 0
    while True:
        now += rng.expovariate(2.0 * rate)
        if now > duration:
            break
        if g.check(now) == 0.0:
            allowed += 1
    assert abs(allowed / duration - rate) <= 0.1 * rate


# -- LocalRateLimiter ---------------------------------------------------------------------------


def limiter(clock: FakeClock, **fields: object) -> LocalRateLimiter:
    return LocalRateLimiter(RateLimit(name="ns/limit", **fields), clock)  # type: ignore[arg-type]


def burst(lim: LocalRateLimiter, client: str | None, n: int) -> list[str]:
    """The deciding limit of each of ``n`` requests ("" when allowed)."""
    return [lim.check(client)[1] for _ in range(n)]


def test_total_bounds_every_client_together() -> None:
    clock = FakeClock()
    lim = limiter(clock, total=3.0)
    assert burst(lim, "a", 2) == ["", ""]
    assert burst(lim, None, 1) == [""]
    retry, which = lim.check("b")
    assert which == TOTAL
    assert retry == pytest.approx(1 / 3)
    clock.advance(retry)
    assert lim.check("b") == (0.0, "")


def test_identity_limits_each_identity_and_clients_without_one_share_a_bucket() -> None:
    clock = FakeClock()
    lim = limiter(clock, identity=2.0)
    assert burst(lim, "a", 3) == ["", "", IDENTITY]
    assert burst(lim, "b", 3) == ["", "", IDENTITY]
    assert burst(lim, None, 3) == ["", "", IDENTITY]  # every unauthenticated client together
    assert len(lim) == 3


def test_overrides_replace_the_identity_limit_and_share_one_bucket_per_entry() -> None:
    clock = FakeClock()
    lim = limiter(
        clock,
        identity=1.0,
        overrides=(
            RateLimitOverride(3.0, ("vip-1", "vip-2")),
            RateLimitOverride(5.0, ("vip-2", "vip-3")),
        ),
    )
    assert burst(lim, "vip-1", 2) == ["", ""]
    # vip-2 is named first by the 3 rps entry, whose bucket it shares with vip-1
    assert burst(lim, "vip-2", 2) == ["", OVERRIDE]
    assert burst(lim, "vip-3", 6) == ["", "", "", "", "", OVERRIDE]
    assert burst(lim, "plain", 2) == ["", IDENTITY]
    assert len(lim) == 1  # overrides have no per-identity bucket


def test_overrides_apply_without_an_identity_limit_and_others_are_unlimited() -> None:
    clock = FakeClock()
    lim = limiter(clock, overrides=(RateLimitOverride(1.0, ("slow",)),))
    assert burst(lim, "slow", 2) == ["", OVERRIDE]
    assert burst(lim, "other", 50) == [""] * 50
    assert burst(lim, None, 50) == [""] * 50


def test_a_request_denied_by_its_identity_limit_costs_the_total_nothing() -> None:
    clock = FakeClock()
    lim = limiter(clock, total=10.0, identity=2.0)
    assert burst(lim, "greedy", 20) == ["", ""] + [IDENTITY] * 18
    # the 18 refused requests took nothing from the total: 8 more fit
    assert burst(lim, "polite", 2) == ["", ""]
    assert burst(lim, "third", 2) == ["", ""]
    assert burst(lim, "fourth", 2) == ["", ""]
    assert burst(lim, "fifth", 2) == ["", ""]
    assert burst(lim, "sixth", 1) == [TOTAL]


def test_a_request_denied_by_the_total_costs_its_identity_nothing() -> None:
    clock = FakeClock()
    lim = limiter(clock, total=2.0, identity=2.0)
    assert burst(lim, "a", 2) == ["", ""]
    assert burst(lim, "b", 5) == [TOTAL] * 5
    clock.advance(1.0)  # the total refilled; b's bucket was never touched: a full burst
    assert burst(lim, "b", 2) == ["", ""]


def test_when_both_limits_refuse_the_retry_after_covers_both() -> None:
    clock = FakeClock()
    lim = limiter(clock, total=4.0, identity=1.0)
    assert [lim.check(c) for c in "abcd"] == [(0.0, "")] * 4
    retry, which = lim.check("a")  # total: 0.25 s away; a's own bucket: 1 s away
    assert which == TOTAL
    assert retry == pytest.approx(1.0)
    clock.advance(retry)
    assert lim.check("a") == (0.0, "")


def test_idle_identity_buckets_are_forgotten() -> None:
    clock = FakeClock()
    lim = LocalRateLimiter(RateLimit(name="l", identity=1.0), clock, idle=60.0)
    for i in range(100):
        lim.check(f"client-{i}")
    assert len(lim) == 100
    clock.advance(30.0)
    lim.check("new-1")  # no sweep before `idle` seconds
    assert len(lim) == 101
    clock.advance(31.0)
    assert lim.check("new-2") == (0.0, "")  # this sweep forgets every refilled bucket
    assert len(lim) == 1


def test_sweeping_never_forgets_a_bucket_that_still_limits() -> None:
    clock = FakeClock()
    lim = LocalRateLimiter(RateLimit(name="l", identity=0.01), clock, idle=1.0)
    assert lim.check("a") == (0.0, "")  # a's next request is 100 s away
    clock.advance(5.0)
    assert lim.sweep(clock()) == 0
    assert lim.check("a")[1] == IDENTITY


def test_identity_buckets_are_capped() -> None:
    clock = FakeClock()
    lim = LocalRateLimiter(RateLimit(name="l", identity=0.001), clock, max_identities=10)
    for i in range(50):
        assert lim.check(f"c{i}") == (0.0, "")
        assert len(lim) <= 10
    assert lim.check("c49")[1] == IDENTITY  # the newest are still held
    assert "identities=10" in repr(lim)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (RateLimit(name="n", total=0), "total: requests per second must be finite and > 0"),
        (RateLimit(name="n", identity=-2.0), "identity"),
        (RateLimit(name="n", total="10"), "must be a number"),  # type: ignore[arg-type]
        (RateLimit(name="n", identity=True), "must be a number"),
        (RateLimit(name="n", overrides=(RateLimitOverride(math.nan, ("a",)),)), "overrides"),
        (RateLimit(name="n", overrides=(RateLimitOverride(1.0, "abc"),)), "list of strings"),  # type: ignore[arg-type]
        (RateLimit(name="n", overrides=({"a": 1},)), "expected an override"),  # type: ignore[arg-type]
        (RateLimit(name="n", overrides="x"), "overrides must be a list"),  # type: ignore[arg-type]
        (RateLimit(name=5), "name must be a string"),  # type: ignore[arg-type]
    ],
)
def test_bad_configs_are_refused_with_the_field_named(config: RateLimit, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_config(config)
    with pytest.raises(ValueError, match=message):
        LocalRateLimiter(config, FakeClock())


def test_a_limit_with_no_limits_allows_everything() -> None:
    lim = limiter(FakeClock())
    assert burst(lim, "a", 100) == [""] * 100


@settings(max_examples=100, deadline=None)
@given(
    total=st.one_of(st.none(), st.floats(min_value=1.0, max_value=100.0)),
    identity=st.floats(min_value=0.5, max_value=50.0),
    seed=st.integers(0, 2**32),
)
def test_every_client_and_the_total_stay_within_their_bounds(
    total: float | None, identity: float, seed: int
) -> None:
    rng = random.Random(seed)
    clock = FakeClock()
    lim = LocalRateLimiter(RateLimit(name="l", total=total, identity=identity), clock)
    clients = ["a", "b", "c", None]
    allowed: dict[str | None, int] = dict.fromkeys(clients, 0)
    duration = 20.0
    while clock.now < duration:
        clock.advance(rng.expovariate(8.0 * identity))
        client = rng.choice(clients)
        if lim.check(client)[0] == 0.0:
            allowed[client] += 1
    for count in allowed.values():
        assert count <= identity * clock.now + max(1.0, identity) + SLACK
    if total is not None:
        assert sum(allowed.values()) <= total * clock.now + max(1.0, total) + SLACK
