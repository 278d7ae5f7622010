"""The embedded Kubernetes API: the part of the Kubernetes REST API that kubectl, client
libraries and Weft's own controllers use, served from the local mesh's store.

Paths as on a cluster: ``/version``, ``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>[/<v>]``
(discovery, :mod:`~weft.control.kubeapi.discovery`); ``/api/v1/<plural>`` and
``/apis/<group>/<version>/<plural>`` (cluster-scoped objects, and every namespace's),
``.../namespaces/<ns>/<plural>[/<name>[/status|/log]]``. Verbs:

- ``GET`` a collection: a ``<Kind>List`` with the store's ``resourceVersion``, narrowed by
  ``labelSelector`` and ``fieldSelector`` (:mod:`~weft.control.kubeapi.selectors`), paged by
  ``limit`` and ``continue``; a ``Table`` when the client asks for one (``kubectl get``);
  ``?watch=1``: a watch (:mod:`~weft.control.kubeapi.watch`);
- ``GET`` an object, or its ``status``; a Pod's ``log`` (its container's log file);
- ``POST`` (create; ``metadata.generateName`` honoured), ``PUT`` (replace, refused with
  ``409 Conflict`` when the body's ``resourceVersion`` is not the object's), ``PATCH`` (merge,
  JSON and, for built-in kinds, strategic merge patches: :mod:`~weft.control.kubeapi.patch`),
  ``DELETE``; ``PUT``/``PATCH`` of ``status`` write the status subresource only.

Failures are ``Status`` bodies (:mod:`~weft.control.kubeapi.status`). A request body over
:data:`MAX_OBJECT_BYTES` is refused before it is read as JSON (413).

Not for: the store's semantics (validation, cluster IPs, generations: :mod:`weft.control.store`),
nor server-side apply, ``exec``, ``attach`` and ``port-forward`` (not served: 415/405 say so).
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from weft.control.httpserver import Request, Response, Streaming
from weft.control.kubeapi import discovery, patch, tables
from weft.control.kubeapi import watch as watches
from weft.control.kubeapi.authn import LocalAuthn
from weft.control.kubeapi.selectors import SelectorError, matcher
from weft.control.kubeapi.status import KubeError, invalid, not_found
from weft.control.store import PROPAGATIONS, AlreadyExists, Conflict, NotFound, Store
from weft.resources.errors import InvalidResources
from weft.resources.registry import KindInfo

MAX_OBJECT_BYTES = 3 * 1024 * 1024  # the API server's request limit for one object
MAX_LIST_LIMIT = 5000
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # what the API server's generateName draws from
LogPath = Callable[[str, str, str], Path]  # (namespace, pod, container) -> its log file


class _Target:
    """What a request names: a kind, a namespace (None: all, or cluster-scoped), maybe a name
    and a subresource."""

    __slots__ = ("group", "info", "name", "namespace", "sub")

    def __init__(
        self, info: KindInfo, group: str, namespace: str | None, name: str | None, sub: str | None
    ) -> None:
        self.info, self.group, self.namespace, self.name, self.sub = (
            info,
            group,
            namespace,
            name,
            sub,
        )

    @property
    def ref(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name}
        if self.namespace:
            meta["namespace"] = self.namespace
        return {"kind": self.info.kind, "metadata": meta}


class KubeApi:
    """The embedded Kubernetes API over ``store`` (see the module docstring); ``logs`` finds a
    pod container's log file (None: logs are not served)."""

    def __init__(
        self,
        store: Store,
        *,
        logs: LogPath | None = None,
        bookmark_s: float = watches.BOOKMARK_S,
        rng: random.Random | None = None,
        authn: LocalAuthn | None = None,
    ) -> None:
        self.store = store
        self.authn = authn
        self.logs = logs
        self.bookmark_s = bookmark_s
        self._rng = rng or random.Random()
        self._core = {i.plural for i in discovery.kinds_of("", "v1")}

    def __repr__(self) -> str:
        return f"<KubeApi {self.store!r}>"

    def owns(self, parts: list[str]) -> bool:
        """Whether a request path (split on ``/``) is this API's rather than Weft's own."""
        if parts[:1] in (["version"], ["apis"], ["openapi"]) or parts == ["api"]:
            return True
        return parts[:2] == ["api", "v1"] and (len(parts) == 2 or parts[2] in self._core)

    async def handle(self, request: Request) -> Response | Streaming:
        parts = [p for p in request.path.split("/") if p]
        try:
            if self.authn is not None and self.authn.target(parts) is not None:
                return await self.authn.handle(request, parts)
            return self._route(request, parts)
        except KubeError as e:
            return e.response()

    # -- routing -------------------------------------------------------------------------------

    def _route(self, request: Request, parts: list[str]) -> Response | Streaming:
        if parts == ["version"]:
            return Response.json(200, discovery.VERSION)
        if parts == ["api"]:
            return Response.json(200, discovery.core_versions())
        if parts[0] == "openapi":
            return self._openapi(parts[1:])
        if parts == ["apis"]:
            return Response.json(200, discovery.group_list())
        if parts[0] == "api":
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) == 2:
            found = discovery.group(parts[1])
            if found is None:
                raise KubeError(
                    404, f"the server could not find the requested resource ({parts[1]})"
                )
            return Response.json(200, found)
        else:
            group, version, rest = parts[1], parts[2], parts[3:]
        if not rest:
            listing = discovery.resource_list(group, version)
            if listing is None:
                raise KubeError(
                    404, f"the server could not find the requested resource ({group}/{version})"
                )
            return Response.json(200, listing)
        target = self._target(group, version, rest)
        return self._serve(request, target)

    def _openapi(self, rest: list[str]) -> Response:
        if rest == ["v3"]:
            return Response.json(200, discovery.openapi_root())
        if rest == ["v2"]:  # what kubectl validates a List's items with: no schemas, no checks
            return Response(200, discovery.openapi_v2(), discovery.OPENAPI_V2_PROTOBUF)
        if rest[:1] == ["v3"] and len(rest) in (3, 4):
            group, version = (
                (rest[2], rest[3]) if rest[1] == "apis" and len(rest) == 4 else ("", rest[2])
            )
            doc = discovery.openapi_gv(group, version)
            if doc is not None:
                return Response.json(200, doc)
        raise KubeError(
            404, f"the server could not find the requested resource (openapi {'/'.join(rest)})"
        )

    def _target(self, group: str, version: str, rest: list[str]) -> _Target:
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
            namespace, rest = rest[1], rest[2:]
        info = discovery.by_plural(group, version, rest[0])
        if info is None or len(rest) > 3:
            gv = f"{group}/{version}" if group else version
            raise KubeError(
                404, f"the server could not find the requested resource ({gv} {'/'.join(rest)})"
            )
        if info.namespaced is False and namespace is not None:
            raise KubeError(404, f"{info.plural} is not namespaced")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        served = sub in (None, "status") or (sub, info.kind) in (
            ("log", "Pod"),
            ("scale", "Deployment"),
        )
        if sub == "exec" and info.kind == "Pod":
            raise KubeError(
                405,
                "pods/exec is served by the node's Kubernetes port, as a kubelet serves it: use "
                "the kubeconfig of `weft kubeconfig`, or `weft exec`",
            )
        if sub in ("attach", "portforward", "proxy") and info.kind == "Pod":
            raise KubeError(
                405,
                f"pods/{sub} is not served by the local mesh's API yet: use `weft exec` "
                "(docs/kubernetes.md)",
            )
        if not served:
            raise KubeError(404, f"{info.plural}/{sub} is not served here")
        return _Target(info, group, namespace, name, sub)

    def _serve(self, request: Request, t: _Target) -> Response | Streaming:
        method = request.method
        if t.name is None:
            if method == "GET":
                return self._collection(request, t)
            if method == "POST":
                return self._create(request, t)
            raise KubeError(405, f"{method} is not supported on {t.info.plural}")
        if t.sub == "log":
            if method != "GET":
                raise KubeError(405, f"{method} is not supported on pods/log")
            return self._log(request, t)
        if t.sub == "scale":
            return self._scale(request, t)
        if method == "GET":
            return Response.json(200, self._current(t))
        if method == "PUT":
            return self._replace(request, t)
        if method == "PATCH":
            return self._patch(request, t)
        if method == "DELETE" and t.sub is None:
            return self._delete(request, t)
        raise KubeError(
            405, f"{method} is not supported on {t.info.plural}{'/' + t.sub if t.sub else ''}"
        )

    # -- reading -------------------------------------------------------------------------------

    def _current(self, t: _Target) -> dict[str, Any]:
        assert t.name is not None
        found = self.store.get(t.info.kind, t.namespace, t.name)
        if found is None:
            raise not_found(t.info.plural, t.name, t.group)
        return found

    def _collection(self, request: Request, t: _Target) -> Response | Streaming:
        q = request.query
        try:
            matches = matcher(t.info.kind, q.get("labelSelector"), q.get("fieldSelector"))
        except SelectorError as e:
            raise KubeError(400, str(e)) from None
        if q.get("watch") in ("1", "true", "True"):
            rv_text = q.get("resourceVersion") or ""
            if rv_text not in ("", "0") and not rv_text.isdigit():
                raise KubeError(400, f"invalid resourceVersion {rv_text!r}")
            timeout = _int(q.get("timeoutSeconds"), "timeoutSeconds") or watches.DEFAULT_TIMEOUT_S
            return watches.start(
                self.store,
                t.info.kind,
                t.info.api_version,
                namespace=t.namespace,
                matches=matches,
                resource_version=int(rv_text) if rv_text not in ("", "0") else None,
                bookmarks=q.get("allowWatchBookmarks") in ("1", "true", "True"),
                timeout_s=timeout,
                bookmark_s=self.bookmark_s,
                present=self._presenter(request, t),
                initial_events=q.get("sendInitialEvents") in ("1", "true", "True"),
            )
        items = [o for o in self.store.list(t.info.kind, t.namespace) if matches(o)]
        rv = str(self.store.resource_version)
        limit = _int(q.get("limit"), "limit")
        token = q.get("continue")
        meta: dict[str, Any] = {"resourceVersion": rv}
        if token:
            after, rv = _read_token(token)
            meta["resourceVersion"] = rv
            items = [o for o in items if _key(o) > after]
        if limit and len(items) > limit:
            rest = len(items) - min(limit, MAX_LIST_LIMIT)
            items = items[: min(limit, MAX_LIST_LIMIT)]
            meta["continue"] = _token(_key(items[-1]), meta["resourceVersion"])
            meta["remainingItemCount"] = rest
        if tables.wants_table(request.headers.get("accept", "")):
            include = q.get("includeObject") or "Metadata"
            return Response.json(
                200, tables.table(t.info.kind, items, meta["resourceVersion"], include=include)
            )
        return Response.json(
            200,
            {
                "kind": f"{t.info.kind}List",
                "apiVersion": t.info.api_version,
                "metadata": meta,
                "items": items,
            },
        )

    def _presenter(
        self, request: Request, t: _Target
    ) -> Callable[[Mapping[str, Any]], Mapping[str, Any]] | None:
        if not tables.wants_table(request.headers.get("accept", "")):
            return None
        include = request.query.get("includeObject") or "Metadata"
        kind = t.info.kind

        def present(obj: Mapping[str, Any]) -> Mapping[str, Any]:
            rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
            return tables.table(kind, [obj], rv, include=include)

        return present

    # -- the scale subresource (Deployments) -----------------------------------------------------

    def _scale(self, request: Request, t: _Target) -> Response:
        current = self._current(t)
        if request.method in ("PUT", "PATCH"):
            body = self._body(request)
            if request.method == "PATCH":
                kind = (request.headers.get("content-type") or "").split(";")[0].strip()
                scale = _scale_of(current)
                body = (
                    patch.json_patch(scale, body)
                    if kind == patch.JSON
                    else patch.merge_patch(scale, body)
                )
            replicas = (body.get("spec") or {}).get("replicas") if isinstance(body, dict) else None
            if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                raise KubeError(422, "spec.replicas must be a non-negative integer")
            doc = {**current, "spec": {**current["spec"], "replicas": replicas}}
            doc["metadata"] = {
                k: v for k, v in current["metadata"].items() if k != "resourceVersion"
            }
            current = self._write(t, doc, "replace")
        return Response.json(200, _scale_of(current))

    def _log(self, request: Request, t: _Target) -> Response:
        assert t.name is not None and t.namespace is not None
        pod = self._current(t)
        containers = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
        container = request.query.get("container") or (
            containers[0] if len(containers) == 1 else None
        )
        if container is None:
            raise KubeError(
                400,
                f"a container name must be specified for pod {t.name}, choose one of: {containers}",
            )
        if container not in containers:
            raise KubeError(400, f"container {container} is not valid for pod {t.name}")
        if self.logs is None:
            raise KubeError(404, "logs are not served by this API")
        path = self.logs(t.namespace, t.name, container)
        try:
            data = path.read_bytes()
        except OSError:
            data = b""
        tail = _int(request.query.get("tailLines"), "tailLines")
        if tail is not None:
            data = b"".join(data.splitlines(keepends=True)[-tail:]) if tail else b""
        return Response(200, data, "text/plain")

    # -- writing -------------------------------------------------------------------------------

    def _body(self, request: Request) -> Any:
        if len(request.body) > MAX_OBJECT_BYTES:
            raise KubeError(
                413,
                f"request entity too large: {len(request.body)} bytes, at most {MAX_OBJECT_BYTES}",
            )
        if not request.body:
            raise KubeError(400, "the request body is empty")
        ctype = (request.headers.get("content-type") or "").split(";")[0].strip()
        if ctype and ctype != "application/json" and "json" not in ctype and "yaml" not in ctype:
            # protobuf or CBOR: clients fall back to JSON on 415, as with any server without them
            raise KubeError(415, f"the body's content type {ctype} is not supported: send JSON")
        try:
            return json.loads(request.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise KubeError(400, f"the request body is not JSON: {e}") from None

    def _object(self, request: Request, t: _Target) -> dict[str, Any]:
        body = self._body(request)
        if not isinstance(body, dict):
            raise KubeError(400, "the request body must be an object")
        if body.get("kind") not in (None, t.info.kind) or body.get("apiVersion") not in (
            None,
            *t.info.api_versions,
        ):
            raise KubeError(
                400,
                f"the body is a {body.get('apiVersion')} {body.get('kind')}, not a "
                f"{t.info.api_version} {t.info.kind}",
            )
        body.setdefault("kind", t.info.kind)
        body.setdefault("apiVersion", t.info.api_version)
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise KubeError(400, "metadata must be an object")
        if t.info.namespaced:
            ns = t.namespace
            if ns is None:
                raise KubeError(
                    400, f"{t.info.plural} are namespaced: POST to /namespaces/<ns>/{t.info.plural}"
                )
            if meta.get("namespace") not in (None, "", ns):
                raise KubeError(
                    400,
                    "the namespace of the provided object does not match the namespace sent on "
                    "the request",
                )
            meta["namespace"] = ns
        if t.name is not None and meta.get("name") not in (None, t.name):
            raise KubeError(400, "the name of the object does not match the name on the URL")
        if t.name is not None:
            meta["name"] = t.name
        return body

    def _write(self, t: _Target, doc: dict[str, Any], mode: str) -> dict[str, Any]:
        name = str(doc["metadata"].get("name") or "")
        try:
            (applied,) = self.store.apply([doc], source=f"{t.info.plural}/{name}", mode=mode)
        except AlreadyExists:
            raise KubeError(
                409,
                f'{t.info.plural} "{name}" already exists',
                reason="AlreadyExists",
                kind=t.info.plural,
                name=name,
                group=t.group,
            ) from None
        except Conflict as e:
            raise KubeError(409, str(e), kind=t.info.plural, name=name, group=t.group) from None
        except NotFound:
            raise not_found(t.info.plural, name, t.group) from None
        except InvalidResources as e:
            raise invalid(t.info.kind, name, e, t.group) from None
        return dict(applied.object)

    def _create(self, request: Request, t: _Target) -> Response:
        doc = self._object(request, t)
        meta = doc["metadata"]
        if not meta.get("name") and isinstance(meta.get("generateName"), str):
            suffix = "".join(self._rng.choice(_NAME_CHARS) for _ in range(5))
            meta["name"] = meta["generateName"] + suffix
        if request.query.get("dryRun"):
            raise KubeError(400, "dryRun is not supported by the local mesh's API")
        return Response.json(201, self._write(t, doc, "create"))

    def _replace(self, request: Request, t: _Target) -> Response:
        doc = self._object(request, t)
        if t.sub == "status":
            return Response.json(
                200,
                self._put_status(
                    t, doc.get("status") or {}, doc["metadata"].get("resourceVersion")
                ),
            )
        return Response.json(200, self._write(t, doc, "replace"))

    def _patch(self, request: Request, t: _Target) -> Response:
        current = self._current(t)
        kind = (request.headers.get("content-type") or "").split(";")[0].strip()
        body = self._body(request)
        if kind == patch.MERGE:
            patched = patch.merge_patch(current, body)
        elif kind == patch.JSON:
            patched = patch.json_patch(current, body)
        elif kind == patch.STRATEGIC:
            if t.info.kind not in discovery.BUILT_IN:
                raise KubeError(
                    415,
                    f"strategic merge patch is not supported for {t.info.kind} (a custom "
                    "resource): use a merge patch",
                )
            patched = patch.strategic_merge_patch(t.info.kind, current, body)
        elif kind == patch.APPLY:
            raise KubeError(
                415,
                "server-side apply is not supported by the local mesh's API; use kubectl "
                "apply without --server-side",
            )
        else:
            raise KubeError(
                415,
                f"unsupported patch type {kind!r}: use {patch.MERGE}, {patch.JSON} or "
                f"{patch.STRATEGIC}",
            )
        if not isinstance(patched, dict):
            raise KubeError(422, "the patched object is not an object")
        meta = patched.get("metadata")
        meta = meta if isinstance(meta, dict) else {}
        if meta.get("name") != t.name or (t.namespace and meta.get("namespace") != t.namespace):
            raise KubeError(
                422, "metadata.name and metadata.namespace cannot be changed by a patch"
            )
        if t.sub == "status":
            return Response.json(200, self._put_status(t, patched.get("status") or {}, None))
        return Response.json(200, self._write(t, patched, "replace"))

    def _put_status(self, t: _Target, status: Any, rv: Any) -> dict[str, Any]:
        assert t.name is not None
        try:
            return self.store.put_status(
                t.info.kind, t.namespace, t.name, status, resource_version=str(rv) if rv else None
            )
        except NotFound:
            raise not_found(t.info.plural, t.name, t.group) from None
        except Conflict as e:
            raise KubeError(409, str(e), kind=t.info.plural, name=t.name, group=t.group) from None
        except InvalidResources as e:
            raise invalid(t.info.kind, t.name, e, t.group) from None

    def _delete(self, request: Request, t: _Target) -> Response:
        assert t.name is not None
        grace, propagation = _delete_options(request)
        if t.info.kind == "Namespace":
            # graceful, as on a cluster: Terminating now, its contents and itself a moment later
            # (weft.runtime.local.namespaces)
            try:
                return Response.json(200, dict(self.store.terminate("Namespace", None, t.name)))
            except NotFound:
                raise not_found(t.info.plural, t.name, t.group) from None
        try:
            (result,) = self.store.delete([t.ref], grace=grace, propagation=propagation)
        except InvalidResources as e:
            raise invalid(t.info.kind, t.name, e, t.group) from None
        if result.action != "deleted":
            raise not_found(t.info.plural, t.name, t.group)
        return Response.json(200, result.object)


def _delete_options(request: Request) -> tuple[int | None, str]:
    """``gracePeriodSeconds`` and ``propagationPolicy`` of a DELETE: the query's, else its
    DeleteOptions body's (``Background`` by default)."""
    options: Any = {}
    if request.body:
        try:
            options = json.loads(request.body)
        except ValueError:
            raise KubeError(400, "the DeleteOptions body is not JSON") from None
        if not isinstance(options, dict):
            raise KubeError(400, "the DeleteOptions body must be an object")
    grace = _int(request.query.get("gracePeriodSeconds"), "gracePeriodSeconds")
    if grace is None:
        value = options.get("gracePeriodSeconds")
        if value is not None and (not isinstance(value, int) or value < 0):
            raise KubeError(400, f"gracePeriodSeconds must be >= 0, got {value!r}")
        grace = value
    policy = request.query.get("propagationPolicy") or options.get("propagationPolicy")
    if options.get("orphanDependents") is True and policy is None:
        policy = "Orphan"
    if policy not in (None, *PROPAGATIONS):
        raise KubeError(
            400, f"propagationPolicy must be one of {', '.join(PROPAGATIONS)}, got {policy!r}"
        )
    return grace, str(policy or "Background")


def _scale_of(deployment: Mapping[str, Any]) -> dict[str, Any]:
    meta = deployment["metadata"]
    selector = (deployment.get("spec") or {}).get("selector") or {}
    labels = selector.get("matchLabels") or {}
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in meta
        },
        "spec": {"replicas": (deployment.get("spec") or {}).get("replicas", 1)},
        "status": {
            "replicas": (deployment.get("status") or {}).get("replicas", 0),
            "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        },
    }


def _key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"


def _token(after: str, rv: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": after, "rv": rv}).encode()).decode()


def _read_token(token: str) -> tuple[str, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return str(data["after"]), str(data["rv"])
    except (ValueError, KeyError, TypeError):
        raise KubeError(400, f"invalid continue token {token[:40]!r}") from None


def _int(text: str | None, name: str) -> int | None:
    if text in (None, ""):
        return None
    assert text is not None
    if not text.isdigit():
        raise KubeError(400, f"{name} must be a non-negative integer, got {text!r}")
    return int(text)


__all__ = ["MAX_OBJECT_BYTES", "KubeApi"]
