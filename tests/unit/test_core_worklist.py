"""The controllers' work list: keys coalesced, worked once per pass, deferred or at once, and a
pass never re-entered by the writes it makes."""

from __future__ import annotations

from collections.abc import Callable

from weft.core.worklist import WorkList


def test_deferred_marks_coalesce_into_one_pass() -> None:
    pending: list[Callable[[], None]] = []
    worked: list[str] = []
    work = WorkList(lambda k: worked.append(k) or 1, pending.append)
    work.mark(["a", "b"])
    work.mark(["a"])
    assert worked == [] and len(pending) == 1 and len(work) == 2
    pending.pop()()
    assert sorted(worked) == ["a", "b"] and work.done == 2 and len(work) == 0


def test_a_pass_is_not_reentered_by_its_own_writes() -> None:
    worked: list[str] = []
    work: WorkList[str] = WorkList(lambda k: 0)

    def step(key: str) -> int:
        worked.append(key)
        if key == "a":
            work.mark(["b"])  # a write of ours notifies us: picked up by this pass
        return 1

    work = WorkList(step)
    work.mark(["a"])
    assert worked == ["a", "b"] and work.done == 2
