"""weft.tasks.cancel_and_wait: a task that swallows one cancellation is still stopped."""

from __future__ import annotations

import asyncio

from weft.tasks import cancel_and_wait


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed > 1:
                    raise  # the second cancellation ends it

    task = asyncio.get_running_loop().create_task(stubborn())
    await asyncio.sleep(0)
    assert await cancel_and_wait([task], every=0.01)
    assert task.cancelled() and swallowed == 2


async def test_finished_and_failed_tasks_are_fine() -> None:
    async def fail() -> None:
        raise RuntimeError("logged elsewhere")

    loop = asyncio.get_running_loop()
    done = loop.create_task(asyncio.sleep(0))
    failed = loop.create_task(fail())
    await asyncio.sleep(0.01)
    assert await cancel_and_wait([done, failed])
