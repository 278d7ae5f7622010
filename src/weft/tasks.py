"""Stopping background tasks for sure.

:func:`cancel_and_wait` cancels tasks until they are done. One ``cancel()`` and an ``await`` are
not always enough on Python 3.11: ``asyncio.wait_for`` can swallow a cancellation that races its
own timeout, and the task then goes on looping, so the ``await`` waits forever (a shutdown that
hangs). Used by every component that runs loops in the background (identity renewal, policy and
discovery watches).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

ROUNDS = 20  # cancels at most, 0.25 s apart


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], *, every: float = 0.25) -> bool:
    """Cancel ``tasks`` until all are done (at most :data:`ROUNDS` times, ``every`` seconds
    apart); True when they all are. Their exceptions are retrieved (they were logged where
    they happened)."""
    tasks = list(tasks)
    for _ in range(ROUNDS):
        pending = [t for t in tasks if not t.done()]
        if not pending:
            break
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=every)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()
    return all(t.done() for t in tasks)


__all__ = ["cancel_and_wait"]
