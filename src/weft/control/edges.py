"""The ``/api/v1/edges`` API group: which connections between workloads are mutual TLS.

- ``GET /api/v1/edges?kind=deploy|pod[&namespace=ns][&window=60]`` ->
  ``{"rows": [...], "window": seconds}``, one row per (source, destination) with traffic in the
  window: ``src``, ``src_namespace``, ``dst``, ``dst_namespace``, ``secured``, ``client_id``,
  ``server_id``, ``requests``, ``connections``, ``open_connections``, ``unsecured``, ``reasons``
  (see :meth:`weft.control.metrics.Stats.edges`). Without ``namespace``: every namespace.

:class:`EdgesApi` is a handler group: ``Api(handlers={"edges": EdgesApi(stats).handle})``.

Not for: computing the edges (:mod:`weft.control.metrics`) nor printing them (the CLI).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from weft.control.api import MAX_WINDOW
from weft.control.httpserver import HttpError, Request, Response
from weft.identity.names import DEFAULT_TRUST_DOMAIN, check_trust_domain

KINDS = {
    "deploy": "deploy", "deployment": "deploy", "deployments": "deploy",
    "po": "pod", "pod": "pod", "pods": "pod",
}  # fmt: skip
DEFAULT_WINDOW = 60.0


class EdgeSource(Protocol):
    """What the edges API needs from metrics aggregation (:class:`~weft.control.metrics.Stats`)."""

    def edges(
        self, kind: str, namespace: str | None, window: float, *, trust_domain: str = ...
    ) -> list[dict[str, Any]]: ...


class EdgesApi:
    """Serves ``/api/v1/edges`` from ``stats``; client identities are in ``trust_domain``."""

    def __init__(self, stats: EdgeSource, *, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> None:
        self.stats = stats
        self.trust_domain = check_trust_domain(trust_domain)

    def __repr__(self) -> str:
        return f"<EdgesApi trust domain {self.trust_domain}>"

    async def handle(self, request: Request, rest: list[str]) -> Response:
        """``/api/v1/edges/<rest...>`` (see the module docstring)."""
        if rest:
            raise HttpError(404, f"no such endpoint: {request.path}")
        if request.method != "GET":
            raise HttpError(405, f"method {request.method} not allowed here; use GET")
        kind_text = request.query.get("kind", "")
        kind = KINDS.get(kind_text.lower())
        if kind is None:
            raise HttpError(400, f"kind must be deploy or pod, got {kind_text!r}")
        window = parse_window(request.query.get("window"))
        namespace = request.query.get("namespace") or None
        rows = self.stats.edges(kind, namespace, window, trust_domain=self.trust_domain)
        return Response.json(200, {"rows": rows, "window": window})


def parse_window(text: str | None) -> float:
    """The ``window`` query parameter: seconds in (0, MAX_WINDOW]; 400 otherwise."""
    if text is None:
        return DEFAULT_WINDOW
    try:
        window = float(text)
    except ValueError:
        window = math.nan
    if not (math.isfinite(window) and 0 < window <= MAX_WINDOW):
        raise HttpError(
            400, f"window must be a number of seconds in (0, {MAX_WINDOW:g}], got {text!r}"
        )
    return window
