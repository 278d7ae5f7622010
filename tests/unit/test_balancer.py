"""Unit, simulation and property tests for weft.core.balancer (all on a fake clock)."""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from weft.core.backoff import ExponentialBackoff
from weft.core.balancer import Balancer, PeakEwma
from weft.testing.clock import FakeClock

Key = tuple[str, int]
A: Key = ("10.0.0.1", 80)
B: Key = ("10.0.0.2", 80)
C: Key = ("10.0.0.3", 80)


def make(seed: int = 1, **kwargs: Any) -> tuple[Balancer[Key], FakeClock]:
    clock = FakeClock(100.0)
    return Balancer(clock=clock, rng=random.Random(seed), **kwargs), clock


def stat(b: Balancer[Key], key: Key) -> tuple[int, float, bool]:
    for k, pending, est, ready in b.stats():
        if k == key:
            return pending, est, ready
    raise KeyError(key)


# -- PeakEwma -----------------------------------------------------------------------------------


def test_peak_ewma_peak_replaces_and_decays_towards_lower() -> None:
    e = PeakEwma(0.030, now=0.0)
    e.observe(0.200, now=1.0, decay=10.0)
    assert e.estimate == 0.200  # a peak is taken at once
    e.observe(0.010, now=11.0, decay=10.0)  # 10 s later: w = e^-1
    w = math.exp(-1.0)
    assert e.estimate == pytest.approx(0.200 * w + 0.010 * (1 - w))
    e.observe(0.010, now=11.0, decay=10.0)  # no time elapsed: w = 1, no change
    assert e.estimate == pytest.approx(0.200 * w + 0.010 * (1 - w))


def test_peak_ewma_cost_weights_pending_and_decays_idle_estimate() -> None:
    e = PeakEwma(0.030, now=0.0)
    assert e.cost(0.0, 10.0) == pytest.approx(0.030)
    e.pending = 3
    assert e.cost(0.0, 10.0) == pytest.approx(0.120)
    assert e.cost(10.0, 10.0) == pytest.approx(0.120 * math.exp(-1.0))


# -- Balancer units -----------------------------------------------------------------------------


def test_empty_picks_none() -> None:
    b, _ = make()
    assert b.pick() is None
    assert len(b) == 0
    b.update([A])
    b.update([])
    assert b.pick() is None


def test_single_endpoint_always_picked() -> None:
    b, _ = make()
    b.update([A])
    assert {b.pick() for _ in range(20)} == {A}


def test_defaults_and_validation() -> None:
    b, _ = make()
    b.update([A, B])
    assert [(k, p, r) for k, p, _, r in b.stats()] == [(A, 0, True), (B, 0, True)]
    assert stat(b, A)[1] == pytest.approx(0.030)
    with pytest.raises(ValueError, match="default_rtt must be finite and > 0, got 0"):
        Balancer(clock=FakeClock(), default_rtt=0)
    with pytest.raises(ValueError, match="decay must be finite and > 0, got -1"):
        Balancer(clock=FakeClock(), decay=-1)
    with pytest.raises(ValueError, match="failure_penalty must be finite and > 0, got nan"):
        Balancer(clock=FakeClock(), failure_penalty=math.nan)


def test_start_finish_tracks_pending_and_latency() -> None:
    b, clock = make()
    b.update([A, B])
    t1 = b.start(A)
    t2 = b.start(A)
    assert t1 == t2 == clock()
    assert stat(b, A)[0] == 2
    clock.advance(0.25)
    b.finish(A, t1)
    pending, est, _ = stat(b, A)
    assert pending == 1
    assert est == pytest.approx(0.25)
    b.finish(A, t2, success=False)  # failures are observed too (with the penalty)
    assert stat(b, A)[0] == 0
    b.finish(A, t2)  # an extra finish never drives pending negative
    assert stat(b, A)[0] == 0


def test_finish_without_observing_only_drops_pending() -> None:
    """Work that says nothing about the endpoint's latency (a dial made before the client
    spoke) holds a pending slot but leaves the estimate as it was."""
    b, clock = make()
    b.update([A, B])
    t = b.start(A)
    assert stat(b, A)[0] == 1
    clock.advance(5.0)  # the client thought for 5 s
    b.finish(A, t, observe=False)
    pending, est, _ = stat(b, A)
    assert pending == 0
    assert est == pytest.approx(stat(b, B)[1])  # as unmeasured as B: both decayed 30 ms
    assert est < 0.030


def test_an_unmeasured_endpoint_is_tried_before_a_measured_one() -> None:
    """Of two endpoints of the same age, the one with an observation costs more than the one
    without (its estimate decays towards the observation, the other's towards zero), so a
    fresh endpoint gets the next request even when the first was fast."""
    b, clock = make()
    b.update([A, B])
    clock.advance(0.5)
    first = b.pick()
    assert first is not None
    t = b.start(first)
    clock.advance(0.0001)
    b.finish(first, t)
    other = B if first == A else A
    assert b.pick() == other


def test_cheaper_of_two_wins() -> None:
    b, clock = make()
    b.update([A, B])
    t = b.start(B)
    clock.advance(1.0)
    b.finish(B, t)  # B: 1 s estimate; A: 30 ms
    assert Counter(b.pick() for _ in range(50)) == Counter({A: 50})
    for _ in range(40):
        b.start(A)  # A: 30 ms decayed * 41 pending > B's 1 s decayed
    assert b.pick() == B


def test_pending_makes_equal_endpoints_alternate() -> None:
    b, _ = make()
    b.update([A, B])
    picks = []
    for _ in range(10):
        k = b.pick()
        assert k is not None
        b.start(k)
        picks.append(k)
    assert Counter(picks) == Counter({A: 5, B: 5})


def test_membership_change_keeps_survivor_stats() -> None:
    b, clock = make()
    b.update([A, B])
    t = b.start(A)
    clock.advance(0.5)
    b.finish(A, t)
    b.start(A)
    b.failed(B)
    b.update([B, C, A, A])
    assert len(b) == 3
    assert A in b and C in b and ("x", 1) not in b
    pending, est, ready = stat(b, A)
    assert (pending, ready) == (1, True)
    assert est == pytest.approx(0.5)
    assert stat(b, B)[2] is False  # backoff survives too
    assert stat(b, C)[::2] == (0, True)
    assert stat(b, C)[1] == pytest.approx(0.030)


def test_removed_key_is_never_picked_and_its_finish_is_ignored() -> None:
    b, clock = make()
    b.update([A, B, C])
    t = b.start(C)
    b.update([A, B])
    assert C not in b
    assert all(b.pick() in (A, B) for _ in range(200))
    b.finish(C, t)  # ignored
    b.failed(C)
    b.succeeded_connect(C)
    assert C not in b
    # re-added: a fresh entry, and the old request's finish does not touch it
    clock.advance(1.0)
    b.update([A, B, C])
    b.finish(C, t)
    assert stat(b, C)[::2] == (0, True)
    assert stat(b, C)[1] == pytest.approx(0.030)
    assert b.start(("nope", 0)) == clock()


def test_failed_endpoint_backs_off_exponentially() -> None:
    b, clock = make(backoff=ExponentialBackoff(jitter=0.0))
    b.update([A, B])
    b.failed(A)
    assert not b.ready(A) and b.ready(B)
    assert all(b.pick() == B for _ in range(50))
    b.failed(A)  # while already backing off: does not escalate
    clock.advance(0.0999)
    assert b.pick() == B and not b.ready(A)
    clock.advance(0.0002)
    assert b.ready(A)
    assert A in {b.pick() for _ in range(50)}
    b.failed(A)  # second consecutive failure: 200 ms
    clock.advance(0.199)
    assert not b.ready(A)
    clock.advance(0.002)
    assert b.ready(A)
    b.failed(A)  # third: 400 ms
    b.succeeded_connect(A)  # resets
    assert b.ready(A)
    b.failed(A)
    clock.advance(0.101)
    assert b.ready(A)


def test_backoff_delay_is_capped() -> None:
    b, clock = make(backoff=ExponentialBackoff(jitter=0.0))
    b.update([A, B])
    for _ in range(20):
        b.failed(A)
        clock.advance(60.0)
        assert b.ready(A)
    b.failed(A)
    clock.advance(59.99)
    assert not b.ready(A)


def test_all_in_backoff_picks_among_all() -> None:
    b, _ = make()
    b.update([A, B])
    b.failed(A)
    b.failed(B)
    assert not b.ready(A) and not b.ready(B)
    assert {b.pick() for _ in range(50)} == {A, B}


def test_failed_keeps_pending() -> None:
    b, _ = make()
    b.update([A])
    b.start(A)
    b.failed(A)
    assert stat(b, A)[:1] == (1,)


def test_repr_shows_endpoints() -> None:
    b, _ = make()
    b.update([A, B])
    b.start(A)
    b.failed(B)
    r = repr(b)
    assert r.startswith("<Balancer endpoints=2 ready=1 ")
    assert "('10.0.0.1', 80): pending=1 est=30.0ms ready" in r
    assert "('10.0.0.2', 80): pending=0 est=30.0ms backoff" in r


def test_seeded_rng_is_deterministic() -> None:
    def run() -> list[Key | None]:
        b, _ = make(seed=9)
        b.update([A, B, C])
        return [b.pick() for _ in range(100)]

    assert run() == run()


# -- discrete-event simulations -----------------------------------------------------------------


def simulate(
    b: Balancer[Key],
    clock: FakeClock,
    *,
    requests: int,
    interval: float,
    latency: Callable[[Key, random.Random], float | None],
    seed: int = 3,
    failing: frozenset[Key] = frozenset(),
) -> list[tuple[float, Key]]:
    """Open-loop load: one request every ``interval`` seconds; ``latency`` gives the response
    time for an endpoint, or ``None`` for a connect failure (reported 1 ms later); the answers
    of ``failing`` endpoints are errors (a 5xx). Returns (time, key) for each pick.
    """
    rng = random.Random(seed)
    events: list[tuple[float, int, str, Key, float]] = []
    seq = 0
    picks: list[tuple[float, Key]] = []
    for i in range(requests):
        heapq.heappush(events, (clock() + i * interval, seq, "arrive", A, 0.0))
        seq += 1
    while events:
        at, _, kind, key, started = heapq.heappop(events)
        clock.set(at)
        if kind == "arrive":
            picked = b.pick()
            assert picked is not None
            picks.append((at, picked))
            t0 = b.start(picked)
            lat = latency(picked, rng)
            kind2, delay = ("fail", 0.001) if lat is None else ("done", lat)
            heapq.heappush(events, (at + delay, seq, kind2, picked, t0))
            seq += 1
        elif kind == "fail":
            b.failed(key)
            b.finish(key, started, success=False)
        else:
            b.succeeded_connect(key)
            b.finish(key, started, success=key not in failing)
        for k, pending, _, _ in b.stats():
            assert pending >= 0, k
    return picks


def test_slow_endpoint_gets_markedly_less_traffic() -> None:
    b, clock = make(seed=5)
    b.update([A, B, C])
    base = {A: 0.010, B: 0.010, C: 0.100}  # C is 10x slower

    def latency(key: Key, rng: random.Random) -> float:
        return base[key] * rng.uniform(0.8, 1.2)

    picks = simulate(b, clock, requests=3000, interval=0.005, latency=latency)
    share = Counter(k for _, k in picks)
    assert share[C] / len(picks) < 0.20
    assert share[C] > 0  # it is still probed
    # the fast ones share the rest about evenly
    assert abs(share[A] - share[B]) < 0.15 * len(picks)
    assert all(p == 0 for _, p, _, _ in b.stats())


def test_dead_endpoint_stays_out_while_others_are_ready() -> None:
    """An endpoint that refuses connections leaves the ready set (connect backoff), and its
    failures cost it the penalty: when the backoff ends it is still passed over, until its
    estimate decays; then one request probes it and fails again."""
    backoff = ExponentialBackoff(base=0.1, maximum=60.0, jitter=0.1, rng=random.Random(2))
    b, clock = make(seed=4, backoff=backoff)
    b.update([A, B, C])

    def latency(key: Key, rng: random.Random) -> float | None:
        return None if key == C else 0.010 * rng.uniform(0.8, 1.2)

    start = clock()
    picks = simulate(b, clock, requests=2400, interval=0.005, latency=latency)  # 12 s
    dead = [t - start for t, k in picks if k == C]
    # the first tries, before its first refusal was seen; none once its backoff (0.1 s, then
    # 0.2 s) has ended: its cost keeps it out
    assert 1 <= len(dead) <= 2 and dead[-1] < 0.05, dead
    assert b.ready(C)


def test_recovered_endpoint_gets_traffic_again() -> None:
    b, clock = make(seed=6)
    b.update([A, B])
    alive = {"B": False}

    def latency(key: Key, rng: random.Random) -> float | None:
        if key == B and not alive["B"]:
            return None
        return 0.010

    simulate(b, clock, requests=200, interval=0.005, latency=latency)
    alive["B"] = True
    # traffic goes on to A while B's penalty decays (an idle clock decays both alike)
    picks = simulate(b, clock, requests=3000, interval=0.040, latency=latency)  # 2 minutes
    share = Counter(k for _, k in picks[-1000:])
    assert share[B] / 1000 > 0.3


def test_membership_churn_in_simulation() -> None:
    b, clock = make(seed=8)
    keys = [(f"10.0.1.{i}", 80) for i in range(6)]
    b.update(keys[:3])
    rng = random.Random(8)
    inflight: list[tuple[float, Key, float]] = []
    for step in range(2000):
        clock.advance(0.002)
        if step % 250 == 0:
            current = rng.sample(keys, rng.randint(1, 6))
            b.update(current)
            members = set(current)
        k = b.pick()
        assert k in members
        inflight.append((clock() + rng.uniform(0.001, 0.05), k, b.start(k)))
        inflight.sort()
        while inflight and inflight[0][0] <= clock():
            _, key, t0 = inflight.pop(0)
            b.finish(key, t0)
        assert all(p >= 0 for _, p, _, _ in b.stats())


# -- failures -----------------------------------------------------------------------------------


def test_a_failure_observes_at_least_the_penalty() -> None:
    b, clock = make(failure_penalty=2.0)
    b.update([A, B])
    t = b.start(A)
    clock.advance(0.0005)  # a 502 from a proxy whose app is gone: fast
    b.finish(A, t, success=False)
    assert stat(b, A)[1] == pytest.approx(2.0)
    t = b.start(B)
    clock.advance(3.0)  # a slow failure (a timeout) counts at its own length
    b.finish(B, t, success=False)
    assert stat(b, B)[1] == pytest.approx(3.0)
    assert make()[0]._penalty == 1.0  # the default


def test_penalize_counts_a_failure_found_after_the_latency_was_observed() -> None:
    """A gRPC call is timed at its response headers; a failing status in its trailers costs the
    endpoint the penalty then, as a trailers-only failure does, without touching pending."""
    b, clock = make()
    b.update([A, B])
    t = b.start(A)
    clock.advance(0.002)
    b.finish(A, t)
    assert stat(b, A)[1] < 0.031  # a success: no penalty
    other = b.start(A)  # another call, still open
    clock.advance(0.5)
    b.penalize(A, t)
    assert stat(b, A)[:2] == (1, pytest.approx(1.0))
    b.update([B])
    b.update([A, B])  # re-added: a call started before belongs to the old entry
    b.penalize(A, other)
    assert stat(b, A)[1] < 0.031


def test_a_slow_success_is_observed_as_before() -> None:
    """Successes are untouched by the penalty: a slow answer is its latency, not more."""
    b, clock = make()
    b.update([A, B])
    t = b.start(A)
    clock.advance(0.3)
    b.finish(A, t, success=True)
    assert stat(b, A)[1] == pytest.approx(0.3)
    t = b.start(A)
    clock.advance(0.01)
    b.finish(A, t)  # a faster one pulls the estimate down gradually, as peak-EWMA does
    assert stat(b, A)[1] == pytest.approx(0.3 * math.exp(-0.001) + 0.01 * (1 - math.exp(-0.001)))


def test_a_single_endpoint_is_picked_even_after_failing() -> None:
    b, clock = make()
    b.update([A])
    t = b.start(A)
    clock.advance(0.001)
    b.finish(A, t, success=False)
    assert [b.pick() for _ in range(5)] == [A] * 5


def _warm(b: Balancer[Key], clock: FakeClock, keys: list[Key], rtt: float, rounds: int) -> None:
    """Give every key the same history: ``rounds`` requests of ``rtt`` each."""
    for _ in range(rounds):
        for key in keys:
            t = b.start(key)
            clock.advance(rtt)
            b.finish(key, t)


def test_one_failure_makes_p2c_avoid_the_endpoint() -> None:
    b, clock = make(seed=11)
    b.update([A, B, C])
    _warm(b, clock, [A, B, C], 0.010, 20)
    t = b.start(C)
    clock.advance(0.0005)
    b.finish(C, t, success=False)  # one fast failure
    picks = simulate(b, clock, requests=1000, interval=0.002, latency=lambda k, r: 0.010)
    share = Counter(k for _, k in picks)
    assert share[C] < 0.05 * 1000, share
    assert share[A] > 300 and share[B] > 300, share
    # the same history and one fast *success* instead: C keeps its third
    b, clock = make(seed=11)
    b.update([A, B, C])
    _warm(b, clock, [A, B, C], 0.010, 20)
    t = b.start(C)
    clock.advance(0.0005)
    b.finish(C, t, success=True)
    picks = simulate(b, clock, requests=1000, interval=0.002, latency=lambda k, r: 0.010)
    assert Counter(k for _, k in picks)[C] > 250


def test_a_fast_failing_endpoint_gets_almost_no_traffic() -> None:
    """The issue's case: one of three endpoints answers every request at once with an error
    (its app died behind its pod's proxy). On latency alone it is the cheapest and draws most
    requests; counted as failures, it is passed over after its first answers."""
    b, clock = make(seed=12)
    b.update([A, B, C])

    def latency(key: Key, rng: random.Random) -> float:
        return 0.0003 if key == C else 0.010 * rng.uniform(0.8, 1.2)

    # 1.5 s of one request per ms
    picks = [k for _, k in simulate(b, clock, requests=1500, interval=0.001, latency=latency,
                                    failing=frozenset([C]))]  # fmt: skip
    share = Counter(picks)
    assert share[C] <= 5, share  # before the fix: well over half of them


def test_a_failed_endpoint_is_probed_again_after_its_penalty_decays() -> None:
    b, clock = make(seed=13)
    b.update([A, B, C])
    _warm(b, clock, [A, B, C], 0.010, 20)
    t = b.start(C)
    clock.advance(0.0005)
    b.finish(C, t, success=False)
    start = clock()
    # two minutes of one request every 20 ms; C answers well when it is tried again

    def latency(key: Key, rng: random.Random) -> float:
        return 0.010 * rng.uniform(0.8, 1.2)

    picks = simulate(b, clock, requests=6000, interval=0.020, latency=latency)
    back = [at - start for at, k in picks if k == C]
    assert back, "never probed again"
    # not before its estimate decayed to the others' cost (decay 10 s * ln(1 s / ~10 ms))
    assert 20.0 < back[0] < 60.0, back[0]
    late = Counter(k for at, k in picks if at - start > back[0] + 30.0)
    assert late[C] / sum(late.values()) > 0.25, late  # its share is back once it answers well


def test_an_endpoint_that_keeps_failing_is_only_probed() -> None:
    b, clock = make(seed=14)
    b.update([A, B, C])
    _warm(b, clock, [A, B, C], 0.010, 20)

    def latency(key: Key, rng: random.Random) -> float:
        return 0.0003 if key == C else 0.010 * rng.uniform(0.8, 1.2)

    # C answers every request with an error, at once, for 3 minutes
    picks = simulate(
        b, clock, requests=9000, interval=0.020, latency=latency, failing=frozenset([C])
    )
    probes = [at for at, k in picks if k == C]
    assert 1 <= len(probes) <= 8, probes  # one probe per decay of the penalty
    assert all(b - a > 20.0 for a, b in itertools.pairwise(probes)), probes


# -- property tests -----------------------------------------------------------------------------

KEYS = [(f"10.1.0.{i}", 8080) for i in range(5)]


class BalancerMachine(RuleBasedStateMachine):
    """Random operation sequences against a model of membership and outstanding requests."""

    requests = Bundle("requests")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.b: Balancer[Key] = Balancer(clock=self.clock, rng=random.Random(0))
        self.members: set[Key] = set()
        # per key, the outstanding requests started on the current membership entry
        self.outstanding: Counter[Key] = Counter()
        self.created: dict[Key, float] = {}

    @rule(keys=st.lists(st.sampled_from(KEYS), max_size=6))
    def update(self, keys: list[Key]) -> None:
        self.b.update(keys)
        for gone in self.members - set(keys):
            del self.outstanding[gone]
            del self.created[gone]
        for new in set(keys) - self.members:
            self.created[new] = self.clock()
        self.members = set(keys)

    @rule(target=requests)
    def pick_and_start(self) -> tuple[Key, float] | None:
        k = self.b.pick()
        if k is None:
            assert not self.members
            return None
        assert k in self.members
        ready = {key for key, _, _, r in self.b.stats() if r}
        if ready:
            assert k in ready
        self.outstanding[k] += 1
        return (k, self.b.start(k))

    @rule(key=st.sampled_from(KEYS))
    def start_any(self, key: Key) -> None:
        self.b.start(key)
        if key in self.members:
            self.outstanding[key] += 1

    @rule(req=consumes(requests), success=st.booleans())
    def finish(self, req: tuple[Key, float] | None, success: bool) -> None:
        if req is None:
            return
        key, started = req
        # a request belongs to the current entry unless the key left and came back since
        entry_created = self.created.get(key)
        self.b.finish(key, started, success=success)
        if key in self.members and entry_created is not None and started >= entry_created:
            self.outstanding[key] = max(0, self.outstanding[key] - 1)

    @rule(key=st.sampled_from(KEYS))
    def failed(self, key: Key) -> None:
        self.b.failed(key)
        if key in self.members:
            assert not self.b.ready(key)

    @rule(key=st.sampled_from(KEYS))
    def succeeded_connect(self, key: Key) -> None:
        self.b.succeeded_connect(key)
        if key in self.members:
            assert self.b.ready(key)

    @rule(dt=st.sampled_from([0.0, 0.001, 0.05, 0.3, 5.0, 100.0]))
    def advance(self, dt: float) -> None:
        self.clock.advance(dt)

    @invariant()
    def consistent(self) -> None:
        rows = self.b.stats()
        assert {k for k, _, _, _ in rows} == self.members
        assert len(self.b) == len(self.members)
        for _, pending, est, _ in rows:
            assert pending >= 0
            assert est >= 0
        assert {k: p for k, p, _, _ in rows if p} == {
            k: n for k, n in self.outstanding.items() if n
        }


BalancerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
test_balancer_state_machine = BalancerMachine.TestCase


@given(
    n=st.integers(2, 8),
    seed=st.integers(0, 2**32),
    failed=st.sets(st.integers(0, 7)),
)
def test_pick_prefers_ready_endpoints(n: int, seed: int, failed: set[int]) -> None:
    clock = FakeClock()
    b: Balancer[int] = Balancer(clock=clock, rng=random.Random(seed))
    b.update(range(n))
    for k in failed:
        b.failed(k)
    dead = {k for k in failed if k < n}
    for _ in range(20):
        got = b.pick()
        assert got is not None and 0 <= got < n
        if len(dead) < n:
            assert got not in dead


@given(
    n=st.integers(2, 8),
    seed=st.integers(0, 2**32),
    history=st.lists(
        st.tuples(st.integers(0, 7), st.floats(0.0, 0.02), st.booleans()), max_size=40
    ),
    victim=st.integers(0, 7),
    fast=st.floats(0.0, 0.1),
)
def test_right_after_a_failure_pick_returns_any_other_member_first(
    n: int, seed: int, history: list[tuple[int, float, bool]], victim: int, fast: float
) -> None:
    """Whatever the (successful) history, an endpoint that just failed, however fast, costs
    more than any other and is never picked while another member exists; picks are always
    members. (The others' costs stay under the penalty: at most 40 pending * 20 ms.)"""
    clock = FakeClock()
    b: Balancer[int] = Balancer(clock=clock, rng=random.Random(seed))
    b.update(range(n))
    victim %= n
    for key, rtt, keep_pending in history:
        key %= n
        t = b.start(key)
        clock.advance(rtt)
        if not keep_pending or key == victim:
            b.finish(key, t)
    t = b.start(victim)
    clock.advance(fast)
    b.finish(victim, t, success=False)
    for _ in range(50):
        got = b.pick()
        assert got is not None and 0 <= got < n and got != victim
