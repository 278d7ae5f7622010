"""Talking to a Kubernetes API server through lightkube: connecting, listing and watching.

lightkube was chosen by measurement against kubernetes_asyncio and kr8s (docs/kubernetes.md,
"The client library"): a fifth of the import time, half the memory, and errors (``410 Gone``
among them) raised instead of hidden. Controllers write through its client; reading for the
informers (:func:`list_page`, :func:`watch`) is one request each through its request builder, with
the bodies decoded by msgspec into plain dicts, as the API server sent them: the controllers read
the same shapes from a real cluster and from the local mesh's store, and a dict costs a third of
a typed model to decode. Its public ``watch()`` could not serve anyway: it cannot ask for
bookmarks, and decodes a bookmark into the kind's model, which fails for kinds with required
fields (a Pod bookmark's ``spec.containers`` is ``null``), so a quiet Pod watch never advanced.
These two functions are the one place that reaches into the client; the contract tests
(tests/kube) fail if a lightkube release changes what they use.

Not for: informer logic (:mod:`weft.control.kube.informer`), or anything a controller decides.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import msgspec
from lightkube import ApiError, AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from lightkube.config.models import Cluster, User
from lightkube.core import decoders
from lightkube.core.resource import NamespacedResource
from lightkube.core.selector import build_selector

# how long the server keeps one watch request open before ending it (the client then watches
# again from the last resource version it saw); Kubernetes' own clients pick 5-10 minutes
WATCH_TIMEOUT_S = 300

Obj = dict[str, Any]
_decode = msgspec.json.Decoder(dict[str, Any]).decode


def connect(kubeconfig: str | Path | None = None, *, context: str | None = None) -> AsyncClient:
    """A client for the cluster of ``kubeconfig`` (its ``context``, else the current one), or,
    with no file, the in-cluster service account or ``$KUBECONFIG`` / ``~/.kube/config``."""
    if kubeconfig is not None:
        config = KubeConfig.from_file(kubeconfig)
        return AsyncClient(config.get(context_name=context) if context else config)
    return AsyncClient(KubeConfig.from_env())


def connect_endpoint(endpoint: str) -> AsyncClient:
    """A client for the local mesh's Kubernetes API at a control-plane ``endpoint``
    (``unix:/path/to.sock`` or ``host:port``, as :class:`weft.control.client.ControlClient`
    takes it): the node agent's way in, through the same client as a cluster's."""
    if endpoint.startswith("unix:"):
        path = endpoint[5:].removeprefix("//")
        transport = httpx2.AsyncHTTPTransport(uds=path)
        return AsyncClient(_anonymous("http://localhost"), transport=transport)
    url = endpoint if "://" in endpoint else f"http://{endpoint}"
    return AsyncClient(_anonymous(url))


def _anonymous(url: str) -> KubeConfig:
    # no credentials: the control plane trusts its socket's peers by their uid
    return KubeConfig.from_one(cluster=Cluster(server=url), user=User())


def kind_of(resource: Any) -> tuple[str, str]:
    """``(apiVersion, kind)`` of a lightkube resource class."""
    info = resource._api_info.resource
    api_version = f"{info.group}/{info.version}" if info.group else info.version
    return api_version, info.kind


def _params(
    labels: Mapping[str, str] | None, fields: Mapping[str, str] | None, **more: Any
) -> dict[str, Any]:
    params = {k: v for k, v in more.items() if v is not None}
    if labels:
        params["labelSelector"] = build_selector(dict(labels))
    if fields:
        params["fieldSelector"] = build_selector(dict(fields), for_fields=True)
    return params


async def _send(client: AsyncClient, method: str, resource: Any, namespace: str | None,
                params: dict[str, Any], *, watch: bool) -> Any:  # fmt: skip
    inner: Any = client._client  # lightkube's generic client (partly untyped)
    if namespace is None and issubclass(resource, NamespacedResource):
        namespace = "*"  # every namespace (lightkube reads None as "default")
    br = inner.prepare_request(method, res=resource, namespace=namespace, watch=watch,
                               params=params)  # fmt: skip
    timeout = inner._watch_timeout if watch else None
    request = inner._client.build_request(
        br.method, br.url, params=br.params, **({"timeout": timeout} if watch else {})
    )
    response = await inner.send(request, stream=watch)
    if response.status_code >= 400:
        if watch:
            await response.aread()
            await response.aclose()
        inner.raise_for_status(response)
    return response


async def merge_patch(
    client: AsyncClient, resource: Any, name: str, namespace: str | None, body: Mapping[str, Any]
) -> Obj:
    """A JSON merge patch of one object (``resource.Status`` for its status subresource); the
    object as the server returns it, undecoded: lightkube's models would refuse what they do
    not know (a status without ``containerStatuses[].image``, say). Raises
    ``lightkube.ApiError`` or ``httpx2.HTTPError``."""
    inner: Any = client._client
    headers = {"Content-Type": "application/merge-patch+json"}
    br = inner.prepare_request("patch", res=resource, name=name, namespace=namespace,
                               obj=dict(body), headers=headers)  # fmt: skip
    request = inner._client.build_request(
        br.method, br.url, params=br.params, content=msgspec.json.encode(br.data),
        headers=br.headers,
    )  # fmt: skip
    response = await inner.send(request)
    if response.status_code >= 400:
        inner.raise_for_status(response)
    return _decode(response.content)


async def get_path(client: AsyncClient, path: str, *, timeout: float = 10.0) -> tuple[int, bytes]:
    """``GET path`` on the API server (``/version``, a service proxy path ...): the status
    code and body, whatever the code. Raises ``httpx2.HTTPError`` when there is no answer."""
    inner: Any = client._client
    request = inner._client.build_request("GET", path, timeout=timeout)
    response = await inner.send(request)
    await response.aread()
    return int(response.status_code), bytes(response.content)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list: its items (with ``apiVersion`` and ``kind`` filled in, which a list's
    items leave out), the list's resource version, and the token for the next page ("" at the
    end)."""

    items: list[Obj]
    resource_version: str
    next: str


async def list_page(
    client: AsyncClient,
    resource: Any,
    *,
    namespace: str | None = None,
    labels: Mapping[str, str] | None = None,
    fields: Mapping[str, str] | None = None,
    limit: int = 500,
    continue_: str | None = None,
) -> Page:
    """One page of ``resource`` objects (all namespaces when ``namespace`` is None). An expired
    continue token raises ``lightkube.ApiError`` with code 410 (list again from the start)."""
    params = _params(labels, fields, limit=limit, **{"continue": continue_ or None})
    response = await _send(client, "list", resource, namespace, params, watch=False)
    body = _decode(response.content)
    api_version, kind = kind_of(resource)
    items = body.get("items") or []
    for item in items:
        item.setdefault("apiVersion", api_version)
        item.setdefault("kind", kind)
    meta = body.get("metadata") or {}
    return Page(items, str(meta.get("resourceVersion") or ""), str(meta.get("continue") or ""))


async def watch(
    client: AsyncClient,
    resource: Any,
    *,
    resource_version: str,
    namespace: str | None = None,
    labels: Mapping[str, str] | None = None,
    fields: Mapping[str, str] | None = None,
    timeout_s: int = WATCH_TIMEOUT_S,
) -> AsyncIterator[tuple[str, Obj]]:
    """``(type, object)`` events of one watch request for ``resource`` from
    ``resource_version``, bookmarks included (their object carries only
    ``metadata.resourceVersion`` that matters); the iterator ends when the server ends the
    request (after ``timeout_s``): the caller watches again from the last version it saw. An
    ``ERROR`` event (``410 Gone`` among them) or an error status raises ``lightkube.ApiError``;
    a connection failure ``httpx2.HTTPError``; a line that is not a JSON object ``ValueError``
    (msgspec's)."""
    params = _params(
        labels,
        fields,
        timeoutSeconds=timeout_s,
        resourceVersion=resource_version,
        allowWatchBookmarks="true",
    )
    response = await _send(client, "list", resource, namespace, params, watch=True)
    try:
        async for line in response.aiter_lines():
            if not line:
                continue
            event = _decode(line)
            type_ = event.get("type")
            obj = event.get("object")
            if type_ == "ERROR":
                raise ApiError(status=decoders.decode_status(msgspec.json.encode(obj or {})))
            if not isinstance(type_, str) or not isinstance(obj, dict):
                raise ValueError(f"not a watch event: {line[:200]!r}")
            yield type_, obj
    finally:
        await response.aclose()


__all__ = [
    "WATCH_TIMEOUT_S",
    "Page",
    "connect",
    "connect_endpoint",
    "kind_of",
    "list_page",
    "watch",
]
