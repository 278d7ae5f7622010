"""The proxy injector: the admission webhook that meshes new pods (``admission.k8s.io/v1``).

The API server sends each Pod it is about to create (``POST /inject``, an AdmissionReview); the
injector answers with the JSON patch from that pod to the meshed one, the change ``weft inject``
makes (:func:`weft.install.inject.inject_template`), when the pod or its namespace is annotated
``weft.io/inject: enabled`` (the pod's ``disabled`` opts out). It never refuses a pod: whatever
it cannot or will not mesh (another kind, a hostNetwork pod, an invalid annotation, a namespace
it cannot read) is allowed unchanged, with the reason as an admission warning, and the webhook
configuration's ``failurePolicy: Ignore`` lets pods be created while it is down. A body that is
not an AdmissionReview is a 400 saying what is missing; the HTTP server bounds its size.

:func:`serve` is ``weft injector``: the webhook over TLS (its certificate files are read again
when they change, as the kubelet updates a mounted Secret), ``GET /ready`` once the namespaces are
listed, ``GET /live``; namespaces come from an informer (a pod's admission costs no API call).
The mesh's trust anchors, which every injected proxy verifies the control plane's HTTPS API with,
come from a file (the ConfigMap ``weft-identity-trust-roots`` mounted), read again on change.

Not for: what injection adds (:mod:`weft.install.inject`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import dataclasses
import json
import logging
import os
import signal
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jsonpatch

from weft.control.httpserver import HttpError, HttpServer, Request, Response
from weft.install.inject import INJECT, InjectConfig, inject_template

log = logging.getLogger("weft.injector")

PATH = "/inject"
# a namespace's annotations (None: no such namespace); raises when the API cannot be reached
NamespaceAnnotations = Callable[[str], Awaitable[Mapping[str, str] | None]]


def _review(body: Any) -> tuple[str, Mapping[str, Any]]:
    if not isinstance(body, dict) or body.get("kind") != "AdmissionReview":
        raise HttpError(400, "expected an AdmissionReview (kind AdmissionReview)")
    if body.get("apiVersion") != "admission.k8s.io/v1":
        raise HttpError(400, f"expected admission.k8s.io/v1, got {body.get('apiVersion')!r}")
    request = body.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        raise HttpError(400, "the AdmissionReview has no request.uid")
    return request["uid"], request


class Injector:
    """See the module docstring."""

    def __init__(
        self,
        config: InjectConfig,
        namespaces: NamespaceAnnotations,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.config = config
        self.namespaces = namespaces
        self.ready = ready
        self.injected = 0
        self.skipped = 0

    def __repr__(self) -> str:
        return f"<Injector injected={self.injected} skipped={self.skipped}>"

    async def handle(self, request: Request) -> Response:
        if request.method == "GET" and request.path == "/live":
            return Response.json(200, {"live": True})
        if request.method == "GET" and request.path == "/ready":
            if not self.ready():
                raise HttpError(503, "the namespaces are not listed yet")
            return Response.json(200, {"ready": True})
        if request.path != PATH:
            raise HttpError(404, f"not found: {request.path} (the injector serves {PATH})")
        if request.method != "POST":
            raise HttpError(405, f"{request.method} {PATH}: POST an AdmissionReview")
        uid, review = _review(request.json())
        patch, warnings = await self._decide(review)
        response: dict[str, Any] = {"uid": uid, "allowed": True}
        if patch:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
            self.injected += 1
        else:
            self.skipped += 1
        if warnings:
            response["warnings"] = [w[:256] for w in warnings[:10]]
        body = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "response": response}  # fmt: skip
        return Response.json(200, body)

    async def _decide(self, review: Mapping[str, Any]) -> tuple[list[Any], list[str]]:
        kind = review.get("kind")
        if not isinstance(kind, dict) or kind.get("kind") != "Pod" or kind.get("group"):
            return [], []
        pod = review.get("object")
        if not isinstance(pod, dict):
            return [], ["weft injector: the review has no pod object"]
        raw_meta = pod.get("metadata")
        meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
        namespace = review.get("namespace") or meta.get("namespace")
        if not isinstance(namespace, str):
            return [], ["weft injector: the pod has no namespace"]
        own = str((meta.get("annotations") or {}).get(INJECT, "")).lower()
        if own == "disabled":
            return [], []
        if own != "enabled":
            try:
                annotations = await self.namespaces(namespace)
            except Exception as e:  # the API unreachable: the pod goes ahead unmeshed
                log.warning("namespace %s unreadable: %s; pod not meshed", namespace, e)
                return [], [f"weft injector: namespace {namespace} unreadable ({e}); not meshed"]
            if str((annotations or {}).get(INJECT, "")).lower() != "enabled":
                return [], []
        meshed = copy.deepcopy(pod)
        outcome = inject_template(meshed, self.config, namespace=namespace)
        warnings = [f"weft: {w}" for w in outcome.warnings]
        if not outcome.changed:
            return [], [*warnings, f"weft: not meshed: {outcome.reason}"]
        patch: list[Any] = jsonpatch.make_patch(pod, meshed).patch
        return patch, warnings


class CertReloader:
    """A server TLS context whose certificate and key are loaded again when their files change."""

    def __init__(self, cert: str, key: str) -> None:
        self.cert = cert
        self.key = key
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._stamp: tuple[float, float] | None = None
        self.reload()

    def _mtimes(self) -> tuple[float, float]:
        return os.stat(self.cert).st_mtime, os.stat(self.key).st_mtime

    def reload(self) -> bool:
        """Load the files when they changed since the last load (OSError, ssl.SSLError when
        they cannot be read or do not match: the previous certificate stays)."""
        stamp = self._mtimes()
        if stamp == self._stamp:
            return False
        self.context.load_cert_chain(self.cert, self.key)
        self._stamp = stamp
        return True


@dataclass(frozen=True)
class InjectorSettings:
    """What ``weft injector`` runs with."""

    inject: InjectConfig
    kubeconfig: str | None  # None: in-cluster
    context: str | None
    listen: tuple[str, int]
    tls_cert: str
    tls_key: str
    trust_anchors_file: str | None = None  # required for an https:// control plane
    reload_s: float = 30.0


class AnchorsFile:
    """The mesh's trust anchors for the proxies' ``--control-trust-anchors``, read again when the
    file changes (a mounted ConfigMap is swapped in place during an anchor rotation)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pem = ""
        self._stamp: float | None = None
        self.reload()

    def reload(self) -> bool:
        """Read the file when it changed; OSError or ValueError (no certificate) otherwise,
        and the anchors read before stay."""
        stamp = os.stat(self.path).st_mtime
        if stamp == self._stamp:
            return False
        with open(self.path, encoding="ascii", errors="replace") as f:
            text = f.read()
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise ValueError(f"{self.path} holds no PEM certificate")
        self.pem, self._stamp = text, stamp
        return True


async def serve(settings: InjectorSettings, *, stop: asyncio.Event | None = None) -> None:
    """Run the webhook until ``stop`` is set (or SIGTERM/SIGINT when None)."""
    from weft.control.kube.client import connect
    from weft.control.kube.state import KubeState

    tls = CertReloader(settings.tls_cert, settings.tls_key)  # fails here, before serving
    anchors: AnchorsFile | None = None
    if settings.trust_anchors_file:
        anchors = AnchorsFile(settings.trust_anchors_file)
    elif settings.inject.verifies_control:
        raise ValueError(
            f"the control plane {settings.inject.control} is verified by the proxies: "
            "give --control-trust-anchors-file"
        )
    client = connect(settings.kubeconfig, context=settings.context)
    state = KubeState(client, ("Namespace",))

    async def namespace(name: str) -> Mapping[str, str] | None:
        if not state.informers["Namespace"].synced.is_set():
            raise RuntimeError("the namespaces are not listed yet")
        obj = state.get("Namespace", None, name)
        if obj is None:
            return None
        annotations = obj.get("metadata", {}).get("annotations") or {}
        return {str(k): str(v) for k, v in annotations.items()}

    config = settings.inject
    if anchors is not None:
        config = dataclasses.replace(config, trust_anchors=anchors.pem)
    injector = Injector(config, namespace, ready=state.informers["Namespace"].synced.is_set)
    http = HttpServer(injector.handle)
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    state.start()
    host, port = settings.listen
    bound = await http.listen_tcp(host, port, tls=tls.context)
    log.info("proxy injector on %s:%d", *bound)

    async def reload() -> None:
        while True:
            await asyncio.sleep(settings.reload_s)
            try:
                if tls.reload():
                    log.info("injector certificate reloaded from %s", settings.tls_cert)
            except (OSError, ssl.SSLError) as exc:
                log.warning("injector certificate not reloaded: %s", exc)
            if anchors is None:
                continue
            try:
                if anchors.reload():
                    injector.config = dataclasses.replace(
                        injector.config, trust_anchors=anchors.pem
                    )
                    log.info("trust anchors for the proxies reloaded from %s", anchors.path)
            except (OSError, ValueError) as exc:
                log.warning("trust anchors not reloaded: %s", exc)

    reloader = loop.create_task(reload(), name="injector cert reload")
    try:
        await stop.wait()
    finally:
        reloader.cancel()
        await http.close(5.0)
        await state.stop()
        with contextlib.suppress(Exception):
            await client.close()


__all__ = [
    "PATH",
    "AnchorsFile",
    "CertReloader",
    "Injector",
    "InjectorSettings",
    "NamespaceAnnotations",
    "serve",
]
