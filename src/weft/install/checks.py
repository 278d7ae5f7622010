"""``weft check`` against a cluster: is it ready for Weft, and is the installed Weft healthy?

Ordered categories, as ``linkerd check`` has them; each check a line with a hint when it fails:

- **kubernetes-api**: the kubeconfig gives a client; the API answers ``/version``.
- **kubernetes-version**: at least 1.29 (native sidecars; older clusters need
  ``config.weft.io/proxy-native-sidecar: "false"``); at least 1.27 at all.
- **pre-install** (``--pre``): the user may create what ``weft install`` applies (a
  SelfSubjectAccessReview per kind), and ``weft-system`` does not exist yet.
- **weft-existence**: the namespace, the installed configuration, every Weft CRD, each current
  (its schemas are this version's), the control plane's Deployments with all replicas ready.
- **weft-webhook**: the webhook configuration trusts the injector's certificate (its CA bundle
  verifies it, and it names the Service), which is not expiring, and the injector answers
  through the API server's service proxy (so the API server can reach it).
- **weft-identity**: the trust anchors and the issuer are valid (⚠ within 60 days of their end).
- **weft-data-plane**: meshed pods' proxies are ready and run the installed version (⚠ skew);
  pods in namespaces annotated ``weft.io/inject: enabled`` that have no proxy are named, with
  why (they were created while the injector was down or unreachable).

Not for: the local mesh (``weft check`` without ``--kubeconfig``/``--context``), nor fixing.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Awaitable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from lightkube import ApiError, AsyncClient
from lightkube.models.authorization_v1 import ResourceAttributes, SelfSubjectAccessReviewSpec
from lightkube.resources.admissionregistration_v1 import MutatingWebhookConfiguration
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.authorization_v1 import SelfSubjectAccessReview
from lightkube.resources.core_v1 import ConfigMap, Namespace, Pod

from weft.control.kube.client import get_path
from weft.core.durations import human_duration
from weft.identity.ca import load_certs_pem, not_after
from weft.install import installed
from weft.install.controlplane import COMPONENT, CONFIG, CONTROL, INJECTOR, WEBHOOK
from weft.install.crds import crds
from weft.install.inject import INJECT, VERSION, is_injected
from weft.install.values import NAMESPACE
from weft.resources.pods import PROXY_CONTAINER
from weft.runtime.base import Check, CheckWarning

MIN_VERSION = (1, 27)
NATIVE_SIDECARS = (1, 29)
WARN_BEFORE = 60 * 86400.0
INSTALL_HINT = "weft install --crds | kubectl apply -f - && weft install | kubectl apply -f -"
Category = tuple[str, list[Check]]


def _version(info: Mapping[str, Any]) -> tuple[int, int]:
    major = "".join(ch for ch in str(info.get("major", "0")) if ch.isdigit()) or "0"
    minor = "".join(ch for ch in str(info.get("minor", "0")) if ch.isdigit()) or "0"
    return int(major), int(minor)


async def api_checks(client: AsyncClient) -> tuple[list[Category], bool]:
    """kubernetes-api and kubernetes-version; False when the API cannot be reached (the rest
    is not checked then)."""
    try:
        code, body = await get_path(client, "/version")
        if code != 200:
            raise ValueError(f"GET /version: HTTP {code}: {body[:200]!r}")
        info = json.loads(body)
    except Exception as exc:
        hint = "check the kubeconfig, its context and that the API server is up"
        return [
            ("kubernetes-api", [Check("can query the Kubernetes API", False, str(exc), hint)])
        ], False
    have = _version(info)
    api = [Check("can query the Kubernetes API", True, str(info.get("gitVersion", "")))]
    version: list[Check]
    text = f"{have[0]}.{have[1]}"
    if have < MIN_VERSION:
        version = [Check("is running a supported Kubernetes version", False, text,
                         "Weft needs Kubernetes 1.27 or later")]  # fmt: skip
    elif have < NATIVE_SIDECARS:
        version = [CheckWarning(
            "is running a supported Kubernetes version", True, f"{text}: no native sidecars",
            'annotate workloads config.weft.io/proxy-native-sidecar: "false" (before 1.29)',
        )]  # fmt: skip
    else:
        version = [Check("is running a supported Kubernetes version", True, text)]
    return [("kubernetes-api", api), ("kubernetes-version", version)], True


async def _may(client: AsyncClient, verb: str, group: str, resource: str) -> bool:
    review = SelfSubjectAccessReview(
        spec=SelfSubjectAccessReviewSpec(
            resourceAttributes=ResourceAttributes(verb=verb, group=group, resource=resource)
        )
    )
    answer = await client.create(review)
    return bool(answer.status and answer.status.allowed)


async def pre_checks(client: AsyncClient) -> list[Category]:
    checks: list[Check] = []
    for group, resource in (
        ("", "namespaces"),
        ("apiextensions.k8s.io", "customresourcedefinitions"),
        ("rbac.authorization.k8s.io", "clusterroles"),
        ("rbac.authorization.k8s.io", "clusterrolebindings"),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"),
        ("apps", "deployments"),
        ("", "secrets"),
    ):
        name = f"can create {resource}"
        try:
            allowed = await _may(client, "create", group, resource)
        except ApiError as exc:
            checks.append(Check(name, False, str(exc.status.message), "see kubectl auth can-i"))
            continue
        hint = "" if allowed else "install as a cluster administrator"
        checks.append(Check(name, allowed, "", hint))
    try:
        await client.get(Namespace, NAMESPACE)
        checks.append(Check(f"namespace {NAMESPACE} does not exist", False, "",
                            "Weft is installed already: weft check, or weft upgrade"))  # fmt: skip
    except ApiError as exc:
        ok = exc.status.code == 404
        checks.append(Check(f"namespace {NAMESPACE} does not exist", ok,
                            "" if ok else str(exc.status.message)))  # fmt: skip
    return [("pre-install", checks)]


def _schemas(crd: Mapping[str, Any]) -> dict[str, Any]:
    return {
        v.get("name"): (v.get("schema") or {}).get("openAPIV3Schema")
        for v in (crd.get("spec") or {}).get("versions") or []
    }


async def existence_checks(client: AsyncClient) -> tuple[list[Category], dict[str, Any] | None]:
    """weft-existence; the installed ConfigMap's data (None when not installed)."""
    checks: list[Check] = []
    try:
        await client.get(Namespace, NAMESPACE)
        checks.append(Check(f"namespace {NAMESPACE} exists", True))
    except ApiError as exc:
        checks.append(Check(f"namespace {NAMESPACE} exists", False, str(exc.status.message),
                            INSTALL_HINT))  # fmt: skip
        return [("weft-existence", checks)], None
    config: dict[str, Any] | None = None
    try:
        cm = await client.get(ConfigMap, CONFIG, namespace=NAMESPACE)
        config = dict(cm.data or {})
        checks.append(Check("installed configuration", True, f"version {config.get('version')}"))
    except ApiError as exc:
        checks.append(Check("installed configuration", False, str(exc.status.message),
                            INSTALL_HINT))  # fmt: skip
    missing, stale = [], []
    for want in crds():
        name = want["metadata"]["name"]
        try:
            have = await client.get(CustomResourceDefinition, name)
        except ApiError:
            missing.append(name)
            continue
        if _schemas(have.to_dict()) != _schemas(want):
            stale.append(name)
    crd_hint = "weft install --crds | kubectl apply -f -"
    checks.append(Check("Weft's CRDs are installed", not missing, ", ".join(missing),
                        crd_hint if missing else ""))  # fmt: skip
    if not missing:
        checks.append(Check("Weft's CRDs are current", not stale,
                            f"outdated: {', '.join(stale)}" if stale else "",
                            crd_hint if stale else ""))  # fmt: skip
    for name, component in ((CONTROL, "control"), (INJECTOR, "injector")):
        what = f"deployment {name} is ready"
        try:
            deploy = await client.get(Deployment, name, namespace=NAMESPACE)
        except ApiError as exc:
            checks.append(Check(what, False, str(exc.status.message), INSTALL_HINT))
            continue
        want_n = (deploy.spec.replicas if deploy.spec and deploy.spec.replicas is not None
                  else 1)  # fmt: skip
        ready = (deploy.status.readyReplicas or 0) if deploy.status else 0
        ok = ready >= want_n
        selector = f"{COMPONENT}={component}"
        hint = "" if ok else f"kubectl -n {NAMESPACE} describe pods -l {selector}"
        checks.append(Check(what, ok, f"{ready}/{want_n} ready", hint))
    return [("weft-existence", checks)], config


def _cert_check(name: str, pem: bytes, now: float, hint: str, index: int = 0) -> Check:
    try:
        cert = load_certs_pem(pem, name)[index]
    except ValueError as exc:
        return Check(f"{name} is valid", False, str(exc), hint)
    left = not_after(cert) - now
    if left <= 0:
        return Check(f"{name} is valid", False, "expired", hint)
    detail = f"{human_duration(left)} left"
    if left < WARN_BEFORE:
        return CheckWarning(f"{name} is valid", True, f"expires in {human_duration(left)}", hint)
    return Check(f"{name} is valid", True, detail)


def _verifies(ca_pem: bytes, cert_pem: bytes) -> bool:
    try:
        ca = load_certs_pem(ca_pem, "CA")[0]
        cert = load_certs_pem(cert_pem, "certificate")[0]
        cert.verify_directly_issued_by(ca)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


async def webhook_checks(
    client: AsyncClient, certs: installed.Installed | None, now: float
) -> list[Category]:
    checks: list[Check] = []
    hint = "weft upgrade | kubectl apply -f - (renews nothing: give --injector-*-file)"
    try:
        hook = await client.get(MutatingWebhookConfiguration, WEBHOOK)
    except ApiError as exc:
        return [("weft-webhook", [Check(f"webhook {WEBHOOK} exists", False,
                                        str(exc.status.message), INSTALL_HINT)])]  # fmt: skip
    checks.append(Check(f"webhook {WEBHOOK} exists", True))
    bundle = b""
    for wh in hook.webhooks or []:
        if wh.clientConfig and wh.clientConfig.caBundle:
            bundle = base64.b64decode(wh.clientConfig.caBundle)
    if certs is not None:
        trusted = bool(bundle) and _verifies(bundle, certs.certs.injector_cert)
        checks.append(Check("the webhook trusts the injector's certificate", trusted, "",
                            "" if trusted else hint))  # fmt: skip
        checks.append(_cert_check("the injector's certificate", certs.certs.injector_cert,
                                   now, hint))  # fmt: skip
    path = f"/api/v1/namespaces/{NAMESPACE}/services/https:{INJECTOR}:443/proxy/ready"
    try:
        code, body = await get_path(client, path, timeout=5.0)
        ok = code == 200
        detail = "" if ok else f"HTTP {code}: {_message(body)}"
    except Exception as exc:
        ok, detail = False, str(exc)
    checks.append(Check("the injector answers through the API server", ok, detail,
                        "" if ok else "pods are created unmeshed meanwhile (failurePolicy "
                        f"Ignore): kubectl -n {NAMESPACE} get pods"))  # fmt: skip
    return [("weft-webhook", checks)]


def _message(body: bytes) -> str:
    """A Kubernetes Status's message, or the body's start."""
    try:
        status = json.loads(body)
        if isinstance(status, dict) and isinstance(status.get("message"), str):
            return str(status["message"])
    except ValueError:
        pass
    return body[:200].decode(errors="replace").strip()


def identity_checks(certs: installed.Installed, now: float) -> list[Category]:
    hint = "rotate the issuer: docs/kubernetes.md, Certificates"
    checks = []
    anchors = certs.certs.trust_anchors
    for i in range(len(load_certs_pem(anchors, "trust anchors"))):
        checks.append(_cert_check(f"trust anchor {i + 1}", anchors, now, hint, i))
    checks.append(_cert_check("issuer", certs.certs.issuer_cert, now, hint))
    return [("weft-identity", checks)]


def _ready(pod: Mapping[str, Any], container: str) -> bool:
    status = pod.get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses"):
        for cs in status.get(key) or []:
            if cs.get("name") == container:
                return bool(cs.get("ready"))
    return False


async def data_plane_checks(client: AsyncClient, version: str) -> list[Category]:
    namespaces = {
        ns.metadata.name: (ns.metadata.annotations or {}).get(INJECT, "")
        async for ns in client.list(Namespace)
        if ns.metadata and ns.metadata.name
    }
    meshed, not_ready, skew, unmeshed = 0, [], [], []
    async for pod_obj in client.list(Pod, namespace="*"):
        pod = pod_obj.to_dict()
        meta = pod.get("metadata") or {}
        ref = f"{meta.get('namespace')}/{meta.get('name')}"
        spec = pod.get("spec") or {}
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed") or meta.get("deletionTimestamp"):
            continue
        if is_injected(spec):
            meshed += 1
            if not _ready(pod, PROXY_CONTAINER):
                not_ready.append(ref)
            have = (meta.get("annotations") or {}).get(VERSION, "")
            if version and have != version:
                skew.append(f"{ref} ({have or '?'})")
            continue
        own = (meta.get("annotations") or {}).get(INJECT, "")
        wanted = own == "enabled" or (
            own != "disabled" and namespaces.get(str(meta.get("namespace")), "") == "enabled"
        )
        if wanted and meta.get("namespace") != NAMESPACE and not spec.get("hostNetwork"):
            unmeshed.append(ref)
    checks: list[Check] = [
        Check("data-plane proxies are ready", not not_ready,
              f"{meshed - len(not_ready)}/{meshed} ready" + (
                  f"; not ready: {', '.join(sorted(not_ready)[:10])}" if not_ready else ""),
              "kubectl describe pod NAME (the weft-proxy container)" if not_ready else ""),
    ]  # fmt: skip
    if skew:
        checks.append(CheckWarning(
            "data-plane proxies run the installed version", True,
            f"not {version}: {', '.join(sorted(skew)[:10])}",
            "kubectl rollout restart the workloads to take the new proxy",
        ))  # fmt: skip
    else:
        checks.append(Check("data-plane proxies run the installed version", True, version))
    checks.append(Check(
        "pods meant to be meshed have a proxy", not unmeshed,
        ", ".join(sorted(unmeshed)[:10]),
        "created while the injector was down or unreachable (failurePolicy Ignore): check "
        "weft-webhook above, then kubectl rollout restart them" if unmeshed else "",
    ))  # fmt: skip
    return [("weft-data-plane", checks)]


async def _guarded(name: str, checks: Awaitable[list[Category]]) -> list[Category]:
    """A category's checks, or one failed check saying why they could not run (the API refused
    a read, say): ``weft check`` reports, it never crashes."""
    try:
        return await checks
    except ApiError as exc:
        detail = f"{exc.status.code} {exc.status.reason}: {exc.status.message}"
    except Exception as exc:  # a failure of the API or the connection, whatever its type
        detail = f"{type(exc).__name__}: {exc}"
    hint = "the kubeconfig's user needs read access to Weft's objects (kubectl auth can-i)"
    return [(name, [Check(f"{name} checks could run", False, detail, hint)])]


async def run_checks(client: AsyncClient, *, pre: bool) -> list[Category]:
    """Every category, in order (see the module docstring)."""
    out, reachable = await api_checks(client)
    if not reachable:
        return out
    if pre:
        return out + await _guarded("pre-install", pre_checks(client))
    config: dict[str, Any] | None = None

    async def existence() -> list[Category]:
        nonlocal config
        categories, config = await existence_checks(client)
        return categories

    out += await _guarded("weft-existence", existence())
    if config is None:
        return out
    now = time.time()
    current: installed.Installed | None = None
    try:
        current = await installed.read(client)
    except (installed.NotInstalled, ApiError, ValueError) as exc:
        out.append(("weft-identity", [Check("the installation's certificates can be read",
                                            False, str(exc), INSTALL_HINT)]))  # fmt: skip
    except Exception as exc:  # the connection failed
        out.append(("weft-identity", [Check("the installation's certificates can be read",
                                            False, f"{type(exc).__name__}: {exc}")]))  # fmt: skip
    out += await _guarded("weft-webhook", webhook_checks(client, current, now))
    if current is not None:
        out += identity_checks(current, now)
    version = str(config.get("version", ""))
    out += await _guarded("weft-data-plane", data_plane_checks(client, version))
    return out


__all__ = ["Category", "run_checks"]
