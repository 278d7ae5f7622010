"""Discovery from the control plane's destination API: one streaming watch per target.

``ControlDiscovery("unix:/run/weft/control.sock")`` is the proxy's
:class:`~weft.discovery.Discovery` when it runs in the mesh. The first
:meth:`~ControlDiscovery.resolve` of a target opens a stream
(``GET /api/v1/destinations?target=...``) and waits for its first snapshot at most
``first_answer_timeout`` seconds (retrying meanwhile, so that a control plane that is restarting
still answers; not at all when it has been unreachable for longer than that); every later snapshot
updates the :class:`~weft.discovery.Resolution` in place.

Each stream is a :class:`weft.control.follow.Follower`: when it breaks (control plane restarted,
socket gone, silence beyond three heartbeats, anything else) the resolution keeps its last
snapshot, so the proxy keeps serving with what it knew, and the stream is reopened after a
jittered backoff capped at a few seconds, forever; a handler or task failure is logged and the
stream goes on. Its state is in the registry (``streams``) that the proxy shows on its admin port
(``/control-streams``) and in its metrics. A resolution nobody subscribes to and nobody resolved
for ``idle_timeout`` seconds (5 minutes) is dropped with its stream.

Not for: deciding what to do with an unknown target (``current is None``: the proxy forwards to
the original address) or balancing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from weft.addr import format_addr, parse_hostport
from weft.control.client import ApiError, ControlClient
from weft.control.follow import ControlStreams, Follower
from weft.core.backoff import ExponentialBackoff
from weft.discovery import Destination, Listener, Resolution
from weft.tasks import cancel_and_wait

log = logging.getLogger("weft.discovery.control")

IDLE_TIMEOUT = 300.0


class _Tracked(Resolution):
    """A resolution that counts its subscribers, so idle ones can be evicted."""

    __slots__ = ("subscribers",)

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.subscribers = 0

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        unsubscribe = super().subscribe(listener)
        self.subscribers += 1
        done = False

        def counted() -> None:
            nonlocal done
            if not done:
                done = True
                self.subscribers -= 1
            unsubscribe()

        return counted


@dataclass
class _Entry:
    resolution: _Tracked
    first: asyncio.Event = field(default_factory=asyncio.Event)
    last_used: float = 0.0
    follower: Follower | None = None

    @property
    def connected(self) -> bool:
        return self.follower is not None and self.follower.connected


class ControlDiscovery:
    """A :class:`~weft.discovery.Discovery` fed by the control plane (see the module docstring)."""

    def __init__(
        self,
        endpoint: str | ControlClient,
        *,
        clock: Callable[[], float] = time.monotonic,
        first_answer_timeout: float = 1.0,
        idle_timeout: float = IDLE_TIMEOUT,
        namespace: str | None = None,
        backoff: ExponentialBackoff | None = None,
        streams: ControlStreams | None = None,
    ) -> None:
        if not first_answer_timeout >= 0:
            raise ValueError(f"first_answer_timeout must be >= 0, got {first_answer_timeout!r}")
        if not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be positive, got {idle_timeout!r}")
        self.client = endpoint if isinstance(endpoint, ControlClient) else ControlClient(endpoint)
        self.clock = clock
        self.first_answer_timeout = first_answer_timeout
        self.idle_timeout = idle_timeout
        self.namespace = namespace
        self.backoff = backoff
        self.streams = streams if streams is not None else ControlStreams()
        self._entries: dict[str, _Entry] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False
        # when streams started failing with none working since: after first_answer_timeout of
        # that, new resolutions answer at once instead of waiting for a control plane not there
        self._down_since: float | None = None

    def __repr__(self) -> str:
        up = sum(1 for e in self._entries.values() if e.connected)
        return (
            f"<ControlDiscovery {self.client.endpoint} targets={len(self._entries)} connected={up}>"
        )

    async def resolve(self, target: str) -> Resolution:
        if self._closed:
            raise RuntimeError("ControlDiscovery is closed")
        try:
            key = format_addr(parse_hostport(target))
        except ValueError:
            return Resolution(target)
        entry = self._entries.get(key)
        if entry is None:
            entry = _Entry(_Tracked(key))
            self._entries[key] = entry
            entry.follower = self._follower(entry)
            entry.follower.start()
            if self._sweeper is None:
                self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        entry.last_used = now = self.clock()
        down = self._down_since is not None and now - self._down_since >= self.first_answer_timeout
        if not entry.first.is_set() and not down:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(entry.first.wait()), self.first_answer_timeout
                )
        return entry.resolution

    def _follower(self, entry: _Entry) -> Follower:
        target = entry.resolution.target
        query = {"target": target}
        if self.namespace is not None:
            query["namespace"] = self.namespace
        path = "/api/v1/destinations?" + urlencode(query)

        def on_item(item: Any) -> bool:
            self._down_since = None
            if not isinstance(item, dict) or "destination" not in item:
                return False  # heartbeat
            raw = item["destination"]
            try:
                dest = None if raw is None else Destination.from_json(raw)
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                log.warning(
                    "ignoring an invalid destination for %s (keeping the last one): %s",
                    target,
                    exc,
                )
                return False
            entry.resolution.set(dest)
            entry.first.set()
            return True

        def on_lost(reason: str, connected: bool) -> None:
            if self._down_since is None:
                self._down_since = self.clock()

        def on_refused(exc: ApiError) -> None:
            # the control plane is up but refuses this target: nothing to wait for
            self._down_since = None
            entry.first.set()

        return Follower(
            "destination",
            target,
            lambda: self.client.stream(path),
            on_item,
            registry=self.streams,
            backoff=self.backoff,
            on_lost=on_lost,
            on_refused=on_refused,
        )

    def evict_idle(self) -> list[str]:
        """Drop resolutions unused for ``idle_timeout`` with no subscribers; their targets."""
        now = self.clock()
        gone: list[str] = []
        for key, entry in list(self._entries.items()):
            if entry.resolution.subscribers > 0 or now - entry.last_used < self.idle_timeout:
                continue
            if entry.follower is not None:
                entry.follower.cancel()
            del self._entries[key]
            gone.append(key)
        return gone

    async def _sweep(self) -> None:
        interval = min(30.0, self.idle_timeout / 2)
        while True:
            await asyncio.sleep(interval)
            for key in self.evict_idle():
                log.debug("evicted idle resolution %s", key)

    async def close(self) -> None:
        self._closed = True
        for entry in self._entries.values():
            if entry.follower is not None:
                await entry.follower.close()
        if self._sweeper is not None:
            await cancel_and_wait([self._sweeper])
        self._entries.clear()
        self._sweeper = None
