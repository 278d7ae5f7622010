"""The node agent's writes to the Kubernetes API: pod status, the proxy's admin address, and the
final delete, each retried while the API is away.

- :meth:`PodApi.push_status` keeps the latest status of each pod and :meth:`PodApi.run` sends
  it as a merge patch of the status subresource (with ``hostIP`` and ``podIPs``, and the
  fields it lacks removed), in order, one pod at a time; a 5xx, 429 or a connection failure is
  retried with jittered backoff, a pod whose object is gone (404) is dropped, and nothing ends
  the loop silently;
- :meth:`PodApi.bind` records ``spec.nodeName`` and ``weft.io/proxy-admin`` on the object;
- :meth:`PodApi.request_token` gets a pod's service-account token (a TokenRequest bound to
  the Pod, as the kubelet gets a projected token);
- :meth:`PodApi.delete` deletes the object for good (``gracePeriodSeconds=0``), once its pod
  has stopped.

Not for: deciding what to write (:mod:`weft.runtime.local.agent`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.models.authentication_v1 import BoundObjectReference, TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod as KubePod
from lightkube.resources.core_v1 import ServiceAccountToken

from weft.control.kube.client import merge_patch
from weft.control.tokenreview import AUDIENCE
from weft.core.backoff import ExponentialBackoff
from weft.resources.meta import ANNOTATION_PROXY_ADMIN

log = logging.getLogger("weft.node")

Key = tuple[str, str]  # (namespace, name)


def status_patch(status: Mapping[str, Any], host_ip: str) -> dict[str, Any]:
    """The status subresource's merge patch that makes it ``status`` (fields it lacks
    removed), on the node at ``host_ip``."""
    out: dict[str, Any] = {"reason": None, "message": None, **status, "hostIP": host_ip}
    if out.get("podIP"):
        out["podIPs"] = [{"ip": out["podIP"]}]
    return out


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, ApiError):
        code = exc.status.code or 0
        return code >= 500 or code == 429
    return isinstance(exc, httpx2.HTTPError | OSError)


class PodApi:
    """See the module docstring. Set :attr:`closing` to end the retries."""

    def __init__(self, client: AsyncClient, host_ip: str) -> None:
        self.client = client
        self.host_ip = host_ip
        self.closing = False
        self._pending: dict[Key, dict[str, Any]] = {}
        self._wake = asyncio.Event()
        self._backoff = ExponentialBackoff(base=0.1, maximum=2.0, jitter=0.2)

    def push_status(self, key: Key, status: dict[str, Any]) -> None:
        self._pending[key] = status
        self._wake.set()

    def forget(self, key: Key) -> None:
        self._pending.pop(key, None)

    async def run(self) -> None:
        attempt = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                key, status = next(iter(self._pending.items()))
                body = {"status": status_patch(status, self.host_ip)}
                try:
                    await merge_patch(self.client, KubePod.Status, key[1], key[0], body)
                except Exception as exc:  # never ends the loop: logged, retried or dropped
                    if _retryable(exc):
                        log.debug("status of pod %s/%s waits: %s", *key, exc)
                        await asyncio.sleep(self._backoff.delay(attempt))
                        attempt += 1
                        continue
                    if not (isinstance(exc, ApiError) and exc.status.code == 404):
                        log.warning("status of pod %s/%s not written: %s", *key, exc)
                attempt = 0
                if self._pending.get(key) is status:
                    del self._pending[key]

    async def bind(self, key: Key, node: str, admin: str | None) -> None:
        """Record that ``node`` runs the pod (``spec.nodeName``: the local mesh schedules
        every pod on its one node) and, for a meshed pod, its proxy's admin address (the
        metrics scraper's way to it)."""
        patch: dict[str, Any] = {"spec": {"nodeName": node}}
        if admin is not None:
            patch["metadata"] = {"annotations": {ANNOTATION_PROXY_ADMIN: admin}}
        await self._retry(key, lambda: merge_patch(self.client, KubePod, key[1], key[0], patch))

    async def request_token(self, key: Key, uid: str, service_account: str) -> str:
        """A token for the pod's service account bound to the Pod object with ``uid`` (a
        TokenRequest, audience ``identity.weft.io``), retried while the API is away."""
        spec = TokenRequestSpec(
            audiences=[AUDIENCE], boundObjectRef=BoundObjectReference(kind="Pod", name=key[1],
                                                                       uid=uid, apiVersion="v1"),
        )  # fmt: skip
        meta = ObjectMeta(name=service_account, namespace=key[0])
        request = ServiceAccountToken(metadata=meta, spec=spec)
        issued: list[str] = []

        async def ask() -> None:
            result = await self.client.create(request, service_account, namespace=key[0])
            if result.status is None or not result.status.token:
                raise ValueError("the TokenRequest came back without a token")
            issued.append(str(result.status.token))

        await self._retry(key, ask, refusals=True)
        return issued[0]

    async def delete(self, key: Key) -> None:
        """Delete the object for good (its pod has stopped)."""
        await self._retry(
            key, lambda: self.client.delete(KubePod, key[1], namespace=key[0], grace_period=0)
        )

    async def _retry(
        self, key: Key, call: Callable[[], Awaitable[Any]], *, refusals: bool = False
    ) -> None:
        """``call`` until the API answers it (a 404 ends it too: the object is gone); with
        ``refusals``, a refusal is raised rather than logged."""
        backoff = ExponentialBackoff(base=0.1, maximum=2.0, jitter=0.2)
        attempt = 0
        while not self.closing:
            try:
                await call()
                return
            except Exception as exc:
                if not _retryable(exc):
                    if refusals:
                        raise
                    if not (isinstance(exc, ApiError) and exc.status.code == 404):
                        log.warning("pod %s/%s: the API refused: %s", *key, exc)
                    return
                log.debug("pod %s/%s: the API is away: %s", *key, exc)
            await asyncio.sleep(backoff.delay(attempt))
            attempt += 1


__all__ = ["PodApi", "status_patch"]
