"""An informer: one kind of the Kubernetes API kept in a local cache, changes handed to a callback.

:class:`Informer` drives :class:`weft.core.informer.Cache` over the API: list (in pages), then
watch from the list's resource version with bookmarks; when the server ends a watch request, the
next starts where the last left off (bookmarks keep that version current on a quiet kind); on
``410 Gone`` (the version is older than the server keeps) it lists again, and the cache reports
what changed meanwhile, deletes included. A failure to reach the server (refused, reset, timed
out, a 5xx) keeps the cache as it is and tries again with jittered exponential backoff, from the
last version, forever: a controller serves its last state through an API server outage. Every
``resync_s`` the whole cache is handed to the callback again as unchanged updates. Cancelled and
run again, an informer resumes from the version its cache reached rather than listing.

The callback (``on_change``) runs on the event loop for each change, in order, and must not
block: it records what to do (a controller marks the affected subscriptions) and returns. An
exception from it is logged and the informer goes on.

Not for: what changes mean (controllers), writing to the API (``lightkube.AsyncClient`` itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient

from weft.control.kube.client import WATCH_TIMEOUT_S, list_page, watch
from weft.core.backoff import ExponentialBackoff
from weft.core.informer import BadObject, Cache, Change, Indexer

log = logging.getLogger("weft.kube")

Obj = dict[str, Any]

LIST_PAGE = 500  # objects per list request (the server pages with a continue token)


class Informer:
    """``resource`` (a lightkube resource class, e.g. ``lightkube.resources.core_v1.Pod``) in
    ``namespace`` (None: all), limited by ``labels`` / ``fields`` selectors, held as the decoded
    JSON the server sent (dicts; treat them as read-only); see the module docstring.
    :attr:`cache` is readable at any time; :attr:`synced` is set once the first list is in
    it."""

    def __init__(
        self,
        client: AsyncClient,
        resource: Any,
        *,
        namespace: str | None = None,
        labels: Mapping[str, str] | None = None,
        fields: Mapping[str, str] | None = None,
        indexers: Mapping[str, Indexer[Obj]] | None = None,
        on_change: Callable[[Change[Obj]], None] | None = None,
        resync_s: float | None = None,
        watch_timeout_s: int = WATCH_TIMEOUT_S,
        backoff: ExponentialBackoff | None = None,
        cache: Cache[Obj] | None = None,
    ) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.labels = labels
        self.fields = fields
        self.on_change = on_change
        self.resync_s = resync_s
        self.watch_timeout_s = watch_timeout_s
        self.backoff = backoff or ExponentialBackoff(base=0.2, maximum=30.0, jitter=0.5)
        # ``cache``: one shared with a reader (weft.control.kube.state), its indexes already set
        self.cache: Cache[Obj] = cache if cache is not None else Cache(indexers)
        self.synced = asyncio.Event()
        self.name = getattr(resource, "__name__", str(resource))
        # what it has done, for metrics and the admin endpoint
        self.lists = 0
        self.relists_gone = 0  # lists forced by 410 Gone
        self.failures = 0
        self.last_error: str | None = None
        self.last_event_at: float | None = None
        self.connected = False

    async def run(self) -> None:
        """List and watch until cancelled. Run again after a cancel, it resumes watching from the
        version its cache reached (a ``410`` makes it list, as always)."""
        attempt = 0
        need_list = not self.cache.resource_version
        resync = asyncio.get_running_loop().create_task(self._resync()) if self.resync_s else None
        try:
            while True:
                try:
                    if need_list:
                        await self._list()
                        need_list = False
                    await self._watch()  # one watch request; the server ends it after a while
                    attempt = 0
                except ApiError as e:
                    self.connected = False
                    code = getattr(e.status, "code", None)
                    if code == 410:
                        self.relists_gone += 1
                        log.info("%s: %s; listing again", self.name, e.status.message)
                        need_list = True
                        continue
                    attempt = await self._failed(f"API error {code}: {e.status.message}", attempt)
                except (httpx2.HTTPError, OSError, ValueError) as e:
                    # ValueError: a body the client could not decode (msgspec's errors are one)
                    self.connected = False
                    attempt = await self._failed(f"{type(e).__name__}: {e}", attempt)
        finally:
            if resync is not None:
                resync.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await resync

    async def _list(self) -> None:
        items: list[Obj] = []
        token: str | None = None
        while True:
            page = await list_page(
                self.client,
                self.resource,
                namespace=self.namespace,
                labels=self.labels,
                fields=self.fields,
                limit=LIST_PAGE,
                continue_=token,
            )
            items.extend(page.items)
            if not page.next:
                break
            token = page.next
        changes = self.cache.replace(items, page.resource_version)
        self.lists += 1
        self.connected = True
        self.last_event_at = time.monotonic()
        self._dispatch(changes)
        self.synced.set()

    async def _watch(self) -> None:
        events = watch(
            self.client,
            self.resource,
            resource_version=self.cache.resource_version,
            namespace=self.namespace,
            labels=self.labels,
            fields=self.fields,
            timeout_s=self.watch_timeout_s,
        )
        async for kind, obj in events:
            self.connected = True
            self.last_event_at = time.monotonic()
            try:
                change = self.cache.apply(kind, obj)
            except BadObject as e:
                log.warning("%s: skipped a watch event: %s", self.name, e)
                continue
            if change is not None:
                self._dispatch([change])

    def _dispatch(self, changes: list[Change[Obj]]) -> None:
        if self.on_change is None:
            return
        for change in changes:
            try:
                self.on_change(change)
            except Exception:
                log.exception("%s: handler failed on %s %s", self.name, change.kind, change.key)

    async def _failed(self, why: str, attempt: int) -> int:
        self.failures += 1
        self.last_error = why
        delay = self.backoff.delay(attempt)
        log.warning("%s: %s; watching again in %.1f s", self.name, why, delay)
        await asyncio.sleep(delay)
        return attempt + 1

    async def _resync(self) -> None:
        assert self.resync_s is not None
        while True:
            await asyncio.sleep(self.resync_s)
            if self.synced.is_set():
                self._dispatch(self.cache.resync())


__all__ = ["LIST_PAGE", "Informer"]
