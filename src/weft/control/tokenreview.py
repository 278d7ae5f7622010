"""Who a proxy's token says it is: the ``TokenReviewer`` seam of the identity service.

A proxy asks for a certificate with its pod's token; the identity service certifies exactly the
identity a review of that token proves (``<service account>.<namespace>.serviceaccount.identity.
<trust domain>``), never what the proxy claims. :class:`TokenReviewer` is the one question it asks;
the answer is a :class:`ReviewedToken` or :class:`~weft.identity.tokens.InvalidToken` (401) or
:class:`ReviewUnavailable` (503: ask again later).

- :class:`KubeTokenReviewer`: a real cluster. Only ``authentication.k8s.io/v1`` TokenReview, with
  the audience :data:`AUDIENCE`: the API server checks the signature, expiry, audience and that the
  bound pod and service account still exist (a projected service-account token, at most 24 h,
  which the kubelet rotates); this reviewer then requires the username
  ``system:serviceaccount:NS:SA``, our audience among the reviewed ones, and a pod binding (the
  pod name and uid in the user's extra fields).
- :class:`LocalTokenReviewer`: the local mesh's own tokens (signed with the control plane's token
  key by the node agent, which issues a new one at least every :data:`ROTATE_AFTER`), valid for
  :data:`MAX_TOKEN_AGE`, for a pod the cluster state still holds with that uid and service
  account.

Not for: certificates (:mod:`weft.control.identity`), issuing tokens (the kubelet, or the node
agent with :mod:`weft.identity.tokens`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from weft.control.state import ClusterState
from weft.identity.tokens import InvalidToken, TokenKey
from weft.resources import pods

AUDIENCE = "identity.weft.io"
MAX_TOKEN_AGE = 24 * 3600.0
ROTATE_AFTER = 12 * 3600.0  # the local issuer's rotation: half the lifetime, as the kubelet does
_SA_PREFIX = "system:serviceaccount:"
_POD_NAME = "authentication.kubernetes.io/pod-name"
_POD_UID = "authentication.kubernetes.io/pod-uid"


@dataclass(frozen=True, slots=True)
class ReviewedToken:
    """What a reviewed token proves: a service account, and the pod it is bound to."""

    namespace: str
    service_account: str
    pod: str
    pod_uid: str | None = None


class ReviewUnavailable(Exception):
    """The token could not be reviewed now (the API server is unreachable): not a bad token."""


class TokenReviewer(Protocol):
    async def review(self, token: str) -> ReviewedToken:
        """Who ``token`` proves to be; :class:`InvalidToken` saying why not, or
        :class:`ReviewUnavailable`."""
        ...


def service_account_of(username: str) -> tuple[str, str]:
    """``(namespace, name)`` of ``system:serviceaccount:NS:SA``; InvalidToken otherwise."""
    if not username.startswith(_SA_PREFIX):
        raise InvalidToken(f"the token is not a service account's (user {username!r})")
    namespace, sep, name = username[len(_SA_PREFIX) :].partition(":")
    if not sep or not namespace or not name or ":" in name:
        raise InvalidToken(f"malformed service account user {username!r}")
    return namespace, name


def _first(extra: Any, key: str) -> str | None:
    values = extra.get(key) if isinstance(extra, dict) else None
    if isinstance(values, list) and values and isinstance(values[0], str) and values[0]:
        return values[0]
    return None


class KubeTokenReviewer:
    """TokenReview on the cluster of ``client`` (a ``lightkube.AsyncClient``)."""

    def __init__(self, client: Any, *, audience: str = AUDIENCE) -> None:
        self.client = client
        self.audience = audience

    def __repr__(self) -> str:
        return f"<KubeTokenReviewer audience={self.audience}>"

    async def review(self, token: str) -> ReviewedToken:
        from lightkube import ApiError
        from lightkube.models.authentication_v1 import TokenReviewSpec
        from lightkube.resources.authentication_v1 import TokenReview

        if not isinstance(token, str) or not token.strip():
            raise InvalidToken("token is empty")
        request = TokenReview(spec=TokenReviewSpec(token=token.strip(), audiences=[self.audience]))
        try:
            result = await self.client.create(request)
        except ApiError as e:
            raise ReviewUnavailable(f"TokenReview failed: {e.status.message}") from None
        except Exception as e:  # the client's connection errors (httpx2's), timeouts
            raise ReviewUnavailable(f"TokenReview failed: {type(e).__name__}: {e}") from None
        status = result.status
        if status is None or not status.authenticated:
            reason = (status.error if status is not None else None) or "not authenticated"
            raise InvalidToken(f"the API server refused the token: {reason}")
        if self.audience not in (status.audiences or []):
            raise InvalidToken(f"the token is not for audience {self.audience}")
        user = status.user
        namespace, account = service_account_of(str(user.username or "") if user else "")
        extra = user.extra if user is not None else None
        pod = _first(extra, _POD_NAME)
        if pod is None:
            raise InvalidToken("the token is not bound to a pod")
        return ReviewedToken(namespace, account, pod, _first(extra, _POD_UID))


class LocalTokenReviewer:
    """The local mesh's tokens (see the module docstring). ``key`` gives the token key (loaded
    when first needed)."""

    def __init__(
        self,
        key: Callable[[], TokenKey],
        state: ClusterState,
        *,
        clock: Callable[[], float] = time.time,
        max_age: float = MAX_TOKEN_AGE,
    ) -> None:
        self._key = key
        self._state = state
        self._clock = clock
        self.max_age = max_age

    def __repr__(self) -> str:
        return f"<LocalTokenReviewer max_age={self.max_age:g}s>"

    async def review(self, token: str) -> ReviewedToken:
        claims = self._key().verify(token)
        age = self._clock() - claims.issued_at
        if age > self.max_age:
            raise InvalidToken(
                f"the token expired: issued {age / 3600:.1f} h ago (valid for "
                f"{self.max_age / 3600:g} h)"
            )
        ref = f"{claims.namespace}/{claims.pod}"
        pod = self._state.get("Pod", claims.namespace, claims.pod)
        if pod is None:
            raise InvalidToken(f"the token's pod {ref} does not exist")
        uid = (pod.get("metadata") or {}).get("uid")
        if uid != claims.uid:
            raise InvalidToken(f"the token is for an earlier pod {ref} (uid {claims.uid})")
        account = pods.service_account(pod)
        if account != claims.service_account:
            raise InvalidToken(
                f"the token names service account {claims.service_account!r}, but pod {ref} "
                f"runs as {account!r}"
            )
        return ReviewedToken(claims.namespace, account, claims.pod, claims.uid)


__all__ = [
    "AUDIENCE",
    "MAX_TOKEN_AGE",
    "ROTATE_AFTER",
    "KubeTokenReviewer",
    "LocalTokenReviewer",
    "ReviewUnavailable",
    "ReviewedToken",
    "TokenReviewer",
    "service_account_of",
]
