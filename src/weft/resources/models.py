"""Typed models of the Kubernetes-shaped resources Weft stores: Namespace, Service, Deployment, Pod.

(Metadata is :mod:`weft.resources.meta`'s; containers, pod specs, templates and pod status are
:mod:`weft.resources.podspec`'s.)

(HTTPRoute lives in :mod:`weft.resources.httproute`, GRPCRoute in
:mod:`weft.resources.grpcroute`, the inbound policy kinds — Server,
AuthorizationPolicy, MeshTLSAuthentication, NetworkAuthentication, HTTPLocalRateLimitPolicy — in
:mod:`weft.resources.policy`; each joins the registry (:mod:`weft.resources.registry`) from there,
and the package imports every one of them.)

Each kind is a frozen dataclass built from a document (a plain mapping as YAML or JSON gives it) by
``from_dict``, which validates every field and raises
:class:`~weft.resources.errors.InvalidResources` naming each offending field path and value; and
written back by ``to_dict`` in the Kubernetes shape with defaults filled in (the form the control
plane stores and serves). Fields Kubernetes defines but Weft does not interpret (probes, resources,
volumes, ...) are kept verbatim so that the same files work on Kubernetes; fields nobody defines are
rejected, which catches typos. A Service's ``retry.weft.io/*``, ``timeout.weft.io/*`` and
``failure-accrual.weft.io/*`` annotations are validated here too
(:mod:`weft.resources.annotations`), as is ``config.weft.io/default-inbound-policy`` on a
Namespace or a Deployment's pod template (Pods, written by the runtime, are not refused for it:
the control plane falls back to the mesh default and warns).

These four kinds register themselves in :mod:`weft.resources.registry`, whose
:func:`~weft.resources.registry.parse_resource` dispatches on ``kind``.

Not for: loading files (:mod:`weft.resources.loader`), cross-document checks such as "the namespace
exists" or cluster IP allocation (the control plane's store does those).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from weft.resources.annotations import parse_policy_annotations
from weft.resources.meta import (
    ANNOTATION_DEPLOYMENT,
    ANNOTATION_PROXY_ADMIN,
    ObjectMeta,
    _check_inbound_annotation,
    _empty,
    _frozen,
    _parse_meta,
)
from weft.resources.podspec import (
    PodSpec,
    PodStatus,
    PodTemplate,
    _parse_pod_spec,
    _parse_pod_status,
    _parse_template,
)
from weft.resources.registry import (
    KindInfo,
    _finish,
    _generic_status,
    _top,
    register_kind,
)
from weft.resources.validate import Checker, index, join, show

# --------------------------------------------------------------------------------------------
# kinds


@dataclass(frozen=True, slots=True)
class Namespace:
    API_VERSION: ClassVar[str] = "v1"
    KIND: ClassVar[str] = "Namespace"
    NAMESPACED: ClassVar[bool] = False

    metadata: ObjectMeta
    status: Mapping[str, Any] = field(default_factory=_empty)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Namespace:
        c = Checker()
        _top(c, doc, spec_required=False)
        spec = c.mapping(doc.get("spec"), "spec")
        c.known_fields(spec, "spec", frozenset(), frozenset({"finalizers"}))
        meta = _parse_meta(c, doc.get("metadata"), namespaced=False, name_rule=c.dns_label)
        _check_inbound_annotation(c, meta.annotations, "metadata.annotations")
        status = c.mapping(doc.get("status"), "status")
        _finish(c)
        return cls(meta, _frozen(status))

    def to_dict(self) -> dict[str, Any]:
        return {
            "apiVersion": self.API_VERSION,
            "kind": self.KIND,
            "metadata": self.metadata.to_dict(),
            "spec": {},
            "status": {"phase": "Active", **self.status},
        }


@dataclass(frozen=True, slots=True)
class ServicePort:
    port: int
    target_port: int | str
    name: str | None = None
    protocol: str = "TCP"
    app_protocol: str | None = None

    @property
    def opaque(self) -> bool:
        """Declared opaque TCP (``appProtocol: tcp|opaque``): the proxy skips detection."""
        return (self.app_protocol or "").lower() in ("tcp", "opaque", "linkerd.io/opaque")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "port": self.port,
            "targetPort": self.target_port,
            "protocol": self.protocol,
        }
        if self.name is not None:
            out["name"] = self.name
        if self.app_protocol is not None:
            out["appProtocol"] = self.app_protocol
        return out


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    ports: tuple[ServicePort, ...]
    selector: Mapping[str, str] | None = None
    cluster_ip: str | None = None
    type: str = "ClusterIP"
    extra: Mapping[str, Any] = field(default_factory=_empty)

    def port(self, number: int) -> ServicePort | None:
        for p in self.ports:
            if p.port == number:
                return p
        return None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "ports": [p.to_dict() for p in self.ports]}
        if self.selector is not None:
            out["selector"] = dict(self.selector)
        if self.cluster_ip is not None:
            out["clusterIP"] = self.cluster_ip
        out.update(self.extra)
        return out


_SERVICE_SPEC_PASSTHROUGH = frozenset(
    {
        "sessionAffinity",
        "sessionAffinityConfig",
        "externalTrafficPolicy",
        "internalTrafficPolicy",
        "ipFamilies",
        "ipFamilyPolicy",
        "publishNotReadyAddresses",
        "loadBalancerIP",
        "loadBalancerSourceRanges",
        "externalIPs",
        "clusterIPs",
        "healthCheckNodePort",
    }
)


@dataclass(frozen=True, slots=True)
class Service:
    API_VERSION: ClassVar[str] = "v1"
    KIND: ClassVar[str] = "Service"
    NAMESPACED: ClassVar[bool] = True

    metadata: ObjectMeta
    spec: ServiceSpec
    status: Mapping[str, Any] = field(default_factory=_empty)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Service:
        c = Checker()
        _top(c, doc)
        meta = _parse_meta(c, doc.get("metadata"), namespaced=True, name_rule=c.dns_1035_label)
        parse_policy_annotations(meta.annotations, "Service", c)
        m = c.mapping(doc.get("spec"), "spec")
        extra = c.known_fields(
            m,
            "spec",
            frozenset({"ports", "selector", "clusterIP", "type"}),
            _SERVICE_SPEC_PASSTHROUGH,
        )
        stype = c.choice(
            m.get("type"),
            "spec.type",
            ("ClusterIP", "NodePort", "LoadBalancer"),
            default="ClusterIP",
        )
        cluster_ip: str | None = None
        raw_ip = m.get("clusterIP")
        if raw_ip == "None":
            c.error("spec.clusterIP", 'headless services (clusterIP: "None") are not supported')
        elif raw_ip not in (None, ""):
            cluster_ip = c.ip(raw_ip, "spec.clusterIP")
        selector: Mapping[str, str] | None = None
        if m.get("selector") is not None:
            selector = c.labels(m.get("selector"), "spec.selector")
        ports: list[ServicePort] = []
        raw_ports = c.items(m.get("ports"), "spec.ports", required=True)
        if isinstance(m.get("ports"), list) and not raw_ports:
            c.error("spec.ports", "must list at least one port")
        names: set[str] = set()
        numbers: set[int] = set()
        for i, item in enumerate(raw_ports):
            ipath = index("spec.ports", i)
            pm = c.mapping(item, ipath, required=True)
            if not pm:
                continue
            c.known_fields(
                pm,
                ipath,
                frozenset({"port", "targetPort", "name", "protocol", "appProtocol"}),
                frozenset({"nodePort"}),
            )
            port = c.port(pm.get("port"), join(ipath, "port"), required=True)
            pname = c.port_name(pm.get("name"), join(ipath, "name"), required=len(raw_ports) > 1)
            proto = c.choice(pm.get("protocol"), join(ipath, "protocol"), ("TCP", "UDP", "SCTP"))
            app = c.string(pm.get("appProtocol"), join(ipath, "appProtocol"))
            target: int | str | None = port
            raw_target = pm.get("targetPort")
            if isinstance(raw_target, str) and not raw_target.isdigit():
                target = c.port_name(raw_target, join(ipath, "targetPort"))
            elif isinstance(raw_target, str):
                target = c.port(int(raw_target), join(ipath, "targetPort"))
            elif raw_target is not None:
                target = c.port(raw_target, join(ipath, "targetPort"))
            if pname is not None:
                if pname in names:
                    c.error(join(ipath, "name"), f"duplicate port name {show(pname)}")
                names.add(pname)
            if port is not None:
                if port in numbers:
                    c.error(join(ipath, "port"), f"duplicate port {port}")
                numbers.add(port)
                ports.append(
                    ServicePort(
                        port, target if target is not None else port, pname, proto or "TCP", app
                    )
                )
        status = c.mapping(doc.get("status"), "status")
        _finish(c)
        spec = ServiceSpec(tuple(ports), selector, cluster_ip, stype or "ClusterIP", _frozen(extra))
        return cls(meta, spec, _frozen(status))

    def to_dict(self) -> dict[str, Any]:
        return {
            "apiVersion": self.API_VERSION,
            "kind": self.KIND,
            "metadata": self.metadata.to_dict(),
            "spec": self.spec.to_dict(),
            "status": dict(self.status),
        }


@dataclass(frozen=True, slots=True)
class RollingUpdate:
    """``maxSurge``/``maxUnavailable``: an absolute number or a percentage string like ``25%``."""

    max_surge: int | str = "25%"
    max_unavailable: int | str = "25%"

    @staticmethod
    def scaled(value: int | str, replicas: int, *, round_up: bool) -> int:
        """The absolute number for ``replicas`` (percentages round as Kubernetes does)."""
        if isinstance(value, int):
            return value
        pct = int(value[:-1])
        whole, rest = divmod(pct * replicas, 100)
        return whole + (1 if round_up and rest else 0)

    def to_dict(self) -> dict[str, Any]:
        return {"maxSurge": self.max_surge, "maxUnavailable": self.max_unavailable}


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    selector: Mapping[str, str]
    template: PodTemplate
    replicas: int = 1
    strategy: str = "RollingUpdate"
    rolling_update: RollingUpdate = field(default_factory=RollingUpdate)
    extra: Mapping[str, Any] = field(default_factory=_empty)

    def to_dict(self) -> dict[str, Any]:
        strategy: dict[str, Any] = {"type": self.strategy}
        if self.strategy == "RollingUpdate":
            strategy["rollingUpdate"] = self.rolling_update.to_dict()
        out: dict[str, Any] = {
            "replicas": self.replicas,
            "selector": {"matchLabels": dict(self.selector)},
            "strategy": strategy,
            "template": self.template.to_dict(),
        }
        out.update(self.extra)
        return out


def _int_or_percent(c: Checker, value: Any, path: str, default: int | str) -> int | str:
    if value is None:
        return default
    if isinstance(value, str) and value.endswith("%") and value[:-1].isdigit():
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    c.error(path, f'must be a non-negative integer or a percentage like "25%", got {show(value)}')
    return default


@dataclass(frozen=True, slots=True)
class Deployment:
    API_VERSION: ClassVar[str] = "apps/v1"
    KIND: ClassVar[str] = "Deployment"
    NAMESPACED: ClassVar[bool] = True

    metadata: ObjectMeta
    spec: DeploymentSpec
    status: Mapping[str, Any] = field(default_factory=_empty)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Deployment:
        c = Checker()
        _top(c, doc)
        meta = _parse_meta(c, doc.get("metadata"), namespaced=True, name_rule=c.dns_subdomain)
        m = c.mapping(doc.get("spec"), "spec")
        extra = c.known_fields(
            m,
            "spec",
            frozenset({"replicas", "selector", "template", "strategy"}),
            frozenset(
                {"minReadySeconds", "revisionHistoryLimit", "progressDeadlineSeconds", "paused"}
            ),
        )
        replicas = c.integer(m.get("replicas"), "spec.replicas", minimum=0, default=1)
        sel = c.mapping(m.get("selector"), "spec.selector", required=bool(m))
        c.known_fields(sel, "spec.selector", frozenset({"matchLabels"}))
        selector = c.labels(sel.get("matchLabels"), "spec.selector.matchLabels")
        if sel and not selector and "matchLabels" not in sel:
            c.error("spec.selector.matchLabels", "required field is missing")
        template = _parse_template(c, m.get("template"), "spec.template")
        if selector and template.labels is not None:
            for key, value in selector.items():
                if template.labels.get(key) != value:
                    c.error(
                        "spec.template.metadata.labels",
                        f"must match spec.selector.matchLabels: {key}={value} is missing",
                    )
                    break
        smap = c.mapping(m.get("strategy"), "spec.strategy")
        c.known_fields(smap, "spec.strategy", frozenset({"type", "rollingUpdate"}))
        stype = c.choice(
            smap.get("type"),
            "spec.strategy.type",
            ("RollingUpdate", "Recreate"),
            default="RollingUpdate",
        )
        ru = c.mapping(smap.get("rollingUpdate"), "spec.strategy.rollingUpdate")
        c.known_fields(ru, "spec.strategy.rollingUpdate", frozenset({"maxSurge", "maxUnavailable"}))
        if ru and stype == "Recreate":
            c.error("spec.strategy.rollingUpdate", "may not be set when strategy type is Recreate")
        surge = _int_or_percent(
            c, ru.get("maxSurge"), "spec.strategy.rollingUpdate.maxSurge", "25%"
        )
        unavailable = _int_or_percent(
            c, ru.get("maxUnavailable"), "spec.strategy.rollingUpdate.maxUnavailable", "25%"
        )
        if surge in (0, "0%") and unavailable in (0, "0%"):
            c.error(
                "spec.strategy.rollingUpdate.maxUnavailable",
                "may not be 0 when maxSurge is 0 (the rollout could never progress)",
            )
        status = c.mapping(doc.get("status"), "status")
        c.json_value(dict(status), "status")
        _finish(c)
        spec = DeploymentSpec(
            selector=selector,
            template=template,
            replicas=1 if replicas is None else replicas,
            strategy=stype or "RollingUpdate",
            rolling_update=RollingUpdate(surge, unavailable),
            extra=_frozen(extra),
        )
        return cls(meta, spec, _frozen(status))

    def to_dict(self) -> dict[str, Any]:
        return {
            "apiVersion": self.API_VERSION,
            "kind": self.KIND,
            "metadata": self.metadata.to_dict(),
            "spec": self.spec.to_dict(),
            "status": dict(self.status),
        }


@dataclass(frozen=True, slots=True)
class Pod:
    API_VERSION: ClassVar[str] = "v1"
    KIND: ClassVar[str] = "Pod"
    NAMESPACED: ClassVar[bool] = True

    metadata: ObjectMeta
    spec: PodSpec
    status: PodStatus = field(default_factory=PodStatus)

    @property
    def meshed(self) -> bool:
        """The pod runs a Weft sidecar (its admin address is annotated)."""
        return bool(self.metadata.annotations.get(ANNOTATION_PROXY_ADMIN))

    @property
    def deployment(self) -> str | None:
        return self.metadata.annotations.get(ANNOTATION_DEPLOYMENT)

    @property
    def serving(self) -> bool:
        """An endpoint of its services: ready, with an IP, and not leaving."""
        s = self.status
        return s.ready and not s.terminating and s.pod_ip is not None and s.phase == "Running"

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Pod:
        c = Checker()
        _top(c, doc)
        meta = _parse_meta(c, doc.get("metadata"), namespaced=True, name_rule=c.dns_subdomain)
        spec = _parse_pod_spec(c, doc.get("spec"), "spec", template=False)
        status = _parse_pod_status(c, doc.get("status"), "status")
        _finish(c)
        return cls(meta, spec, status)

    def to_dict(self) -> dict[str, Any]:
        return {
            "apiVersion": self.API_VERSION,
            "kind": self.KIND,
            "metadata": self.metadata.to_dict(),
            "spec": self.spec.to_dict(),
            "status": self.status.to_dict(),
        }


# --------------------------------------------------------------------------------------------
# registry


def _pod_status(status: Mapping[str, Any]) -> dict[str, Any]:
    c = Checker()
    parsed = _parse_pod_status(c, status, "status")
    _finish(c)
    return parsed.to_dict()


def _deployment_status(status: Mapping[str, Any]) -> dict[str, Any]:
    c = Checker()
    for key in ("replicas", "readyReplicas", "updatedReplicas", "availableReplicas",
                "unavailableReplicas", "observedGeneration"):  # fmt: skip
        if key in status:
            c.integer(status[key], join("status", key), minimum=0)
    c.json_value(dict(status), "status")
    _finish(c)
    return dict(status)


register_kind(
    KindInfo("Namespace", "v1", False, "namespaces", ("ns",), Namespace.from_dict, _generic_status)
)
register_kind(
    KindInfo("Service", "v1", True, "services", ("svc",), Service.from_dict, _generic_status)
)
register_kind(
    KindInfo(
        "Deployment",
        "apps/v1",
        True,
        "deployments",
        ("deploy",),
        Deployment.from_dict,
        _deployment_status,
    )
)
register_kind(KindInfo("Pod", "v1", True, "pods", ("po",), Pod.from_dict, _pod_status))


def selector_matches(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """Equality-based label selection; a missing or empty selector selects nothing (as a
    Service's does)."""
    if not selector:
        return False
    return all(labels.get(k) == v for k, v in selector.items())
