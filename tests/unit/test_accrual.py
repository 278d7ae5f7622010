"""Unit, simulation and property tests for weft.core.accrual (all on a fake clock)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.core.accrual import AccrualSet, ConsecutiveFailures, State
from weft.policy import FailureAccrualConfig
from weft.testing.clock import FakeClock


def breaker(
    max_failures: int = 3,
    min_penalty: float = 1.0,
    max_penalty: float = 60.0,
    jitter: float = 0.0,
    seed: int = 1,
) -> tuple[ConsecutiveFailures, FakeClock]:
    clock = FakeClock(500.0)
    config = FailureAccrualConfig(max_failures, min_penalty, max_penalty, jitter)
    return ConsecutiveFailures(config, clock=clock, rng=random.Random(seed)), clock


def fail(b: ConsecutiveFailures, n: int) -> None:
    for _ in range(n):
        assert b.available()
        b.on_failure()


# -- ConsecutiveFailures ----------------------------------------------------------------------


def test_ejects_after_max_consecutive_failures_and_success_resets_count() -> None:
    b, _ = breaker(max_failures=3)
    fail(b, 2)
    b.on_success()
    fail(b, 2)
    assert b.state is State.ACTIVE and b.failures == 2
    fail(b, 1)
    assert b.state is State.EJECTED
    assert not b.available()


def test_penalty_then_exactly_one_probe() -> None:
    b, clock = breaker(max_failures=1, min_penalty=1.0)
    fail(b, 1)
    assert b.ejected_until == pytest.approx(501.0)
    clock.advance(0.999)
    assert not b.available()
    clock.advance(0.001)
    assert b.state is State.PROBING
    assert b.available()  # the probe
    assert not b.available() and not b.available()  # nobody else while it is out
    b.on_success()
    assert b.state is State.ACTIVE
    assert all(b.available() for _ in range(10))


def test_failed_probes_double_the_penalty_up_to_max_and_success_resets_it() -> None:
    b, clock = breaker(max_failures=2, min_penalty=1.0, max_penalty=5.0)
    fail(b, 2)
    penalties = []
    for _ in range(5):
        until = b.ejected_until
        assert until is not None
        penalties.append(until - clock())
        clock.set(until)
        assert b.available()
        b.on_failure()  # the probe fails
    assert penalties == pytest.approx([1.0, 2.0, 4.0, 5.0, 5.0])
    until = b.ejected_until
    assert until is not None
    clock.set(until)
    assert b.available()
    b.on_success()
    fail(b, 2)  # ejected again: the penalty starts over
    assert b.ejected_until == pytest.approx(clock() + 1.0)


def test_reports_while_ejected_or_before_the_probe_are_stale_and_ignored() -> None:
    b, clock = breaker(max_failures=1)
    fail(b, 1)
    b.on_success()  # a request sent before the ejection
    assert b.state is State.EJECTED
    b.on_failure()
    assert b.ejected_until == pytest.approx(501.0)  # no extra ejection
    clock.advance(1.0)
    assert b.state is State.PROBING
    b.on_success()  # still stale: no probe out yet
    b.on_failure()
    assert b.state is State.PROBING
    assert b.available()


def test_cancelled_probe_frees_the_slot_and_lost_probe_expires() -> None:
    b, clock = breaker(max_failures=1, min_penalty=1.0, max_penalty=10.0)
    fail(b, 1)
    clock.advance(1.0)
    assert b.available()
    b.on_cancel()
    assert b.available()  # another probe
    assert not b.available()
    clock.advance(9.999)
    assert not b.available()
    clock.advance(0.001)  # the probe never reported: given up after max_penalty
    assert b.available()
    b.on_success()
    assert b.state is State.ACTIVE
    b.on_cancel()  # outside probing, harmless
    assert b.state is State.ACTIVE and b.available()


@given(st.integers(0, 100), st.floats(0.0, 1.0), st.integers(0, 2**32))
def test_penalty_within_bounds_with_jitter(ejections: int, jitter: float, seed: int) -> None:
    b, _ = breaker(min_penalty=1.0, max_penalty=60.0, jitter=jitter, seed=seed)
    p = b.penalty(ejections)
    base = min(60.0, 2.0 ** min(ejections, 64))
    assert base <= p <= min(60.0, base * (1 + jitter))


def test_jitter_spreads_penalties() -> None:
    b, _ = breaker(min_penalty=1.0, max_penalty=60.0, jitter=0.5, seed=3)
    ps = [b.penalty(0) for _ in range(1000)]
    assert min(ps) < 1.05 and max(ps) > 1.45
    assert sum(ps) / len(ps) == pytest.approx(1.25, rel=0.05)


def test_repr_shows_state() -> None:
    b, clock = breaker(max_failures=1)
    assert "active" in repr(b)
    fail(b, 1)
    assert "ejected" in repr(b) and "until=" in repr(b)
    clock.advance(2.0)
    assert "probing" in repr(b)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 5),
    st.lists(
        st.one_of(
            st.tuples(st.just("advance"), st.floats(0.0, 5.0)),
            st.tuples(st.sampled_from(["send_ok", "send_fail", "send_cancel"]), st.just(0.0)),
            st.tuples(st.sampled_from(["stale_ok", "stale_fail"]), st.just(0.0)),
        ),
        max_size=120,
    ),
)
def test_breaker_invariants(max_failures: int, ops: list[tuple[str, float]]) -> None:
    b, clock = breaker(max_failures=max_failures, min_penalty=1.0, max_penalty=8.0, jitter=0.5)
    consecutive = 0
    for op, arg in ops:
        if op == "advance":
            clock.advance(arg)
            continue
        if op.startswith("stale"):
            # A late report while not active never changes an ejection deadline.
            before = (b.state, b.ejected_until)
            if before[0] is State.EJECTED:
                b.on_success() if op == "stale_ok" else b.on_failure()
                assert (b.state, b.ejected_until) == before
            continue
        state = b.state
        admitted = b.available()
        assert admitted == (state is not State.EJECTED)  # probe slot is free between sends
        if not admitted:
            assert b.ejected_until is not None and b.ejected_until > clock()
            continue
        if state is State.PROBING:
            assert not b.available()  # one probe at a time
        if op == "send_ok":
            b.on_success()
            consecutive = 0
            assert b.state is State.ACTIVE
        elif op == "send_fail":
            b.on_failure()
            if state is State.PROBING:
                assert b.state is State.EJECTED
                consecutive = 0
            else:
                consecutive += 1
                if consecutive == max_failures:
                    assert b.state is State.EJECTED
                    until = b.ejected_until
                    assert until is not None and 1.0 <= until - clock() <= 8.0
                    consecutive = 0
                else:
                    assert b.state is State.ACTIVE
        else:
            b.on_cancel()
            assert b.state is state


# -- AccrualSet -------------------------------------------------------------------------------


def make_set(max_failures: int = 2) -> tuple[AccrualSet[str], FakeClock]:
    clock = FakeClock(0.0)
    config = FailureAccrualConfig(max_failures=max_failures, min_penalty=1.0, jitter=0.0)
    return AccrualSet(config, clock=clock, rng=random.Random(1)), clock


def test_set_membership_keeps_state_of_staying_endpoints() -> None:
    s, _ = make_set()
    s.update(["a", "b", "a"])
    assert len(s) == 2 and "a" in s and "c" not in s
    s.record("a", False)
    s.record("a", False)
    assert s.states() == {"a": "ejected", "b": "active"}
    s.update(["a", "c"])
    assert s.states() == {"a": "ejected", "c": "active"}
    assert s["a"].state is State.EJECTED
    s.update([])
    assert s.states() == {}


def test_set_unknown_keys_are_active_and_ignored() -> None:
    s, _ = make_set()
    assert s.available("nobody")
    s.record("nobody", False)
    s.cancel("nobody")
    assert s.states() == {}
    assert not s.all_ejected()  # no endpoints is not circuit breaking


def test_set_all_ejected_fails_fast_until_a_probe_is_possible() -> None:
    s, clock = make_set(max_failures=1)
    s.update(["a", "b"])
    s.record("a", False)
    assert not s.all_ejected()
    clock.advance(0.5)
    s.record("b", False)
    assert s.all_ejected()
    assert not s.available("a") and not s.available("b")
    assert s.next_change() == pytest.approx(1.0)
    assert "ejected=2" in repr(s)
    clock.advance(0.5)
    assert not s.all_ejected()  # "a" may be probed
    assert s.states() == {"a": "probing", "b": "ejected"}
    assert s.available("a")  # the probe is out
    assert s.all_ejected()  # nobody else can take a request now
    s.record("a", True)
    assert not s.all_ejected()
    assert s.states() == {"a": "active", "b": "ejected"}
    assert s.next_change() == pytest.approx(1.5)


def test_one_bad_replica_of_three_is_ejected_and_success_recovers() -> None:
    """Simulation of the issue's scenario: three replicas, one failing every request; requests
    go round robin over the available ones (failing ones retried elsewhere is the proxy's job,
    not counted here). After the bad one is ejected, success stays >= 99.9% even though it is
    probed with real requests now and then."""
    clock = FakeClock(0.0)
    config = FailureAccrualConfig()  # 7 failures, 1 s .. 60 s, jitter 0.5
    s: AccrualSet[str] = AccrualSet(config, clock=clock, rng=random.Random(5))
    keys = ["good-1", "good-2", "bad"]
    s.update(keys)
    ok = failed = 0
    i = 0
    failed_at_ejection = None
    for n in range(60_000):  # 100 rps for 600 s
        clock.set(n / 100)
        for _ in range(len(keys)):
            key = keys[i % 3]
            i += 1
            if s.available(key):
                break
        else:
            pytest.fail("no endpoint available")
        success = key != "bad"
        s.record(key, success)
        ok += success
        failed += not success
        if failed_at_ejection is None and s.states()["bad"] == "ejected":
            failed_at_ejection = failed
    assert failed_at_ejection == config.max_failures  # ejected after exactly 7
    assert s.states()["bad"] in ("ejected", "probing")
    assert ok / (ok + failed) >= 0.999
