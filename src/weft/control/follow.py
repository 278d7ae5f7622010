"""Following a control-plane stream for as long as its owner lives: the one reconnect loop.

A proxy holds several streams to the control plane: one per destination it routes to, its inbound
policy, and the identity trust watch. Each must survive anything the control plane does (crash,
restart, restart during a connect, a half-written answer, a burst of updates) and never end
silently: a proxy whose destination stream died keeps dialling deleted pods until it is restarted.
:class:`Follower` is the one loop they all use:

- it opens the stream (``open()``, an async iterator of decoded JSON values), hands every value to
  ``on_item`` and, when the stream ends or fails for *any* reason, logs why, waits
  ``backoff.delay(attempt)`` (jittered, capped at :data:`MAX_DELAY` by default so that a restarted
  control plane is found again within seconds) and opens it again, forever;
- a handler that raises is logged with its traceback and the value skipped: a bad update never
  ends the stream;
- the task itself is supervised: if it ever finishes other than through :meth:`Follower.close`
  (a bug, an exception that escaped everything above), that is logged as an error and a new task
  starts after a backoff delay;
- while disconnected nothing is reset: the owner keeps serving its last state.

:class:`ControlStreams` is the registry of a process's followers: their state (connected or not,
when the last message and the last update came, how many times they reconnected, the last error)
as the admin endpoint's JSON (``GET /control-streams`` on the proxy's admin port) and as metrics
(``control_stream_connected``, ``control_stream_reconnects_total``,
``control_stream_last_update_timestamp_seconds``, ``control_stream_updates_total``, labelled with
``stream`` (``destination``, ``inbound_policy``, ``identity_trust``) and ``target``).

Not for: what a stream means (the owners: :mod:`weft.proxy.control_discovery`,
:mod:`weft.proxy.inbound.policy`, :mod:`weft.proxy.identity`), nor one-shot calls (retries of a
request are the caller's), nor the transport (:mod:`weft.control.client`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from weft.control.client import ApiError, ControlUnavailable
from weft.core.backoff import ExponentialBackoff
from weft.metrics.proxy import render_family
from weft.tasks import cancel_and_wait

log = logging.getLogger("weft.control.follow")

# A restarted control plane must be found again within seconds: the endpoints a proxy routes to
# may change right after it is back. 100 ms doubling to 2 s, plus up to 50% jitter so that a
# mesh of proxies does not reconnect in one burst: at most 3 s between attempts.
BASE_DELAY = 0.1
MAX_DELAY = 2.0
JITTER = 0.5


def default_backoff() -> ExponentialBackoff:
    """The reconnect backoff of control-plane streams (see :data:`MAX_DELAY`)."""
    return ExponentialBackoff(base=BASE_DELAY, maximum=MAX_DELAY, jitter=JITTER)


class StreamState:
    """What is known of one followed stream (times are wall-clock seconds since the epoch)."""

    __slots__ = (
        "connected",
        "kind",
        "last_error",
        "last_message",
        "last_update",
        "reconnects",
        "restarts",
        "since",
        "target",
        "updates",
    )

    def __init__(self, kind: str, target: str) -> None:
        self.kind = kind
        self.target = target
        self.connected = False
        self.since = time.time()  # when ``connected`` last changed
        self.last_message: float | None = None  # any value, heartbeats included
        self.last_update: float | None = None  # a value that changed the owner's state
        self.updates = 0
        self.reconnects = 0  # streams opened after the first
        self.restarts = 0  # tasks that died and were started again
        self.last_error: str | None = None

    def view(self) -> dict[str, Any]:
        return {
            "stream": self.kind,
            "target": self.target,
            "connected": self.connected,
            "since": self.since,
            "lastMessage": self.last_message,
            "lastUpdate": self.last_update,
            "updates": self.updates,
            "reconnects": self.reconnects,
            "taskRestarts": self.restarts,
            "lastError": self.last_error,
        }

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        return f"<StreamState {self.kind} {self.target} {state} reconnects={self.reconnects}>"


class ControlStreams:
    """The followers of one process: their states as JSON and as Prometheus text."""

    def __init__(self) -> None:
        self._states: dict[int, StreamState] = {}

    def add(self, state: StreamState) -> None:
        self._states[id(state)] = state

    def discard(self, state: StreamState) -> None:
        self._states.pop(id(state), None)

    def states(self) -> list[StreamState]:
        return sorted(self._states.values(), key=lambda s: (s.kind, s.target))

    def view(self) -> dict[str, Any]:
        """The admin endpoint's JSON: every stream's state."""
        states = self.states()
        return {
            "connected": sum(1 for s in states if s.connected),
            "streams": [s.view() for s in states],
        }

    def render(self) -> str:
        """Prometheus text for every stream (appended to the proxy's ``/metrics``)."""
        states = self.states()
        if not states:
            return ""
        keyed = [((("stream", s.kind), ("target", s.target)), s) for s in states]
        return "".join(
            [
                render_family(
                    "control_stream_connected",
                    "gauge",
                    "Whether the stream from the control plane is open.",
                    [(k, int(s.connected)) for k, s in keyed],
                ),
                render_family(
                    "control_stream_reconnects_total",
                    "counter",
                    "Streams from the control plane reopened after one ended.",
                    [(k, s.reconnects) for k, s in keyed],
                ),
                render_family(
                    "control_stream_updates_total",
                    "counter",
                    "Updates received on the stream.",
                    [(k, s.updates) for k, s in keyed],
                ),
                render_family(
                    "control_stream_last_update_timestamp_seconds",
                    "gauge",
                    "When the last update arrived.",
                    [(k, s.last_update) for k, s in keyed if s.last_update is not None],
                ),
            ]
        )

    def __len__(self) -> int:
        return len(self._states)


class Follower:
    """One stream followed forever (see the module docstring).

    ``open()`` returns a fresh async iterator of the stream's values; ``on_item(value)`` returns
    True when the value was an update (False for a heartbeat); ``on_lost(reason, connected)`` is
    told each time the stream ends (``connected``: whether it had delivered anything), and
    ``on_refused(error)`` when the control plane answered the request with an error status.
    """

    def __init__(
        self,
        kind: str,
        target: str,
        open: Callable[[], AsyncIterator[Any]],
        on_item: Callable[[Any], bool],
        *,
        registry: ControlStreams | None = None,
        backoff: ExponentialBackoff | None = None,
        on_lost: Callable[[str, bool], None] | None = None,
        on_refused: Callable[[ApiError], None] | None = None,
    ) -> None:
        self.state = StreamState(kind, target)
        self._open = open
        self._on_item = on_item
        self._on_lost = on_lost
        self._on_refused = on_refused
        self.backoff = backoff or default_backoff()
        self.registry = registry
        self.attempt = 0
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._opened = 0
        if registry is not None:
            registry.add(self.state)

    def __repr__(self) -> str:
        return f"<Follower {self.state!r}>"

    @property
    def connected(self) -> bool:
        return self.state.connected

    def start(self) -> None:
        """Start following (once; needs a running event loop)."""
        if self._task is None and not self._closed:
            self._spawn(0.0)

    def _spawn(self, delay: float) -> None:
        task = asyncio.get_running_loop().create_task(
            self._run(delay), name=f"control-stream {self.state.kind} {self.state.target}"
        )
        task.add_done_callback(self._died)
        self._task = task

    def _died(self, task: asyncio.Task[None]) -> None:
        if self._closed or task is not self._task:
            return
        if task.cancelled():
            reason = "cancelled"
        else:
            exc = task.exception()
            reason = repr(exc) if exc is not None else "returned"
            if exc is not None:
                log.error(
                    "%s stream for %s: its task died; restarting it",
                    self.state.kind,
                    self.state.target,
                    exc_info=exc,
                )
        if reason in ("cancelled", "returned"):
            log.error(
                "%s stream for %s: its task ended (%s); restarting it",
                self.state.kind,
                self.state.target,
                reason,
            )
        self.state.restarts += 1
        self._mark_lost(f"task ended: {reason}")
        delay = self.backoff.delay(self.attempt)
        self.attempt += 1
        try:
            self._spawn(delay)
        except RuntimeError:  # the event loop is closing: nothing left to follow for
            self._task = None

    async def _run(self, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        while True:
            reason = await self._follow_once()
            self._mark_lost(reason)
            delay = self.backoff.delay(self.attempt)
            self.attempt += 1
            await asyncio.sleep(delay)

    async def _follow_once(self) -> str:
        """Open the stream and follow it until it ends; why it ended."""
        state = self.state
        try:
            self._opened += 1
            async for item in self._open():
                now = time.time()
                if not state.connected:
                    state.connected = True
                    state.since = now
                    state.last_error = None
                    if self._opened > 1:
                        state.reconnects += 1
                    self.attempt = 0
                    log.debug("%s stream for %s open", state.kind, state.target)
                state.last_message = now
                try:
                    changed = self._on_item(item)
                except Exception:
                    log.exception(
                        "%s stream for %s: an update could not be applied (skipped; the last "
                        "state stays)",
                        state.kind,
                        state.target,
                    )
                    continue
                if changed:
                    state.last_update = now
                    state.updates += 1
            return "the control plane ended the stream"
        except ControlUnavailable as exc:
            return str(exc)
        except ApiError as exc:
            if self._on_refused is not None:
                with _logged("on_refused", state):
                    self._on_refused(exc)
            return f"control plane refused the request: {exc}"
        except Exception as exc:
            log.exception("%s stream for %s failed", state.kind, state.target)
            return f"{type(exc).__name__}: {exc}"

    def _mark_lost(self, reason: str) -> None:
        state = self.state
        was = state.connected
        if was:
            log.warning(
                "%s stream for %s lost (%s); keeping the last state, reconnecting",
                state.kind,
                state.target,
                reason,
            )
            state.since = time.time()
        else:
            log.debug("%s stream for %s: %s", state.kind, state.target, reason)
        state.connected = False
        state.last_error = reason
        if self._on_lost is not None:
            with _logged("on_lost", state):
                self._on_lost(reason, was)

    async def close(self) -> None:
        """Stop following (the state leaves the registry)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait([task])
        if self.registry is not None:
            self.registry.discard(self.state)

    def cancel(self) -> None:
        """Stop following without waiting (for synchronous eviction)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        if self.registry is not None:
            self.registry.discard(self.state)


@contextlib.contextmanager
def _logged(what: str, state: StreamState) -> Iterator[None]:
    try:
        yield
    except Exception:
        log.exception("%s stream for %s: %s failed", state.kind, state.target, what)


__all__ = [
    "BASE_DELAY",
    "JITTER",
    "MAX_DELAY",
    "ControlStreams",
    "Follower",
    "StreamState",
    "default_backoff",
]
