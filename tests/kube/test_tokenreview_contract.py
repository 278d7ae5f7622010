"""Identity through TokenReview on a real API server: a projected, audience-bound, pod-bound
service-account token is accepted; the wrong audience, an expired token, a token bound to no
pod, and a token whose pod or service account was deleted are refused; the certificate names
exactly the reviewed identity."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.kube.conftest import Kube
from weft.control.httpserver import HttpError
from weft.control.identity import IdentityService
from weft.control.kube.client import connect
from weft.control.state import CachedState
from weft.control.tokenreview import AUDIENCE, KubeTokenReviewer, ReviewedToken
from weft.identity import ca
from weft.identity.names import dns_identity, spiffe_id
from weft.identity.tokens import InvalidToken

pytestmark = pytest.mark.timeout(180)


async def kubectl(kube: Kube, *args: str, input: str | None = None) -> str:
    return await asyncio.to_thread(kube.kubectl, *args, input=input)


async def pod_with_account(kube: Kube, name: str, account: str) -> str:
    """A Pod running as ``account`` (both made here); its uid."""
    ns = kube.namespace
    await kubectl(kube, "create", "serviceaccount", account, "-n", ns)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"serviceAccountName": account, "containers": [{"name": "app", "image": "app"}]},
    }
    await kubectl(kube, "apply", "-f", "-", input=json.dumps(pod))
    return (
        await kubectl(kube, "get", "pod", name, "-n", ns, "-o", "jsonpath={.metadata.uid}")
    ).strip()


async def token(kube: Kube, account: str, *, audience: str = AUDIENCE, pod: str | None = None,
                uid: str | None = None) -> str:  # fmt: skip
    args = ["create", "token", account, "-n", kube.namespace, "--audience", audience,
            "--duration", "1h"]  # fmt: skip
    if pod is not None:
        args += ["--bound-object-kind", "Pod", "--bound-object-name", pod]
        if uid is not None:
            args += ["--bound-object-uid", uid]
    return (await kubectl(kube, *args)).strip()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def expired_token(kube: Kube, account: str, pod: str, uid: str, sa_uid: str) -> str:
    """A token as the API server issues them, signed with its service-account key, that
    expired a minute ago (the API issues none shorter than ten minutes)."""
    key = serialization.load_pem_private_key(
        (kube.rig.workdir / "pki" / "sa.key").read_bytes(), None
    )
    assert isinstance(key, rsa.RSAPrivateKey)
    now = int(time.time())
    ns = kube.namespace
    claims = {
        "aud": [AUDIENCE],
        "exp": now - 60,
        "iat": now - 3600,
        "nbf": now - 3600,
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": f"system:serviceaccount:{ns}:{account}",
        "kubernetes.io": {
            "namespace": ns,
            "serviceaccount": {"name": account, "uid": sa_uid},
            "pod": {"name": pod, "uid": uid},
        },
    }
    header = _b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    signed = f"{header}.{_b64(json.dumps(claims).encode())}"
    signature = key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signed}.{_b64(signature)}"


async def refused(reviewer: KubeTokenReviewer, text: str) -> str:
    with pytest.raises(InvalidToken) as info:
        await reviewer.review(text)
    return str(info.value)


async def refused_soon(reviewer: KubeTokenReviewer, text: str, within: float = 40.0) -> str:
    """Refused once the API server's authentication cache lets go of the earlier success (it
    keeps a review for 10 s)."""
    deadline = time.monotonic() + within
    while True:
        try:
            await reviewer.review(text)
        except InvalidToken as e:
            return str(e)
        if time.monotonic() > deadline:
            raise AssertionError(f"still accepted after {within:g} s")
        await asyncio.sleep(1)


async def test_a_pod_bound_token_for_our_audience_is_reviewed_and_others_refused(
    kube: Kube,
) -> None:
    ns = kube.namespace
    uid = await pod_with_account(kube, "web-1", "web")
    reviewer = KubeTokenReviewer(connect(kube.kubeconfig))
    good = await token(kube, "web", pod="web-1", uid=uid)
    assert await reviewer.review(good) == ReviewedToken(ns, "web", "web-1", uid)
    # another audience (a token meant for some other service)
    assert "refused" in await refused(
        reviewer, await token(kube, "web", audience="vault", pod="web-1")
    )
    # not bound to a pod: authenticated, but no pod to bind the certificate to
    assert "not bound to a pod" in await refused(reviewer, await token(kube, "web"))
    # expired
    sa_uid = (await kubectl(kube, "get", "serviceaccount", "web", "-n", ns, "-o",
                            "jsonpath={.metadata.uid}")).strip()  # fmt: skip
    assert "expired" in await refused(reviewer, expired_token(kube, "web", "web-1", uid, sa_uid))
    assert "refused" in await refused(reviewer, "not-a-token")
    # the pod deleted: its tokens no longer hold
    await kubectl(kube, "delete", "pod", "web-1", "-n", ns, "--grace-period=0", "--force")
    assert "refused" in await refused_soon(reviewer, good)


async def test_a_deleted_service_account_refuses_its_tokens(kube: Kube) -> None:
    uid = await pod_with_account(kube, "api-1", "api")
    reviewer = KubeTokenReviewer(connect(kube.kubeconfig))
    good = await token(kube, "api", pod="api-1", uid=uid)
    await reviewer.review(good)
    await kubectl(kube, "delete", "serviceaccount", "api", "-n", kube.namespace)
    assert "refused" in await refused_soon(reviewer, good)


async def test_the_certificate_names_exactly_the_reviewed_identity(
    kube: Kube, tmp_path: Path
) -> None:
    ns = kube.namespace
    uid = await pod_with_account(kube, "web-1", "web")
    service = IdentityService(
        tmp_path / "identity", CachedState(), reviewer=KubeTokenReviewer(connect(kube.kubeconfig))
    )
    service.load_or_init()
    good = await token(kube, "web", pod="web-1", uid=uid)
    key = ca.new_key()
    got: dict[str, Any] = await service.certify(
        good, ca.make_csr(key, dns_identity(ns, "web"), spiffe_id(ns, "web"))
    )
    assert got["identity"] == dns_identity(ns, "web")
    # a CSR naming another workload's identity is refused, whatever the token
    other = ca.make_csr(ca.new_key(), dns_identity(ns, "admin"), spiffe_id(ns, "admin"))
    with pytest.raises(HttpError) as info:
        await service.certify(good, other)
    assert info.value.status == 403
    with pytest.raises(HttpError) as info:
        await service.certify(await token(kube, "web", audience="vault", pod="web-1"), other)
    assert info.value.status == 401
