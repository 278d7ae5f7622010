"""weft.testing.proxy.wait_until: true at once, a named failure on time out, or False."""

from __future__ import annotations

import asyncio

import pytest

from weft.testing import WaitTimeout, wait_until


async def test_true_as_soon_as_the_predicate_holds() -> None:
    box: list[int] = []
    asyncio.get_running_loop().call_later(0.05, box.append, 1)
    assert await wait_until(lambda: box, 5.0) is True
    assert await wait_until(lambda: True, 0.0) is True


async def test_time_out_fails_the_test_naming_what_was_awaited() -> None:
    with pytest.raises(WaitTimeout, match=r"not within 0.05s: the pool to drain"):
        await wait_until(lambda: False, 0.05, what="the pool to drain")
    with pytest.raises(AssertionError, match=r"test_testing_proxy\.py"):  # names the lambda
        await wait_until(lambda: False, 0.05)


async def test_check_false_returns_false_for_must_not_happen() -> None:
    assert await wait_until(lambda: False, 0.05, check=False) is False
