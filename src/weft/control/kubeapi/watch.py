"""Watches of the embedded Kubernetes API: ``GET ...?watch=1`` as the API server streams them.

One kind, in one namespace or all, narrowed by label and field selectors, as newline-delimited
``{"type", "object"}`` events:

- without ``resourceVersion`` (or ``0``): every current object as ``ADDED``, then changes; from a
  ``resourceVersion``: the changes after it, or, when the store no longer has them, one
  ``ERROR`` event with a ``410 Expired`` Status (the client lists again), exactly as the API
  server answers;
- through a selector, an object that starts matching arrives as ``ADDED`` and one that stops
  matching as ``DELETED`` (the store's events carry the object before the change to tell);
- with ``allowWatchBookmarks=true``, a ``BOOKMARK`` (the object's kind with only
  ``metadata.resourceVersion``) after the initial events and every ``bookmark_s`` while quiet,
  so a client's version keeps up with a quiet kind;
- ``sendInitialEvents=true`` (a streaming list, what kubectl and client-go's informers use
  now): the current objects as ``ADDED`` whatever the version asked, then a ``BOOKMARK``
  annotated ``k8s.io/initial-events-end: "true"``, then changes;
- ``timeoutSeconds`` ends the stream (default: :data:`DEFAULT_TIMEOUT_S`); a watcher that falls
  more than the store's queue limit behind is cut (it watches again from its last version).

Not for: the store's own watch API (``/api/v1/watch``), nor lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from weft.control.events import Event, Watch
from weft.control.httpserver import Streaming, StreamWriter
from weft.control.store import Expired, Store

DEFAULT_TIMEOUT_S = 1800  # the API server's --min-request-timeout
BOOKMARK_S = 60.0


def _line(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def expired_event(message: str) -> bytes:
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "Expired",
        "code": 410,
    }
    return _line({"type": "ERROR", "object": status})


def start(
    store: Store,
    kind: str,
    api_version: str,
    *,
    namespace: str | None,
    matches: Callable[[Mapping[str, Any]], bool],
    resource_version: int | None,
    bookmarks: bool,
    timeout_s: float,
    bookmark_s: float = BOOKMARK_S,
    present: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    initial_events: bool = False,
) -> Streaming:
    """The streaming response of one watch request (see the module docstring). ``present``
    turns each event's object into what the client asked for (a one-row Table for
    ``kubectl get -w``)."""
    shown = present or (lambda obj: obj)
    if initial_events:  # a streaming list: the current state first, whatever the version asked
        resource_version = None
    initial_end = [initial_events]
    try:
        watch = store.watch([kind], resource_version)
    except Expired as e:
        message = f"too old resource version: {resource_version} ({store.resource_version}): {e}"

        async def gone(writer: StreamWriter) -> None:
            await writer.send(expired_event(message))

        return Streaming(gone, content_type="application/json")

    def selected(obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        if namespace is not None and (obj.get("metadata") or {}).get("namespace") != namespace:
            return False
        return matches(obj)

    def render(event: Event) -> bytes | None:
        if event.type == "BOOKMARK":
            if initial_end[0]:
                # the end of the initial events of a streaming list (sendInitialEvents=true)
                initial_end[0] = False
                meta = {
                    "resourceVersion": str(event.resource_version),
                    "annotations": {"k8s.io/initial-events-end": "true"},
                }
                return _line(
                    {
                        "type": "BOOKMARK",
                        "object": {"kind": kind, "apiVersion": api_version, "metadata": meta},
                    }
                )
            if not bookmarks:
                return None
            return _line(
                {
                    "type": "BOOKMARK",
                    "object": {
                        "kind": kind,
                        "apiVersion": api_version,
                        "metadata": {"resourceVersion": str(event.resource_version)},
                    },
                }
            )
        now, before = selected(event.object), selected(event.old)
        if event.type == "DELETED":
            return _line({"type": "DELETED", "object": shown(event.object)}) if now else None
        if now:
            type_ = (
                "MODIFIED"
                if before or (event.type == "MODIFIED" and event.old is None)
                else "ADDED"
            )
            return _line({"type": type_, "object": shown(event.object)})
        if before:  # it left the selection: gone, for this watcher
            return _line({"type": "DELETED", "object": shown(event.object)})
        return None

    async def pump(writer: StreamWriter) -> None:
        await _pump(store, watch, writer, render, timeout_s, bookmark_s if bookmarks else None)

    return Streaming(pump, content_type="application/json")


async def _pump(
    store: Store,
    watch: Watch,
    writer: StreamWriter,
    render: Callable[[Event], bytes | None],
    timeout_s: float,
    bookmark_s: float | None,
) -> None:
    wake = asyncio.Event()
    watch.notify = wake.set
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            wake.clear()
            chunks = [c for c in map(render, watch.take()) if c is not None]
            if chunks:
                await writer.send(b"".join(chunks))
            if watch.closed is not None:
                return  # fell behind: the client watches again from its last version
            left = deadline - time.monotonic()
            if left <= 0:
                return
            wait = min(left, bookmark_s) if bookmark_s is not None else left
            woke = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), wait)
                woke = True
            if not woke and bookmark_s is not None and time.monotonic() < deadline:
                mark = render(Event("BOOKMARK", {}, store.resource_version))
                if mark is not None:
                    await writer.send(mark)
    finally:
        watch.close()


__all__ = ["BOOKMARK_S", "DEFAULT_TIMEOUT_S", "expired_event", "start"]
