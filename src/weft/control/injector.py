"""The proxy injector: the admission webhook that meshes new pods (``admission.k8s.io/v1``).

The API server sends each Pod it is about to create (``POST /inject``, an AdmissionReview); the
injector answers with the JSON patch from that pod to the meshed one, the change ``weft inject``
makes (:func:`weft.install.inject.inject_template`), when the pod or its namespace is annotated
``weft.io/inject: enabled`` (the pod's ``disabled`` opts out). It never refuses a pod: whatever
it cannot or will not mesh (another kind, a hostNetwork pod, an invalid annotation, a namespace
it cannot read) is allowed unchanged, with the reason as an admission warning, and the webhook
configuration's ``failurePolicy: Ignore`` lets pods be created while it is down. A body that is
not an AdmissionReview is a 400 saying what is missing; the HTTP server bounds its size.

Not for: what injection adds (:mod:`weft.install.inject`), nor serving TLS (the listener).
"""

from __future__ import annotations

import base64
import copy
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import jsonpatch

from weft.control.httpserver import HttpError, Request, Response
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

    def __init__(self, config: InjectConfig, namespaces: NamespaceAnnotations) -> None:
        self.config = config
        self.namespaces = namespaces
        self.injected = 0
        self.skipped = 0

    def __repr__(self) -> str:
        return f"<Injector injected={self.injected} skipped={self.skipped}>"

    async def handle(self, request: Request) -> Response:
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


__all__ = ["PATH", "Injector", "NamespaceAnnotations"]
