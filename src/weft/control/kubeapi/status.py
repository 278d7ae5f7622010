"""``metav1.Status``: how the Kubernetes API says no, and the exception that carries it.

Every failure of the embedded API is answered as the API server answers it: HTTP code, a
``Status`` body with ``reason`` (``NotFound``, ``AlreadyExists``, ``Conflict``, ``Invalid``,
``BadRequest``, ``MethodNotAllowed``, ``UnsupportedMediaType``, ``RequestEntityTooLarge``,
``Expired``, ``Gone``, ...), ``message`` and ``details`` (the object's ``name``, ``group``,
``kind``, and for validation errors the ``causes``: each a field path and what is wrong with it,
as ``kubectl`` prints them). Clients (kubectl, client-go, lightkube) read these fields.

Not for: the error of any other API (:class:`weft.control.httpserver.HttpError`).
"""

from __future__ import annotations

from typing import Any

from weft.control.httpserver import Response
from weft.resources.errors import InvalidResources

REASONS = {
    400: "BadRequest",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Gone",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


class KubeError(Exception):
    """Answer with a ``Status``: ``code``, ``reason`` (default: the code's), and ``details``."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        kind: str | None = None,
        name: str | None = None,
        group: str | None = None,
        causes: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details: dict[str, Any] = {}
        if name is not None:
            self.details["name"] = name
        if group:
            self.details["group"] = group
        if kind is not None:
            self.details["kind"] = kind
        if causes:
            self.details["causes"] = causes

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            out["details"] = self.details
        return out

    def response(self) -> Response:
        return Response.json(self.code, self.body())


def not_found(plural: str, name: str, group: str = "") -> KubeError:
    what = f"{plural}.{group}" if group else plural
    return KubeError(404, f'{what} "{name}" not found', kind=plural, name=name, group=group)


def invalid(kind: str, name: str, exc: InvalidResources, group: str = "") -> KubeError:
    causes = [
        {"reason": "FieldValueInvalid", "message": e.message, "field": e.path or "<root>"}
        for e in exc.errors
    ]
    listed = "; ".join(f"{c['field']}: {c['message']}" for c in causes)
    return KubeError(
        422,
        f'{kind} "{name}" is invalid: {listed}',
        kind=kind,
        name=name,
        group=group,
        causes=causes,
    )


def success(kind: str, name: str, group: str = "") -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": kind}
    if group:
        details["group"] = group
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    }


__all__ = ["REASONS", "KubeError", "invalid", "not_found", "success"]
