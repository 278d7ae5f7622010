"""The control-plane HTTP API: routes requests to the store, destinations and stats.

Endpoints (reference with examples in docs/control-plane-api.md):

- ``GET /healthz``
- ``POST /api/v1/apply`` ``{"documents": [...], "source": "file"}`` (all-or-nothing; 422 with
  field details)
- ``POST /api/v1/delete`` ``{"documents": [{"kind", "metadata": {"name", "namespace"}}]}``
- ``GET /api/v1/resources/<Kind>[?namespace=ns]``, ``GET /api/v1/resources/<Kind>/<ns>/<name>``
- ``PUT /api/v1/resources/<Kind>/<ns>/<name>/status`` ``{"status": {...}}``
- ``GET /api/v1/watch?kinds=Pod,Service[&resourceVersion=N]``: NDJSON events, heartbeat BOOKMARKs
- ``GET /api/v1/destinations?target=ip:port|name:port[&namespace=ns]``: NDJSON snapshots,
  heartbeat ``{}``
- ``GET /api/v1/stat?kind=deploy|svc|pod[&name=][&namespace=][&window=60]``
- ``GET /api/v1/routes?service=NAME[&namespace=ns][&window=60]``: per-route stats of a service

Streams never wait on a slow reader: a watch whose queue overflows is cut (the client re-watches);
a destination stream only ever sends the latest snapshot.

Not for: HTTP parsing and connection handling (:mod:`weft.control.httpserver`), nor the logic of
the store, destinations or stats.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from weft.control.destinations import DestinationService
from weft.control.events import Watch, bookmark
from weft.control.httpserver import HttpError, Request, Response, Streaming, StreamWriter
from weft.control.kubeapi.server import KubeApi
from weft.control.store import Expired, NotFound, Store
from weft.discovery import Destination
from weft.resources.errors import InvalidResources
from weft.resources.meta import DEFAULT_NAMESPACE
from weft.resources.registry import KINDS, resolve_kind

HEARTBEAT = 5.0

# ``handler(request, rest)`` for ``/api/v1/<group>/<rest...>``: a group another module serves
SubHandler = Callable[[Request, list[str]], Awaitable[Response | Streaming]]
MAX_WINDOW = 3600.0


class StatSource(Protocol):
    """What the API needs from metrics aggregation."""

    def stat(
        self, kind: str, name: str | None, namespace: str | None, window: float
    ) -> list[dict[str, Any]]: ...

    def routes(
        self, service: str, namespace: str, window: float, configured: Sequence[str] = ()
    ) -> list[dict[str, Any]]: ...


def _line(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _invalid(exc: InvalidResources) -> HttpError:
    return HttpError(422, exc.summary, [e.to_json() for e in exc.errors])


def _kind(name: str) -> str:
    try:
        return resolve_kind(name).kind
    except ValueError as exc:
        raise HttpError(404, str(exc)) from None


def _documents(body: Any) -> Sequence[Any]:
    if not isinstance(body, dict) or not isinstance(body.get("documents"), list):
        raise HttpError(400, 'request body must be {"documents": [...]}')
    docs: list[Any] = body["documents"]
    return docs


class Api:
    """Routes one request; ``handle`` is the :class:`HttpServer` handler."""

    def __init__(
        self,
        store: Store | None,
        destinations: DestinationService,
        stats: StatSource | None = None,
        *,
        heartbeat: float = HEARTBEAT,
        handlers: Mapping[str, SubHandler] | None = None,
        kube: KubeApi | None = None,
        ready: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.store = store
        # why this control plane should get no traffic yet (None: it is ready); /ready says it
        self.not_ready = ready
        # the Kubernetes REST API over the same store, on the same listeners
        self.kube = kube
        # further API groups (``/api/v1/<group>/...``) served by other modules
        self.handlers: dict[str, SubHandler] = dict(handlers or {})
        self.destinations = destinations
        self.stats = stats
        self.heartbeat = heartbeat

    async def handle(self, request: Request) -> Response | Streaming:
        path = request.path.rstrip("/") or "/"
        parts = [p for p in path.split("/") if p]
        method = request.method
        if not request.privileged and not _for_workloads(method, parts):
            raise HttpError(
                403,
                f"{method} {request.path} is for the mesh's administrator (root); workloads may "
                "only resolve destinations, certify their identity and read their policy",
            )
        if self.kube is not None and parts and self.kube.owns(parts):
            return await self.kube.handle(request)
        if path in ("/healthz", "/ready", "/live"):
            self._method(method, "GET")
            why = self.not_ready() if path == "/ready" else None
            if why is not None:
                raise HttpError(503, f"not ready: {why}")
            body: dict[str, Any] = {"status": "ok"}
            if self.store is not None:
                body["resourceVersion"] = self.store.resource_version
            return Response.json(200, body)
        if parts[:2] != ["api", "v1"] or len(parts) < 3:
            raise HttpError(404, f"no such endpoint: {request.path}")
        route = parts[2]
        if route == "apply" and len(parts) == 3:
            self._method(method, "POST")
            return self._apply(request)
        if route == "delete" and len(parts) == 3:
            self._method(method, "POST")
            return self._delete(request)
        if route == "resources":
            return self._resources(request, parts[3:])
        if route == "watch" and len(parts) == 3:
            self._method(method, "GET")
            return self._watch(request)
        if route == "destinations" and len(parts) == 3:
            self._method(method, "GET")
            return self._destinations(request)
        if route == "stat" and len(parts) == 3:
            self._method(method, "GET")
            return self._stat(request)
        if route == "routes" and len(parts) == 3:
            self._method(method, "GET")
            return self._routes(request)
        extra = self.handlers.get(route)
        if extra is not None:
            return await extra(request, parts[3:])
        raise HttpError(404, f"no such endpoint: {request.path}")

    @property
    def _store(self) -> Store:
        if self.store is None:
            raise HttpError(
                404,
                "this control plane reads a Kubernetes cluster: manage resources with kubectl",
            )
        return self.store

    @staticmethod
    def _method(method: str, allowed: str) -> None:
        if method != allowed:
            raise HttpError(405, f"method {method} not allowed here; use {allowed}")

    # -- resources ---------------------------------------------------------------------------

    def _apply(self, request: Request) -> Response:
        body = request.json()
        docs = _documents(body)
        source = body.get("source")
        try:
            results = self._store.apply(docs, source=source if isinstance(source, str) else None)
        except InvalidResources as exc:
            raise _invalid(exc) from None
        return Response.json(
            200,
            {"applied": [r.object for r in results], "actions": [r.action for r in results]},
        )

    def _delete(self, request: Request) -> Response:
        try:
            results = self._store.delete(_documents(request.json()))
        except InvalidResources as exc:
            raise _invalid(exc) from None
        return Response.json(
            200, {"results": [{"action": r.action, "object": r.object} for r in results]}
        )

    def _resources(self, request: Request, rest: list[str]) -> Response:
        if not rest:
            raise HttpError(404, "missing kind: /api/v1/resources/<Kind>")
        kind = _kind(rest[0])
        namespaced = KINDS[kind].namespaced
        if len(rest) == 1:
            self._method(request.method, "GET")
            ns = request.query.get("namespace") or None
            return Response.json(200, {"items": self._store.list(kind, ns if namespaced else None)})
        status = rest[-1] == "status" and len(rest) in (3, 4)
        ident = rest[1:-1] if status else rest[1:]
        if len(ident) == 1 and not namespaced:
            ns, name = "", ident[0]
        elif len(ident) == 2:
            ns, name = ident
        else:
            raise HttpError(404, f"no such endpoint: {request.path}")
        if status:
            self._method(request.method, "PUT")
            body = request.json()
            if not isinstance(body, dict) or "status" not in body:
                raise HttpError(400, 'request body must be {"status": {...}}')
            try:
                obj = self._store.put_status(kind, ns or None, name, body["status"])
            except NotFound as exc:
                raise HttpError(404, str(exc)) from None
            except InvalidResources as exc:
                raise _invalid(exc) from None
            return Response.json(200, obj)
        self._method(request.method, "GET")
        found = self._store.get(kind, ns or None, name)
        if found is None:
            raise HttpError(404, str(NotFound(kind, ns if namespaced else "", name)))
        return Response.json(200, found)

    # -- streams -----------------------------------------------------------------------------

    def _watch(self, request: Request) -> Streaming:
        raw_kinds = request.query.get("kinds", "")
        kinds = [_kind(k) for k in raw_kinds.split(",") if k.strip()] or None
        rv_text = request.query.get("resourceVersion")
        rv: int | None = None
        if rv_text not in (None, ""):
            if not rv_text.isdigit():
                raise HttpError(400, f"resourceVersion must be an integer, got {rv_text!r}")
            rv = int(rv_text)
        try:
            watch = self._store.watch(kinds, rv)
        except Expired as exc:
            raise HttpError(410, str(exc)) from None
        return Streaming(lambda writer: self._pump_watch(watch, writer))

    async def _pump_watch(self, watch: Watch, writer: StreamWriter) -> None:
        wake = asyncio.Event()
        watch.notify = wake.set
        try:
            while True:
                wake.clear()
                events = watch.take()
                if events:
                    await writer.send(b"".join(_line(e.to_json()) for e in events))
                if watch.closed is not None:
                    raise ConnectionError(watch.closed)
                if not await _wait(wake, self.heartbeat):
                    await writer.send(_line(bookmark(self._store.resource_version).to_json()))
        finally:
            watch.close()

    def _destinations(self, request: Request) -> Streaming:
        target = request.query.get("target", "").strip()
        if not target:
            raise HttpError(400, "missing query parameter: target=<ip:port|name:port>")
        namespace = request.query.get("namespace") or None
        return Streaming(lambda writer: self._pump_destinations(target, namespace, writer))

    async def _pump_destinations(
        self, target: str, namespace: str | None, writer: StreamWriter
    ) -> None:
        wake = asyncio.Event()
        latest: list[Destination | None] = []

        def on_change(dest: Destination | None) -> None:
            latest[:] = [dest]
            wake.set()

        current, unsubscribe = self.destinations.subscribe(target, on_change, namespace)
        try:
            await writer.send(_destination_line(current))
            while True:
                if not await _wait(wake, self.heartbeat):
                    await writer.send(b"{}\n")
                    continue
                wake.clear()
                if latest:
                    dest = latest.pop()
                    await writer.send(_destination_line(dest))
        finally:
            unsubscribe()

    # -- stat --------------------------------------------------------------------------------

    def _stat(self, request: Request) -> Response:
        if self.stats is None:
            raise HttpError(503, "metrics aggregation is not running")
        kind_text = request.query.get("kind", "")
        kind = {"deploy": "deploy", "deployment": "deploy", "deployments": "deploy",
                "svc": "svc", "service": "svc", "services": "svc",
                "pod": "pod", "pods": "pod", "po": "pod"}.get(kind_text.lower())  # fmt: skip
        if kind is None:
            raise HttpError(400, f"kind must be deploy, svc or pod, got {kind_text!r}")
        window = _window(request)
        rows = self.stats.stat(
            kind, request.query.get("name") or None, request.query.get("namespace") or None, window
        )
        return Response.json(200, {"rows": rows, "window": window})

    def _routes(self, request: Request) -> Response:
        if self.stats is None:
            raise HttpError(503, "metrics aggregation is not running")
        service = request.query.get("service", "").strip()
        if not service:
            raise HttpError(400, "missing query parameter: service=<name>")
        namespace = request.query.get("namespace") or DEFAULT_NAMESPACE
        window = _window(request)
        if self.destinations.state.get("Service", namespace, service) is None:
            raise HttpError(404, str(NotFound("Service", namespace, service)))
        configured = [
            route.key for _, route in self.destinations.policies.attached_routes(namespace, service)
        ]
        rows = self.stats.routes(service, namespace, window, configured)
        return Response.json(200, {"rows": rows, "window": window})


def _for_workloads(method: str, parts: list[str]) -> bool:
    """What a workload's proxy (any uid but root's) may call: discovery, its certificate, the
    trust bundle and its inbound policy. The rest (writes, identity administration, reading the
    store) needs root: with the CA's anchors writable by anyone, any local user could mint any
    identity."""
    if parts in (["healthz"], ["ready"], ["live"]):
        return method == "GET"
    if parts[:2] != ["api", "v1"] or len(parts) < 3:
        return False
    group = parts[2]
    if group == "destinations" or group == "inbound":
        return method == "GET"
    if group == "identity" and len(parts) == 4:
        return (method, parts[3]) in (("POST", "certify"), ("GET", "trust"))
    return False


def _window(request: Request) -> float:
    window_text = request.query.get("window", "60")
    try:
        window = float(window_text)
    except ValueError:
        window = math.nan
    if not (math.isfinite(window) and 0 < window <= MAX_WINDOW):
        raise HttpError(
            400,
            f"window must be a number of seconds in (0, {MAX_WINDOW:g}], got {window_text!r}",
        )
    return window


# the last snapshots encoded, by identity: every subscriber of a target gets the same Destination
# object for a change, so a change is encoded once, not once per subscriber (the cache holds the
# object, so its id cannot be reused while it is here)
_ENCODED: dict[int, tuple[Destination, bytes]] = {}
_ENCODED_MAX = 4096


def _destination_line(dest: Destination | None) -> bytes:
    if dest is None:
        return b'{"destination":null}\n'
    found = _ENCODED.get(id(dest))
    if found is not None and found[0] is dest:
        return found[1]
    line = _line({"destination": dest.to_json()})
    if len(_ENCODED) >= _ENCODED_MAX:
        del _ENCODED[next(iter(_ENCODED))]  # the oldest
    _ENCODED[id(dest)] = (dest, line)
    return line


async def _wait(event: asyncio.Event, within: float) -> bool:
    """Wait for ``event`` at most ``within`` seconds; True when it was set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), within)
        return True
    return event.is_set()


def handler(api: Api) -> Callable[[Request], Awaitable[Response | Streaming]]:
    return api.handle
