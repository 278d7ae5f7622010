"""Talking to a Kubernetes API server through lightkube: connecting, and watching with bookmarks.

lightkube was chosen by measurement against kubernetes_asyncio and kr8s (docs/kubernetes.md,
"The client library"): a fifth of the import time, half the memory, typed models decoded at the
speed of plain JSON, and a watch that raises on ``410 Gone`` instead of hiding it. Its public
``watch()`` cannot ask for bookmarks; :func:`watch` builds the same request with
``allowWatchBookmarks=true`` (the one place that reaches into the client's request builder; the
contract tests fail if a lightkube release changes it).

Objects stay lightkube's models (msgspec structs); :func:`key_of` and :func:`version_of` read
them for :class:`weft.core.informer.Cache`.

Not for: informer logic (:mod:`weft.control.kube.informer`), or anything a controller decides.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from lightkube import AsyncClient
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


def watch(
    client: AsyncClient,
    resource: Any,
    *,
    resource_version: str,
    namespace: str | None = None,
    labels: Mapping[str, str] | None = None,
    fields: Mapping[str, str] | None = None,
    timeout_s: int = WATCH_TIMEOUT_S,
) -> AsyncIterator[tuple[str, Any]]:
    """``(type, object)`` watch events of ``resource`` from ``resource_version``, bookmarks
    included (``BOOKMARK`` events carry only ``metadata.resourceVersion``). When the server ends
    a watch request the client starts the next from the last version it saw; an ``ERROR`` event
    (``410 Gone`` among them) and connection failures raise (``lightkube.ApiError``,
    ``httpx2.HTTPError``)."""
    from lightkube.core.selector import build_selector

    params: dict[str, Any] = {
        "timeoutSeconds": timeout_s,
        "resourceVersion": resource_version,
        "allowWatchBookmarks": "true",
        "labelSelector": build_selector(dict(labels)) if labels else None,
        "fieldSelector": build_selector(dict(fields), for_fields=True) if fields else None,
    }
    inner = client._client  # the public watch() has no allowWatchBookmarks (lightkube 1.0)
    request = inner.prepare_request(
        "list", res=resource, namespace=namespace, watch=True, params=params
    )
    events: AsyncIterator[tuple[str, Any]] = inner.watch(request)
    return events


__all__ = ["WATCH_TIMEOUT_S", "connect", "key_of", "version_of", "watch"]
