"""A controller's work list: keys marked dirty, worked off later, each once however often marked.

A controller's change handler must not block and must not write inside another change's
notification. :class:`WorkList` takes the keys a change affects (:meth:`WorkList.mark`) and runs
``work(key)`` for each, deferred through ``schedule`` (the control plane passes the event loop's
``call_soon``: one pass per loop turn, however many changes came in it), or, with no
``schedule``, at once. A pass is guarded against re-entry: a write of the controller's own that
notifies it marks the key again, and the running pass picks it up.

Not for: retries with backoff or rate limits (client-go's workqueue has them; nothing here needs
them yet), nor I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
Schedule = Callable[[Callable[[], None]], object]


class WorkList(Generic[K]):
    """Dirty keys and the pass that works them off (see the module docstring). ``work(key)``
    returns how much it did (objects written), summed in :attr:`done`."""

    __slots__ = ("_dirty", "_running", "_schedule", "_scheduled", "_work", "done")

    def __init__(self, work: Callable[[K], int], schedule: Schedule | None = None) -> None:
        self._work = work
        self._schedule = schedule
        self._dirty: set[K] = set()
        self._scheduled = False
        self._running = False
        self.done = 0

    def __len__(self) -> int:
        return len(self._dirty)

    def mark(self, keys: Iterable[K]) -> None:
        """Mark ``keys`` dirty and make sure a pass will run."""
        self._dirty.update(keys)
        if not self._dirty:
            return
        if self._schedule is None:
            self.run()
        elif not self._scheduled:
            self._scheduled = True
            self._schedule(self._scheduled_run)

    def clear(self) -> None:
        self._dirty.clear()

    def _scheduled_run(self) -> None:
        self._scheduled = False
        self.run()

    def run(self) -> int:
        """Work off every dirty key (those marked meanwhile too); how much was done."""
        if self._running:
            return 0
        self._running = True
        done = 0
        try:
            while self._dirty:
                done += self._work(self._dirty.pop())
        finally:
            self._running = False
        self.done += done
        return done


__all__ = ["Schedule", "WorkList"]
