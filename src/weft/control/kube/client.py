"""Talking to a Kubernetes API server through lightkube: connecting, and watching with bookmarks.

lightkube was chosen by measurement against kubernetes_asyncio and kr8s (docs/kubernetes.md,
"The client library"): a fifth of the import time, half the memory, typed models decoded at the
speed of plain JSON, and errors (``410 Gone`` among them) raised instead of hidden. Its public
``watch()`` cannot ask for bookmarks and cannot decode a Pod's; :func:`watch` is one watch
request through its request builder and decoders (the one place that reaches into the client;
the contract tests fail if a lightkube release changes them).

Objects stay lightkube's models (msgspec structs); :func:`key_of` and :func:`version_of` read
them for :class:`weft.core.informer.Cache`.

Not for: informer logic (:mod:`weft.control.kube.informer`), or anything a controller decides.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.config.kubeconfig import KubeConfig

from weft.core.informer import BadObject

# how long the server keeps one watch request open before ending it (the client then watches
# again from the last resource version it saw); Kubernetes' own clients pick 5-10 minutes
WATCH_TIMEOUT_S = 300


def connect(kubeconfig: str | Path | None = None, *, context: str | None = None) -> AsyncClient:
    """A client for the cluster of ``kubeconfig`` (its ``context``, else the current one), or,
    with no file, the in-cluster service account or ``$KUBECONFIG`` / ``~/.kube/config``."""
    if kubeconfig is not None:
        config = KubeConfig.from_file(kubeconfig)
        return AsyncClient(config.get(context_name=context) if context else config)
    return AsyncClient(KubeConfig.from_env())


def key_of(obj: Any) -> str:
    """``namespace/name`` (``name`` when cluster-scoped) of a lightkube model."""
    meta = getattr(obj, "metadata", None)
    name = getattr(meta, "name", None)
    if not isinstance(name, str) or not name:
        raise BadObject(f"{type(obj).__name__} without metadata.name")
    namespace = getattr(meta, "namespace", None)
    return f"{namespace}/{name}" if namespace else name


def version_of(obj: Any) -> str:
    """``metadata.resourceVersion`` of a lightkube model ("" when it has none)."""
    meta = getattr(obj, "metadata", None)
    rv = getattr(meta, "resourceVersion", None)
    return rv if isinstance(rv, str) else ""


@dataclass(frozen=True, slots=True)
class _BookmarkMeta:
    resourceVersion: str  # the API's name: read as the models' are


@dataclass(frozen=True, slots=True)
class Bookmark:
    """A ``BOOKMARK`` event's object: only ``metadata.resourceVersion`` (the API server sends
    the kind's other required fields empty, which its model would refuse)."""

    metadata: _BookmarkMeta


async def watch(
    client: AsyncClient,
    resource: Any,
    *,
    resource_version: str,
    namespace: str | None = None,
    labels: Mapping[str, str] | None = None,
    fields: Mapping[str, str] | None = None,
    timeout_s: int = WATCH_TIMEOUT_S,
) -> AsyncIterator[tuple[str, Any]]:
    """``(type, object)`` events of one watch request for ``resource`` from
    ``resource_version``, bookmarks included (their object a :class:`Bookmark`); the iterator
    ends when the server ends the request (after ``timeout_s``): the caller watches again from
    the last version it saw. An ``ERROR`` event (``410 Gone`` among them) or an error status
    raises ``lightkube.ApiError``; a connection failure ``httpx2.HTTPError``; an object its
    model cannot hold ``ValueError`` (msgspec's).

    Built on lightkube's request builder and decoders rather than its ``watch()``: that one
    cannot ask for bookmarks, and decodes a bookmark into the kind's model, which fails for
    kinds with required fields (a Pod bookmark's ``spec.containers`` is ``null``), so a quiet
    Pod watch never advanced."""
    from lightkube.core import decoders
    from lightkube.core.selector import build_selector

    params: dict[str, Any] = {
        "timeoutSeconds": timeout_s,
        "resourceVersion": resource_version,
        "allowWatchBookmarks": "true",
        "labelSelector": build_selector(dict(labels)) if labels else None,
        "fieldSelector": build_selector(dict(fields), for_fields=True) if fields else None,
    }
    inner: Any = client._client  # lightkube's generic client (partly untyped)
    br = inner.prepare_request("list", res=resource, namespace=namespace, watch=True, params=params)
    request = inner._client.build_request(
        br.method, br.url, params=br.params, timeout=inner._watch_timeout
    )
    response = await inner.send(request, stream=True)
    try:
        if response.status_code >= 400:
            await response.aread()
            inner.raise_for_status(response)
        async for line in response.aiter_lines():
            if not line:
                continue
            event = decoders.decode_watch_event(line)
            if event.type == "ERROR":
                raise ApiError(status=decoders.decode_status(event.object))
            if event.type == "BOOKMARK":
                meta = json.loads(line).get("object", {}).get("metadata", {})
                yield "BOOKMARK", Bookmark(_BookmarkMeta(str(meta.get("resourceVersion", ""))))
                continue
            yield event.type, decoders.decode_object(event.object, br.response_type)
    finally:
        await response.aclose()


__all__ = ["WATCH_TIMEOUT_S", "Bookmark", "connect", "key_of", "version_of", "watch"]
