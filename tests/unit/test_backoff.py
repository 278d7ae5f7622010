"""Unit and property tests for weft.core.backoff."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weft.core.backoff import ExponentialBackoff


def test_defaults_are_linkerds_connect_backoff() -> None:
    b = ExponentialBackoff()
    assert (b.base, b.maximum, b.jitter) == (0.1, 60.0, 0.1)


def test_doubles_each_attempt_then_caps() -> None:
    b = ExponentialBackoff(base=0.1, maximum=60.0, jitter=0.0)
    assert [b.delay(a) for a in range(4)] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert b.delay(9) == pytest.approx(51.2)
    assert b.delay(10) == 60.0
    assert b.delay(11) == 60.0


def test_huge_attempt_does_not_overflow() -> None:
    b = ExponentialBackoff(rng=random.Random(1))
    for attempt in (1023, 1024, 5000, 10**9):
        assert 60.0 <= b.delay(attempt) <= 66.0


def test_jitter_adds_up_to_ratio() -> None:
    b = ExponentialBackoff(base=1.0, maximum=100.0, jitter=0.5, rng=random.Random(7))
    samples = [b.delay(2) for _ in range(2000)]
    assert min(samples) >= 4.0
    assert max(samples) <= 6.0
    # the jitter is spread out, not a constant offset
    assert max(samples) - min(samples) > 1.5
    assert statistics.fmean(samples) == pytest.approx(5.0, rel=0.02)


def test_seeded_rng_is_reproducible() -> None:
    a = ExponentialBackoff(rng=random.Random(42))
    b = ExponentialBackoff(rng=random.Random(42))
    assert [a.delay(i) for i in range(20)] == [b.delay(i) for i in range(20)]


def test_zero_base_means_no_delay() -> None:
    b = ExponentialBackoff(base=0.0, maximum=1.0, rng=random.Random(1))
    assert b.delay(0) == 0.0
    assert b.delay(50) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"base": -0.1}, "base"),
        ({"base": float("nan")}, "base"),
        ({"maximum": 0.05}, "maximum"),
        ({"maximum": float("inf")}, "maximum"),
        ({"jitter": -0.1}, "jitter"),
        ({"jitter": 1.5}, "jitter"),
    ],
)
def test_validation_names_field_and_value(kwargs: dict[str, float], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as info:
        ExponentialBackoff(**kwargs)  # type: ignore[arg-type]
    assert repr(next(iter(kwargs.values()))) in str(info.value)


def test_negative_attempt_rejected() -> None:
    with pytest.raises(ValueError, match="attempt must be >= 0, got -1"):
        ExponentialBackoff().delay(-1)


@given(
    base=st.floats(0.0, 10.0),
    span=st.floats(1.0, 1000.0),
    jitter=st.floats(0.0, 1.0),
    attempt=st.integers(0, 2000),
    seed=st.integers(0, 2**32),
)
def test_delay_within_bounds(
    base: float, span: float, jitter: float, attempt: int, seed: int
) -> None:
    maximum = base * span
    b = ExponentialBackoff(base=base, maximum=maximum, jitter=jitter, rng=random.Random(seed))
    d = b.undithered(attempt)
    got = b.delay(attempt)
    assert base <= d <= maximum
    assert d <= got <= d * (1 + jitter)
    assert base <= got <= maximum * (1 + jitter)


@given(
    base=st.floats(1e-6, 10.0),
    span=st.floats(1.0, 1e6),
    jitter=st.floats(0.0, 1.0),
    attempt=st.integers(0, 200),
)
def test_expectation_is_monotone(base: float, span: float, jitter: float, attempt: int) -> None:
    # E[delay(a)] = undithered(a) * (1 + jitter/2): monotone iff undithered is, and it doubles
    # until the cap.
    b = ExponentialBackoff(base=base, maximum=base * span, jitter=jitter)
    lo, hi = b.undithered(attempt), b.undithered(attempt + 1)
    assert lo <= hi
    if hi < b.maximum:
        assert hi == pytest.approx(2 * lo)
