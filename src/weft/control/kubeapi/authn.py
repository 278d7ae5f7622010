"""The embedded API's TokenRequest and TokenReview: the local mesh's service-account tokens.

On a cluster the kubelet asks the API server for each pod's projected service-account token
(``POST .../serviceaccounts/SA/token``, a TokenRequest bound to the pod) and whoever receives
the token asks the API server who it is (``POST /apis/authentication.k8s.io/v1/tokenreviews``).
The local mesh answers both the same way, so the node agent gets tokens as a kubelet does and
:class:`~weft.control.tokenreview.KubeTokenReviewer` reviews them as on a cluster:

- TokenRequest: ``spec.boundObjectRef`` must name a Pod of that namespace (and its uid, if
  given) that runs as that service account; ``spec.audiences`` may only be
  ``identity.weft.io`` (the one audience the local mesh issues for; the default); the token is
  signed with the control plane's token key and valid for 24 h whatever ``expirationSeconds``
  asks (``status.expirationTimestamp`` says so).
- TokenReview: the token is reviewed by the identity service's own reviewer (signature, age, the
  bound pod still there with that uid and service account); the answer is Kubernetes' shape:
  ``authenticated``, ``user`` (``system:serviceaccount:NS:SA``, its groups, the pod name and uid
  in ``extra``) and ``audiences``, or ``authenticated: false`` with the reason in ``error``. A
  review that cannot be made now is a 503.

Not for: which identity a certificate gets (:mod:`weft.control.identity`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from weft.control.httpserver import Request, Response
from weft.control.kubeapi.status import KubeError
from weft.control.store import Store
from weft.control.tokenreview import (
    AUDIENCE,
    MAX_TOKEN_AGE,
    ReviewUnavailable,
    TokenReviewer,
)
from weft.identity.tokens import InvalidToken, TokenClaims, TokenKey
from weft.resources import pods

GROUP = "authentication.k8s.io"
POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _body(request: Request) -> Mapping[str, Any]:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        raise KubeError(400, "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise KubeError(400, "the request body must be an object")
    spec = body.get("spec")
    if not isinstance(spec, dict):
        raise KubeError(422, "spec: Required value", kind="TokenRequest")
    return spec


class LocalAuthn:
    """See the module docstring. ``key`` gives the control plane's token key."""

    def __init__(
        self,
        store: Store,
        key: Callable[[], TokenKey],
        reviewer: TokenReviewer,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.key = key
        self.reviewer = reviewer
        self.clock = clock

    @staticmethod
    def target(parts: list[str]) -> str | None:
        """``"request"`` or ``"review"`` when the path is one of the two, else None."""
        if parts == ["apis", GROUP, "v1", "tokenreviews"]:
            return "review"
        if (
            len(parts) == 7
            and parts[:3] == ["api", "v1", "namespaces"]
            and parts[4] == "serviceaccounts"
            and parts[6] == "token"
        ):
            return "request"
        return None

    async def handle(self, request: Request, parts: list[str]) -> Response:
        what = self.target(parts)
        if request.method != "POST":
            raise KubeError(405, f"{request.method} is not supported here: POST a {what}")
        if what == "review":
            return await self._review(_body(request))
        return self._request(parts[3], parts[5], _body(request))

    def _request(self, namespace: str, account: str, spec: Mapping[str, Any]) -> Response:
        audiences = spec.get("audiences") or [AUDIENCE]
        if not isinstance(audiences, list) or any(a != AUDIENCE for a in audiences):
            raise KubeError(
                400,
                f"spec.audiences: the local mesh issues tokens for {AUDIENCE} only, "
                f"got {audiences!r}",
            )
        ref = spec.get("boundObjectRef")
        if not isinstance(ref, dict) or ref.get("kind") != "Pod" or not ref.get("name"):
            raise KubeError(
                400, "spec.boundObjectRef: a Pod is required (the local mesh binds every token)"
            )
        pod = self.store.get("Pod", namespace, str(ref["name"]))
        if pod is None:
            raise KubeError(404, f'pods "{ref["name"]}" not found', kind="pods",
                            name=str(ref["name"]))  # fmt: skip
        uid = str(pod["metadata"].get("uid") or "")
        if ref.get("uid") and ref["uid"] != uid:
            raise KubeError(409, f"the bound pod {ref['name']} has uid {uid}, not {ref['uid']}")
        if pods.service_account(pod) != account:
            raise KubeError(
                400,
                f"pod {ref['name']} runs as service account {pods.service_account(pod)!r}, "
                f"not {account!r}",
            )
        now = self.clock()
        claims = TokenClaims(namespace, str(ref["name"]), uid, account, issued_at=now)
        token = self.key().issue(claims)
        body = {
            "kind": "TokenRequest",
            "apiVersion": f"{GROUP}/v1",
            "metadata": {"name": account, "namespace": namespace,
                         "creationTimestamp": _rfc3339(now)},
            "spec": {**spec, "audiences": [AUDIENCE],
                     "expirationSeconds": int(MAX_TOKEN_AGE)},
            "status": {"token": token, "expirationTimestamp": _rfc3339(now + MAX_TOKEN_AGE)},
        }  # fmt: skip
        return Response.json(201, body)

    async def _review(self, spec: Mapping[str, Any]) -> Response:
        token = spec.get("token")
        audiences = spec.get("audiences") or [AUDIENCE]
        status: dict[str, Any]
        if not isinstance(audiences, list) or AUDIENCE not in audiences:
            status = {
                "authenticated": False,
                "error": f"token audiences [{AUDIENCE}] are invalid for the target audiences "
                f"{audiences!r}",
            }
        else:
            try:
                found = await self.reviewer.review(str(token or ""))
            except InvalidToken as e:
                status = {"authenticated": False, "error": str(e)}
            except ReviewUnavailable as e:
                raise KubeError(503, f"the token cannot be reviewed now: {e}") from None
            else:
                ns, account = found.namespace, found.service_account
                extra = {POD_NAME: [found.pod]}
                if found.pod_uid:
                    extra[POD_UID] = [found.pod_uid]
                groups = ["system:serviceaccounts", f"system:serviceaccounts:{ns}",
                          "system:authenticated"]  # fmt: skip
                user = {
                    "username": f"system:serviceaccount:{ns}:{account}",
                    "groups": groups,
                    "extra": extra,
                }
                status = {"authenticated": True, "user": user, "audiences": [AUDIENCE]}
        body = {
            "kind": "TokenReview",
            "apiVersion": f"{GROUP}/v1",
            "metadata": {"creationTimestamp": None},
            "spec": {"token": str(token or ""), "audiences": audiences},
            "status": status,
        }
        return Response.json(201, body)


__all__ = ["LocalAuthn"]
