"""The store's change events and watch queues.

:class:`Event` is one change of one object (with the object before it, for filtered watches);
:class:`Watch` a bounded queue of events for one watcher, which the store fills synchronously
and closes (never waits on) when the watcher falls behind; :func:`bookmark` an event that only
carries a resource version.

Not for: storing objects (:mod:`weft.control.store`), nor serving watches over HTTP.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    """One change: ``type`` is ADDED, MODIFIED, DELETED or BOOKMARK; ``old`` is the object
    before a MODIFIED (a filtered watch tells from it whether the object left its filter)."""

    type: str
    object: Mapping[str, Any]
    resource_version: int
    old: Mapping[str, Any] | None = None

    @property
    def kind(self) -> str:
        return str(self.object.get("kind", ""))

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "object": self.object}


def bookmark(resource_version: int) -> Event:
    obj = {"kind": "Bookmark", "metadata": {"resourceVersion": str(resource_version)}}
    return Event("BOOKMARK", obj, resource_version)


class Watch:
    """A bounded queue of events for one watcher.

    The store pushes synchronously; the consumer drains with :meth:`take` when ``notify`` (set by
    the consumer) tells it there is something new. When more than ``limit`` events wait, the watch
    is closed with a reason and dropped by the store: the consumer re-watches.
    """

    __slots__ = ("_drop", "_events", "closed", "kinds", "limit", "notify")

    def __init__(
        self,
        drop: Callable[[Watch], None],
        kinds: frozenset[str] | None,
        limit: int,
        initial: Iterable[Event],
    ) -> None:
        self._drop = drop
        self.kinds = kinds
        self.limit = limit
        self._events: deque[Event] = deque(initial)
        self.closed: str | None = None
        self.notify: Callable[[], None] | None = None

    def wants(self, event: Event) -> bool:
        return self.kinds is None or event.kind in self.kinds

    def push(self, event: Event) -> None:
        if self.closed is not None:
            return
        if len(self._events) >= self.limit:
            self.close(f"watcher fell behind by more than {self.limit} events")
            return
        self._events.append(event)
        if self.notify is not None:
            self.notify()

    def take(self) -> list[Event]:
        out = list(self._events)
        self._events.clear()
        return out

    def __len__(self) -> int:
        return len(self._events)

    def close(self, reason: str = "closed") -> None:
        if self.closed is None:
            self.closed = reason
            self._drop(self)
            if self.notify is not None:
                self.notify()

    def __repr__(self) -> str:
        kinds = ",".join(sorted(self.kinds)) if self.kinds else "*"
        state = f"closed: {self.closed}" if self.closed else f"pending={len(self._events)}"
        return f"<Watch {kinds} {state}>"


__all__ = ["Event", "Watch", "bookmark"]
