"""Leader election's decision (sans-I/O): when a replica may take the Lease."""

from __future__ import annotations

from weft.control.kube.leader import Election, Record


def test_a_free_or_own_lease_is_taken_at_once() -> None:
    e = Election("a")
    assert e.may_take(0.0)  # no Lease yet
    e.observe(Record("", 15.0, "t0", 1), 0.0)
    assert e.may_take(0.0)  # released
    e.observe(Record("a", 15.0, "t1", 1), 1.0)
    assert e.may_take(1.0)


def test_another_holder_is_waited_out_by_this_replicas_own_clock() -> None:
    e = Election("b")
    e.observe(Record("a", 15.0, "t0", 0), 100.0)
    assert not e.may_take(114.9)
    # renewed (the record changed): the wait starts again from when it was seen
    e.observe(Record("a", 15.0, "t1", 0), 110.0)
    assert not e.may_take(124.9)
    # the same record seen again does not restart the wait
    e.observe(Record("a", 15.0, "t1", 0), 120.0)
    assert e.may_take(125.0)
    # a holder whose clock runs far ahead changes nothing: only changes count
    e.observe(Record("a", 15.0, "2999-01-01T00:00:00Z", 0), 130.0)
    assert not e.may_take(140.0) and e.may_take(145.0)
