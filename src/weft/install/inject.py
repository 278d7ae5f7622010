"""Sidecar injection: what meshing a pod template adds to it, and what unmeshing removes.

One definition for ``weft inject``/``weft uninject`` (manifests, offline) and the admission
webhook (which answers with the JSON patch from the template before to the template after).
For a template it meshes, :func:`inject_template` adds:

- ``weft-init``, first of the init containers: ``weft proxy-init`` with the pod's skip ports,
  which installs the iptables rules the local runtime installs (one generator,
  :mod:`weft.core.proxyinit`), as root with NET_ADMIN and NET_RAW only, on a read-only root
  file system (an ``emptyDir`` on ``/run`` for iptables' lock);
- ``weft-proxy``, a native sidecar by default (an init container with ``restartPolicy:
  Always``, after ``weft-init``: ready before the app starts, and Jobs complete), or a classic
  first container with ``config.weft.io/proxy-native-sidecar: "false"`` (clusters before 1.29).
  It runs as uid 2102 (the rules let that uid's traffic out), non-root, on a read-only root file
  system, with no capabilities; its pod's name, namespace, service account and addresses from
  the downward API; startup, readiness and liveness probes on the admin port (named ``admin``:
  the control plane finds its metrics there); resources and log level from annotations;
- the projected service-account token it proves its identity with (audience
  ``identity.weft.io``, 24 h, rotated by the kubelet);
- annotations ``weft.io/proxy-version`` and ``weft.io/created-by``, label
  ``weft.io/control-plane-ns``.

Left as they are, with the reason: ``hostNetwork`` pods, pods already injected (injection is
idempotent), pods annotated ``weft.io/inject: disabled``, and the control plane's own. An
invalid annotation value is a warning and its default is used; nothing here raises on a
malformed template (what cannot be read is left alone, with a warning).

Not for: deciding which namespaces are injected (the webhook), nor reading YAML (the CLI).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from weft import __version__
from weft.core.proxyinit import (
    ANNOTATION_SKIP_INBOUND,
    ANNOTATION_SKIP_OUTBOUND,
    DEFAULT_SKIP_PORTS,
    PROXY_ADMIN_PORT,
    PROXY_INBOUND_PORT,
    PROXY_OUTBOUND_PORT,
    PROXY_UID,
    parse_ports,
)
from weft.identity.names import dns_identity
from weft.resources.pods import ADMIN_PORT_NAME, PROXY_CONTAINER

INJECT = "weft.io/inject"
NATIVE_SIDECAR = "config.weft.io/proxy-native-sidecar"
LOG_LEVEL = "config.weft.io/proxy-log-level"
VERSION = "weft.io/proxy-version"
CREATED_BY = "weft.io/created-by"
CONTROL_PLANE_NS = "weft.io/control-plane-ns"
RESOURCES = {
    "config.weft.io/proxy-cpu-request": ("requests", "cpu"),
    "config.weft.io/proxy-cpu-limit": ("limits", "cpu"),
    "config.weft.io/proxy-memory-request": ("requests", "memory"),
    "config.weft.io/proxy-memory-limit": ("limits", "memory"),
}
DEFAULT_RESOURCES = {"requests": {"cpu": "20m", "memory": "40Mi"}, "limits": {"memory": "250Mi"}}
LOG_LEVELS = ("trace", "debug", "info", "warning", "error")
INIT_CONTAINER = "weft-init"
TOKEN_VOLUME = "weft-identity-token"
RUN_VOLUME = "weft-init-run"
TOKEN_DIR = "/var/run/secrets/weft.io/identity"
AUDIENCE = "identity.weft.io"  # the identity service's (weft.control.tokenreview.AUDIENCE)
TOKEN_SECONDS = 86400
CONTROL_SERVICE_ACCOUNT = "weft-control"
# the anchors a proxy verifies the control plane with (as Linkerd's
# LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS): weft proxy --control-trust-anchors
CONTROL_ANCHORS_ENV = "WEFT_PROXY_CONTROL_TRUST_ANCHORS"
# what each kind's pod template is under
TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")


@dataclass(frozen=True, slots=True)
class InjectConfig:
    """What every injected proxy is given: images, where the control plane is, its identity."""

    proxy_image: str = f"weft/proxy:{__version__}"
    init_image: str = f"weft/proxy-init:{__version__}"
    control: str = "https://weft-control.weft-system.svc.cluster.local:8086"
    control_namespace: str = "weft-system"
    trust_domain: str = "cluster.local"
    # the mesh's trust anchors (PEM): an https control plane is verified with them, as the
    # identity of its service account (weft-control in control_namespace)
    trust_anchors: str = ""
    created_by: str = f"weft/cli {__version__}"
    version: str = __version__
    log_level: str = "info"  # when the pod's annotation sets none
    image_pull_policy: str = "IfNotPresent"

    @property
    def control_identity(self) -> str:
        """The identity the control plane's API presents (its service account's)."""
        return dns_identity(self.control_namespace, CONTROL_SERVICE_ACCOUNT, self.trust_domain)

    @property
    def verifies_control(self) -> bool:
        return self.control.startswith("https://")


@dataclass(slots=True)
class Outcome:
    """What happened to one object: ``changed`` (injected or uninjected), else ``reason``; the
    ``warnings`` about its annotations."""

    changed: bool
    reason: str = ""
    warnings: list[str] = field(default_factory=list)


def _map(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def is_injected(spec: Mapping[str, Any]) -> bool:
    containers = [*_list(spec.get("initContainers")), *_list(spec.get("containers"))]
    return any(_map(c).get("name") == PROXY_CONTAINER for c in containers)


def _skip_ports(annotations: Mapping[str, Any], key: str, warnings: list[str]) -> str:
    value = annotations.get(key)
    if value is None:
        return DEFAULT_SKIP_PORTS
    try:
        parse_ports(str(value), key)
    except ValueError as exc:
        warnings.append(f"{exc}; using {DEFAULT_SKIP_PORTS}")
        return DEFAULT_SKIP_PORTS
    return str(value).replace(" ", "")  # as the local runtime: the annotation replaces them


def _resources(annotations: Mapping[str, Any], warnings: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(DEFAULT_RESOURCES)
    for key, (section, name) in RESOURCES.items():
        value = annotations.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not _QUANTITY.match(value):
            warnings.append(f"{key}: {value!r} is not a quantity (e.g. 100m, 64Mi); ignored")
            continue
        out.setdefault(section, {})[name] = value
    return out


def _probe(path: str, **more: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": PROXY_ADMIN_PORT}, **more}


def proxy_container(
    config: InjectConfig, annotations: Mapping[str, Any], grace: Any, warnings: list[str]
) -> dict[str, Any]:
    level = annotations.get(LOG_LEVEL, config.log_level)
    if level not in LOG_LEVELS:
        warnings.append(
            f"{LOG_LEVEL}: {level!r} is not one of {', '.join(LOG_LEVELS)}; {config.log_level}"
        )
        level = config.log_level
    shutdown = grace if isinstance(grace, int) and not isinstance(grace, bool) else 30
    args = [
        "proxy",
        "--outbound", f"127.0.0.1:{PROXY_OUTBOUND_PORT}",
        "--inbound", f"0.0.0.0:{PROXY_INBOUND_PORT}",
        "--admin", f"0.0.0.0:{PROXY_ADMIN_PORT}",
        "--control", config.control,
        *(["--control-identity", config.control_identity] if config.verifies_control else []),
        "--identity-token-file", f"{TOKEN_DIR}/token",
        "--trust-domain", config.trust_domain,
        "--label", "pod=$(WEFT_POD_NAME)",
        "--label", "namespace=$(WEFT_POD_NAMESPACE)",
        "--label", "serviceaccount=$(WEFT_POD_SERVICE_ACCOUNT)",
        "--shutdown-grace", str(max(1, shutdown)),
        "--log-level", str(level),
    ]  # fmt: skip

    def field_env(name: str, path: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}

    return {
        "name": PROXY_CONTAINER,
        "image": config.proxy_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["weft"],
        "args": args,
        "env": [
            field_env("WEFT_POD_NAME", "metadata.name"),
            field_env("WEFT_POD_NAMESPACE", "metadata.namespace"),
            field_env("WEFT_POD_SERVICE_ACCOUNT", "spec.serviceAccountName"),
            field_env("WEFT_POD_IPS", "status.podIPs"),
            *(
                [{"name": CONTROL_ANCHORS_ENV, "value": config.trust_anchors}]
                if config.verifies_control
                else []
            ),
        ],
        "ports": [
            {"name": "weft-inbound", "containerPort": PROXY_INBOUND_PORT},
            {"name": ADMIN_PORT_NAME, "containerPort": PROXY_ADMIN_PORT},
        ],
        "startupProbe": _probe("/ready", periodSeconds=1, failureThreshold=120),
        "readinessProbe": _probe("/ready", periodSeconds=5, failureThreshold=3),
        "livenessProbe": _probe("/live", periodSeconds=10, failureThreshold=3),
        "resources": _resources(annotations, warnings),
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True}],
    }


def init_container(
    config: InjectConfig, annotations: Mapping[str, Any], warnings: list[str]
) -> dict[str, Any]:
    return {
        "name": INIT_CONTAINER,
        "image": config.init_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["weft"],
        "args": [
            "proxy-init",
            "--inbound-skip-ports",
            _skip_ports(annotations, ANNOTATION_SKIP_INBOUND, warnings),
            "--outbound-skip-ports",
            _skip_ports(annotations, ANNOTATION_SKIP_OUTBOUND, warnings),
        ],
        "resources": {"requests": {"cpu": "10m", "memory": "20Mi"}, "limits": {"memory": "50Mi"}},
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": RUN_VOLUME, "mountPath": "/run"}],
    }


def inject_template(
    template: dict[str, Any],
    config: InjectConfig,
    *,
    namespace: str | None = None,
) -> Outcome:
    """Mesh the pod template ``template`` (``metadata`` and ``spec``) in place."""
    meta = template.setdefault("metadata", {})
    spec = template.get("spec")
    if not isinstance(meta, dict) or not isinstance(spec, dict):
        return Outcome(False, "the pod template has no spec to inject")
    annotations = _map(meta.get("annotations"))
    if str(annotations.get(INJECT, "")).lower() == "disabled":
        return Outcome(False, f"annotated {INJECT}: disabled")
    if spec.get("hostNetwork") is True:
        return Outcome(False, "hostNetwork pods are not meshed: their traffic is the node's")
    if is_injected(spec):
        return Outcome(False, "already injected")
    if namespace is not None and namespace == config.control_namespace:
        return Outcome(False, "the control plane's own pods are not meshed")
    if config.verifies_control and "-----BEGIN CERTIFICATE-----" not in config.trust_anchors:
        return Outcome(False, "no trust anchors to verify the control plane with")
    warnings: list[str] = []
    native = str(annotations.get(NATIVE_SIDECAR, "true")).lower()
    if native not in ("true", "false"):
        warnings.append(f"{NATIVE_SIDECAR}: {native!r} is not true or false; true")
        native = "true"
    proxy = proxy_container(config, annotations, spec.get("terminationGracePeriodSeconds"),
                            warnings)  # fmt: skip
    init = [init_container(config, annotations, warnings)]
    if native == "true":
        init.append({**proxy, "restartPolicy": "Always"})
        spec["initContainers"] = [*init, *_list(spec.get("initContainers"))]
    else:
        spec["initContainers"] = [*init, *_list(spec.get("initContainers"))]
        spec["containers"] = [proxy, *_list(spec.get("containers"))]
    spec["volumes"] = [
        *_list(spec.get("volumes")),
        {
            "name": TOKEN_VOLUME,
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": AUDIENCE,
                            "expirationSeconds": TOKEN_SECONDS,
                            "path": "token",
                        }
                    }
                ]
            },
        },
        {"name": RUN_VOLUME, "emptyDir": {}},
    ]
    meta["annotations"] = {**annotations, VERSION: config.version, CREATED_BY: config.created_by}
    meta["labels"] = {**_map(meta.get("labels")), CONTROL_PLANE_NS: config.control_namespace}
    return Outcome(True, warnings=warnings)


def uninject_template(template: dict[str, Any]) -> Outcome:
    """Remove what :func:`inject_template` added, in place."""
    meta, spec = _map(template.get("metadata")), template.get("spec")
    if not isinstance(spec, dict) or not is_injected(spec):
        return Outcome(False, "not injected")
    ours = (INIT_CONTAINER, PROXY_CONTAINER)
    for key in ("initContainers", "containers"):
        kept = [c for c in _list(spec.get(key)) if _map(c).get("name") not in ours]
        if kept or key == "containers":
            spec[key] = kept
        else:
            spec.pop(key, None)
    volumes = [v for v in _list(spec.get("volumes")) if _map(v).get("name") not in
               (TOKEN_VOLUME, RUN_VOLUME)]  # fmt: skip
    if volumes:
        spec["volumes"] = volumes
    else:
        spec.pop("volumes", None)
    for key, drop in (("annotations", (VERSION, CREATED_BY)), ("labels", (CONTROL_PLANE_NS,))):
        kept_map = {k: v for k, v in _map(meta.get(key)).items() if k not in drop}
        if kept_map:
            meta[key] = kept_map
        else:
            meta.pop(key, None)
    return Outcome(True)


def templates_of(doc: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The pod template of ``doc`` (a Pod is its own), or None and why."""
    kind = doc.get("kind")
    if kind == "Pod":
        return doc, ""
    path = TEMPLATE_PATHS.get(str(kind))
    if path is None:
        return None, f"kind {kind} has no pod template"
    node: Any = doc
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return None, f"{'.'.join(path)} is missing"
    return node, ""


def transform(doc: dict[str, Any], config: InjectConfig, *, uninject: bool = False) -> Outcome:
    """Inject (or uninject) one object in place; a List's items each."""
    if doc.get("kind") == "List" or (
        str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list)
    ):
        outcomes = [transform(i, config, uninject=uninject) for i in _list(doc.get("items"))
                    if isinstance(i, dict)]  # fmt: skip
        warnings = [w for o in outcomes for w in o.warnings]
        return Outcome(any(o.changed for o in outcomes), "nothing to change", warnings)
    template, why = templates_of(doc)
    if template is None:
        return Outcome(False, why)
    if uninject:
        return uninject_template(template)
    namespace = _map(doc.get("metadata")).get("namespace")
    return inject_template(template, config, namespace=namespace if isinstance(namespace, str)
                           else None)  # fmt: skip


__all__ = [
    "CREATED_BY",
    "INIT_CONTAINER",
    "INJECT",
    "NATIVE_SIDECAR",
    "TEMPLATE_PATHS",
    "VERSION",
    "InjectConfig",
    "Outcome",
    "inject_template",
    "is_injected",
    "templates_of",
    "transform",
    "uninject_template",
]
