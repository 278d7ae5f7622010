"""The control plane's objects, as ``weft install`` prints them (after ``--crds``).

In ``weft-system`` (a namespace never injected): two Deployments, each with its service account,
least-privilege RBAC, a Service, a PodDisruptionBudget and pod anti-affinity (required with
``ha``, preferred otherwise), probes, resources, a non-root uid and a read-only root file system:

- ``weft-control`` (``weft control --kubeconfig in-cluster --leader-elect``): destinations,
  policy, identity, route status. It reads Pods, Services, Namespaces, EndpointSlices, routes and
  Weft's policies; creates TokenReviews; patches route statuses (only the replica holding the
  ``weft-control`` Lease writes them). The issuer comes from the Secret ``weft-identity-issuer``
  and the anchors from the ConfigMap ``weft-identity-trust-roots``, mounted as files.
- ``weft-injector`` (``weft injector``): the admission webhook, serving TLS from the Secret
  ``weft-injector-tls``; it reads Namespaces. The ``MutatingWebhookConfiguration``
  ``weft-proxy-injector`` (printed last, so the injector exists when it is first called) sends it
  Pod creations in every namespace but ``weft-system`` and ``kube-system`` (and those labelled
  ``config.weft.io/admission-webhooks: disabled``), with ``failurePolicy: Ignore``: pods are
  created, unmeshed, while the injector is away.

The ConfigMap ``weft-config`` records the version and the values given (``weft upgrade`` reads
it). Each pod template carries a checksum of its configuration, so changed certificates or values
roll the pods. Objects and keys come in a fixed order: the same values and certificates print the
same bytes.

Not for: what a meshed pod gets (:mod:`weft.install.inject`), nor the CRDs.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from weft import __version__
from weft.install.certs import INJECTOR_SERVICE, Certs
from weft.install.inject import INJECT, InjectConfig
from weft.install.values import NAMESPACE, Values, dump

CONTROL = "weft-control"
INJECTOR = INJECTOR_SERVICE
WEBHOOK = "weft-proxy-injector"
CONFIG = "weft-config"
ISSUER_SECRET = "weft-identity-issuer"
TRUST_ROOTS = "weft-identity-trust-roots"
INJECTOR_SECRET = "weft-injector-tls"
COMPONENT = "weft.io/control-plane-component"
CONTROL_PLANE_NS = "weft.io/control-plane-ns"
ADMISSION_OPT_OUT = "config.weft.io/admission-webhooks"
API_PORT = 8086
WEBHOOK_PORT = 8443
CONTROL_UID = 2103
RUN_DIR = "/var/run/weft"


def inject_config(values: Values) -> InjectConfig:
    """What the injector gives every meshed pod, from the installed values."""
    return InjectConfig(
        proxy_image=values.image("proxy"),
        init_image=values.image("proxy-init"),
        control=f"https://{CONTROL}.{NAMESPACE}.svc.cluster.local:{API_PORT}",
        control_namespace=NAMESPACE,
        trust_domain=values.trust_domain,
        created_by=f"weft/injector {values.image_tag}",
        version=values.image_tag,
        log_level=values.proxy_log_level,
        image_pull_policy=values.image_pull_policy,
    )


def _labels(values: Values, component: str | None = None) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/part-of": "weft",
        "app.kubernetes.io/version": values.image_tag,
        CONTROL_PLANE_NS: NAMESPACE,
    }
    if component:
        labels["app.kubernetes.io/name"] = f"weft-{component}"
        labels[COMPONENT] = component
    return labels


def _meta(name: str, values: Values, component: str | None = None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if extra.pop("namespaced", True):
        meta["namespace"] = NAMESPACE
    meta["labels"] = _labels(values, component)
    meta.update(extra)
    return meta


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _rule(groups: list[str], resources: list[str], verbs: list[str], **extra: Any) -> Any:
    return {"apiGroups": groups, "resources": resources, **extra, "verbs": verbs}


READ = ["get", "list", "watch"]
POLICY_RESOURCES = [
    "servers",
    "authorizationpolicies",
    "httplocalratelimitpolicies",
    "meshtlsauthentications",
    "networkauthentications",
]


def rbac(values: Values) -> list[dict[str, Any]]:
    """Service accounts, roles and bindings: each component may do what it does, no more."""
    out: list[dict[str, Any]] = []
    rules = {
        CONTROL: [
            _rule([""], ["pods", "services", "namespaces"], READ),
            _rule(["discovery.k8s.io"], ["endpointslices"], READ),
            _rule(["apps"], ["deployments"], READ),
            _rule(["gateway.networking.k8s.io"], ["httproutes", "grpcroutes"], READ),
            _rule(
                ["gateway.networking.k8s.io"],
                ["httproutes/status", "grpcroutes/status"],
                ["patch", "update"],
            ),
            _rule(["policy.weft.io"], POLICY_RESOURCES, READ),
            _rule(["authentication.k8s.io"], ["tokenreviews"], ["create"]),
        ],
        INJECTOR: [_rule([""], ["namespaces"], READ)],
    }
    for name, component in ((CONTROL, "control"), (INJECTOR, "injector")):
        out.append({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": _meta(name, values, component)})  # fmt: skip
        out.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                    "metadata": _meta(name, values, component, namespaced=False),
                    "rules": rules[name]})  # fmt: skip
        out.append({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": _meta(name, values, component, namespaced=False),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}],
        })  # fmt: skip
    lease_rules = [
        _rule(["coordination.k8s.io"], ["leases"], ["create"]),
        _rule(["coordination.k8s.io"], ["leases"], ["get", "update"], resourceNames=[CONTROL]),
    ]
    leader = f"{CONTROL}-leader-election"
    out.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": _meta(leader, values, "control"), "rules": lease_rules})  # fmt: skip
    out.append({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(leader, values, "control"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": leader},
        "subjects": [{"kind": "ServiceAccount", "name": CONTROL, "namespace": NAMESPACE}],
    })  # fmt: skip
    return out


def config_objects(values: Values, certs: Certs) -> list[dict[str, Any]]:
    """The installed configuration, the identity material and the injector's TLS."""
    tls = "kubernetes.io/tls"
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(CONFIG, values),
         "data": {"version": values.image_tag, "values.yaml": dump(values)}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(TRUST_ROOTS, values),
         "data": {"ca-bundle.crt": certs.trust_anchors.decode()}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(ISSUER_SECRET, values),
         "type": tls, "data": {"ca.crt": _b64(certs.trust_anchors),
                               "tls.crt": _b64(certs.issuer_cert),
                               "tls.key": _b64(certs.issuer_key)}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(INJECTOR_SECRET, values),
         "type": tls, "data": {"ca.crt": _b64(certs.injector_ca),
                               "tls.crt": _b64(certs.injector_cert),
                               "tls.key": _b64(certs.injector_key)}},
    ]  # fmt: skip


def _checksum(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


def _probe(path: str, port: str, scheme: str, **timing: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port, "scheme": scheme}, **timing}


def _affinity(values: Values, component: str) -> dict[str, Any]:
    term = {
        "labelSelector": {"matchLabels": {COMPONENT: component}},
        "topologyKey": "kubernetes.io/hostname",
    }
    if values.ha:
        return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}
    return {"podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": term}
        ]
    }}  # fmt: skip


def _env(*pairs: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"name": n, "valueFrom": {"fieldRef": {"fieldPath": p}}} for n, p in pairs]


def _deployment(
    values: Values,
    component: str,
    replicas: int,
    container: dict[str, Any],
    volumes: list[dict[str, Any]],
    checksum: str,
) -> dict[str, Any]:
    name = f"weft-{component}"
    selector = {COMPONENT: component}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, values, component),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
            "template": {
                "metadata": {
                    "labels": _labels(values, component),
                    "annotations": {INJECT: "disabled", "weft.io/config-checksum": checksum},
                },
                "spec": {
                    "serviceAccountName": name,
                    "automountServiceAccountToken": True,
                    "enableServiceLinks": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": CONTROL_UID,
                                        "runAsGroup": CONTROL_UID, "fsGroup": CONTROL_UID,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "affinity": _affinity(values, component),
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }  # fmt: skip


_CONTAINER_SECURITY = {
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}


def control(values: Values, certs: Certs) -> dict[str, Any]:
    identity = f"{RUN_DIR}/identity"
    container = {
        "name": "control",
        "image": values.image("control"),
        "imagePullPolicy": values.image_pull_policy,
        "command": ["weft"],
        "args": [
            "control",
            "--kubeconfig", "in-cluster",
            "--leader-elect",
            "--state-dir", f"{RUN_DIR}/state",
            "--http-listen", f"0.0.0.0:{API_PORT}",
            "--http-tls",
            "--trust-domain", values.trust_domain,
            "--trust-anchors", f"{identity}/trust-roots/ca-bundle.crt",
            "--issuer-cert", f"{identity}/issuer/tls.crt",
            "--issuer-key", f"{identity}/issuer/tls.key",
            "--leaf-lifetime", values.leaf_lifetime,
            "--default-inbound-policy", values.default_inbound_policy,
            "--cluster-networks", ",".join(values.networks),
            "--log-level", values.control_log_level,
            "--log-format", "json",
        ],
        "env": _env(("WEFT_POD_NAME", "metadata.name"),
                    ("WEFT_POD_NAMESPACE", "metadata.namespace"),
                    ("WEFT_POD_SERVICE_ACCOUNT", "spec.serviceAccountName")),
        "ports": [{"name": "api", "containerPort": API_PORT}],
        "startupProbe": _probe("/ready", "api", "HTTPS", periodSeconds=2, failureThreshold=60),
        "readinessProbe": _probe("/ready", "api", "HTTPS", periodSeconds=5, failureThreshold=3),
        "livenessProbe": _probe("/live", "api", "HTTPS", periodSeconds=10, failureThreshold=3),
        "resources": {
            "requests": {"cpu": values.controller_cpu_request,
                         "memory": values.controller_memory_request},
            "limits": {"memory": values.controller_memory_limit},
        },
        "securityContext": _CONTAINER_SECURITY,
        "volumeMounts": [
            {"name": "state", "mountPath": f"{RUN_DIR}/state"},
            {"name": "issuer", "mountPath": f"{identity}/issuer", "readOnly": True},
            {"name": "trust-roots", "mountPath": f"{identity}/trust-roots", "readOnly": True},
        ],
    }  # fmt: skip
    volumes = [
        {"name": "state", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
        {"name": "issuer", "secret": {"secretName": ISSUER_SECRET, "defaultMode": 0o400}},
        {"name": "trust-roots", "configMap": {"name": TRUST_ROOTS}},
    ]
    checksum = _checksum(dump(values), certs.trust_anchors, certs.issuer_cert, certs.issuer_key)
    return _deployment(values, "control", values.controller_replicas, container, volumes, checksum)


def injector(values: Values, certs: Certs) -> dict[str, Any]:
    cfg = inject_config(values)
    tls_dir = f"{RUN_DIR}/tls"
    container = {
        "name": "injector",
        "image": values.image("control"),
        "imagePullPolicy": values.image_pull_policy,
        "command": ["weft"],
        "args": [
            "injector",
            "--kubeconfig", "in-cluster",
            "--listen", f"0.0.0.0:{WEBHOOK_PORT}",
            "--tls-cert", f"{tls_dir}/tls.crt",
            "--tls-key", f"{tls_dir}/tls.key",
            "--control-trust-anchors-file", f"{RUN_DIR}/trust-roots/ca-bundle.crt",
            "--proxy-image", cfg.proxy_image,
            "--init-image", cfg.init_image,
            "--image-pull-policy", cfg.image_pull_policy,
            "--control", cfg.control,
            "--trust-domain", cfg.trust_domain,
            "--proxy-version", cfg.version,
            "--proxy-log-level", cfg.log_level,
            "--log-level", values.control_log_level,
            "--log-format", "json",
        ],
        "ports": [{"name": "webhook", "containerPort": WEBHOOK_PORT}],
        "readinessProbe": _probe("/ready", "webhook", "HTTPS", periodSeconds=5, failureThreshold=3),
        "livenessProbe": _probe("/live", "webhook", "HTTPS", periodSeconds=10, failureThreshold=3),
        "resources": {"requests": {"cpu": "50m", "memory": "48Mi"}, "limits": {"memory": "192Mi"}},
        "securityContext": _CONTAINER_SECURITY,
        "volumeMounts": [
            {"name": "tls", "mountPath": tls_dir, "readOnly": True},
            {"name": "trust-roots", "mountPath": f"{RUN_DIR}/trust-roots", "readOnly": True},
        ],
    }  # fmt: skip
    volumes = [
        {"name": "tls", "secret": {"secretName": INJECTOR_SECRET, "defaultMode": 0o400}},
        {"name": "trust-roots", "configMap": {"name": TRUST_ROOTS}},
    ]
    checksum = _checksum(dump(values), certs.injector_cert, certs.injector_key)
    return _deployment(values, "injector", values.injector_replicas, container, volumes, checksum)


def services_and_budgets(values: Values) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for component, port, target in (("control", API_PORT, "api"), ("injector", 443, "webhook")):
        name = f"weft-{component}"
        out.append({
            "apiVersion": "v1", "kind": "Service",
            "metadata": _meta(name, values, component),
            "spec": {"type": "ClusterIP", "selector": {COMPONENT: component},
                     "ports": [{"name": target, "port": port, "targetPort": target,
                                "protocol": "TCP"}]},
        })  # fmt: skip
    for component in ("control", "injector"):
        out.append({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": _meta(f"weft-{component}", values, component),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {COMPONENT: component}}},
        })  # fmt: skip
    return out


def webhook(values: Values, certs: Certs) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": _meta(WEBHOOK, values, "injector", namespaced=False),
        "webhooks": [{
            "name": "inject.weft.io",
            "clientConfig": {
                "service": {"name": INJECTOR, "namespace": NAMESPACE, "path": "/inject",
                            "port": 443},
                "caBundle": _b64(certs.injector_ca),
            },
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                 "values": [NAMESPACE, "kube-system"]},
                {"key": ADMISSION_OPT_OUT, "operator": "NotIn", "values": ["disabled"]},
            ]},
            "objectSelector": {"matchExpressions": [
                {"key": COMPONENT, "operator": "DoesNotExist"},
            ]},
            "failurePolicy": "Ignore",
            "matchPolicy": "Equivalent",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "reinvocationPolicy": "IfNeeded",
            "timeoutSeconds": values.webhook_timeout_seconds,
        }],
    }  # fmt: skip


def objects(values: Values, certs: Certs) -> list[dict[str, Any]]:
    """Everything ``weft install`` prints, in the order to apply it."""
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": NAMESPACE,
            "labels": {**_labels(values), ADMISSION_OPT_OUT: "disabled"},
            "annotations": {INJECT: "disabled"},
        },
    }
    return [
        namespace,
        *rbac(values),
        *config_objects(values, certs),
        *services_and_budgets(values),
        control(values, certs),
        injector(values, certs),
        webhook(values, certs),
    ]


def header(values: Values, what: str) -> str:
    return f"Weft {__version__}: {what}\nimages {values.image('proxy')} (and control, proxy-init)"


__all__ = [
    "CONFIG",
    "CONTROL",
    "INJECTOR",
    "INJECTOR_SECRET",
    "ISSUER_SECRET",
    "NAMESPACE",
    "TRUST_ROOTS",
    "WEBHOOK",
    "inject_config",
    "objects",
]
