"""Typed models of the Kubernetes-shaped resources Weft stores: Namespace, Service, Deployment, Pod.

(HTTPRoute lives in :mod:`weft.resources.httproute`, GRPCRoute in
:mod:`weft.resources.grpcroute`, the inbound policy kinds — Server,
AuthorizationPolicy, MeshTLSAuthentication, NetworkAuthentication, HTTPLocalRateLimitPolicy — in
:mod:`weft.resources.policy`; each joins the registry from there. The policy module is imported at
the end of this one, so that every user of the registry sees its kinds.)

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

:func:`parse_resource` dispatches on ``kind``; :data:`KINDS` is the registry later kinds (routes,
policy) join with :func:`register_kind`.

Not for: loading files (:mod:`weft.resources.loader`), cross-document checks such as "the namespace
exists" or cluster IP allocation (the control plane's store does those).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Protocol

from weft.inbound import DEFAULT_POLICIES
from weft.resources.annotations import parse_policy_annotations
from weft.resources.errors import InvalidResources
from weft.resources.security import (
    SecurityContext,
    check_container,
    parse_security_context,
    root_containers,
)
from weft.resources.validate import EMPTY, Checker, index, join, show

DEFAULT_NAMESPACE = "default"
DEFAULT_SERVICE_ACCOUNT = "default"
DEFAULT_GRACE_PERIOD = 30

# Annotations shared with the runtime and the proxy.
ANNOTATION_DEPLOYMENT = "weft.io/deployment"
ANNOTATION_PROXY_ADMIN = "weft.io/proxy-admin"
# The default inbound policy of a Pod (or of every pod of a Namespace): one of DEFAULT_POLICIES.
ANNOTATION_DEFAULT_INBOUND_POLICY = "config.weft.io/default-inbound-policy"
LABEL_POD_TEMPLATE_HASH = "pod-template-hash"

_META_KNOWN = frozenset(
    {
        "name",
        "namespace",
        "labels",
        "annotations",
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "generation",
    }
)
_META_PASSTHROUGH = frozenset(
    {
        "ownerReferences",
        "finalizers",
        "generateName",
        "managedFields",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    }
)
_TOP_KNOWN = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})

_CONTAINER_KNOWN = frozenset(
    {"name", "image", "command", "args", "env", "ports", "workingDir", "securityContext"},
)
_CONTAINER_PASSTHROUGH = frozenset(
    {
        "imagePullPolicy",
        "resources",
        "livenessProbe",
        "readinessProbe",
        "startupProbe",
        "lifecycle",
        "volumeMounts",
        "volumeDevices",
        "envFrom",
        "stdin",
        "stdinOnce",
        "tty",
        "terminationMessagePath",
        "terminationMessagePolicy",
        "resizePolicy",
        "restartPolicy",
    }
)
_POD_SPEC_KNOWN = frozenset(
    {
        "containers",
        "serviceAccountName",
        "restartPolicy",
        "terminationGracePeriodSeconds",
        "nodeName",
        "securityContext",
    }
)
_POD_SPEC_PASSTHROUGH = frozenset(
    {
        "initContainers",
        "volumes",
        "nodeSelector",
        "affinity",
        "tolerations",
        "imagePullSecrets",
        "dnsPolicy",
        "dnsConfig",
        "hostname",
        "subdomain",
        "priorityClassName",
        "schedulerName",
        "automountServiceAccountToken",
        "enableServiceLinks",
        "shareProcessNamespace",
        "topologySpreadConstraints",
        "activeDeadlineSeconds",
        "serviceAccount",
        "hostAliases",
        "runtimeClassName",
        "readinessGates",
    }
)


def _empty() -> Mapping[str, Any]:
    return EMPTY


def _frozen(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(d))


def _check_inbound_annotation(c: Checker, annotations: Mapping[str, str], path: str) -> None:
    """``config.weft.io/default-inbound-policy``, when set, names a default policy."""
    value = annotations.get(ANNOTATION_DEFAULT_INBOUND_POLICY)
    if value is not None and value not in DEFAULT_POLICIES:
        c.error(
            join(path, ANNOTATION_DEFAULT_INBOUND_POLICY),
            f"invalid default inbound policy {show(value)}: must be one of "
            f"{', '.join(DEFAULT_POLICIES)}",
        )


# --------------------------------------------------------------------------------------------
# metadata


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """``metadata``: identity, labels, annotations, and the fields the store assigns."""

    name: str
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=_empty)
    annotations: Mapping[str, str] = field(default_factory=_empty)
    uid: str | None = None
    resource_version: str | None = None
    creation_timestamp: str | None = None
    generation: int | None = None
    extra: Mapping[str, Any] = field(default_factory=_empty)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.namespace is not None:
            out["namespace"] = self.namespace
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        for key, value in (
            ("uid", self.uid),
            ("resourceVersion", self.resource_version),
            ("creationTimestamp", self.creation_timestamp),
            ("generation", self.generation),
        ):
            if value is not None:
                out[key] = value
        out.update(self.extra)
        return out


def _parse_meta(
    c: Checker, data: Any, *, namespaced: bool, name_rule: Callable[..., str | None]
) -> ObjectMeta:
    m = c.mapping(data, "metadata", required=True)
    extra = c.known_fields(m, "metadata", _META_KNOWN, _META_PASSTHROUGH)
    name = name_rule(m.get("name"), "metadata.name") or ""
    namespace: str | None = None
    if namespaced:
        namespace = c.dns_label(m.get("namespace"), "metadata.namespace", required=False)
        if namespace is None:
            namespace = DEFAULT_NAMESPACE
    elif m.get("namespace") not in (None, ""):
        c.error(
            "metadata.namespace",
            f"must not be set on a cluster-scoped kind, got {show(m.get('namespace'))}",
        )
    rv = m.get("resourceVersion")
    gen = m.get("generation")
    uid = m.get("uid")
    ts = m.get("creationTimestamp")
    return ObjectMeta(
        name=name,
        namespace=namespace,
        labels=c.labels(m.get("labels"), "metadata.labels"),
        annotations=c.annotations(m.get("annotations"), "metadata.annotations"),
        uid=c.string(uid, "metadata.uid") if uid is not None else None,
        resource_version=str(rv)
        if isinstance(rv, str | int) and not isinstance(rv, bool)
        else None,
        creation_timestamp=c.string(ts, "metadata.creationTimestamp") if ts is not None else None,
        generation=c.integer(gen, "metadata.generation", minimum=0) if gen is not None else None,
        extra=_frozen(extra),
    )


# --------------------------------------------------------------------------------------------
# pods and templates


@dataclass(frozen=True, slots=True)
class ContainerPort:
    container_port: int
    name: str | None = None
    protocol: str = "TCP"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"containerPort": self.container_port, "protocol": self.protocol}
        if self.name is not None:
            out["name"] = self.name
        return out


@dataclass(frozen=True, slots=True)
class EnvVar:
    name: str
    value: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value}


@dataclass(frozen=True, slots=True)
class Container:
    """One process of a pod. Locally the ``command`` runs as is (the image is not used)."""

    name: str
    command: tuple[str, ...]
    args: tuple[str, ...] = ()
    env: tuple[EnvVar, ...] = ()
    ports: tuple[ContainerPort, ...] = ()
    image: str | None = None
    working_dir: str | None = None
    security_context: SecurityContext | None = None
    extra: Mapping[str, Any] = field(default_factory=_empty)

    @property
    def argv(self) -> tuple[str, ...]:
        return self.command + self.args

    def port_number(self, name: str) -> int | None:
        for p in self.ports:
            if p.name == name:
                return p.container_port
        return None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.image is not None:
            out["image"] = self.image
        out["command"] = list(self.command)
        if self.args:
            out["args"] = list(self.args)
        if self.env:
            out["env"] = [e.to_dict() for e in self.env]
        if self.ports:
            out["ports"] = [p.to_dict() for p in self.ports]
        if self.working_dir is not None:
            out["workingDir"] = self.working_dir
        if self.security_context is not None:
            out["securityContext"] = self.security_context.to_dict()
        out.update(self.extra)
        return out


def _parse_container(c: Checker, data: Any, path: str) -> Container | None:
    m = c.mapping(data, path, required=True)
    if m is EMPTY:  # not a mapping (reported); an empty one is parsed, so its fields are named
        return None
    extra = c.known_fields(m, path, _CONTAINER_KNOWN, _CONTAINER_PASSTHROUGH)
    name = c.dns_label(m.get("name"), join(path, "name"))
    command = c.string_list(m.get("command"), join(path, "command"))
    if m.get("command") is None:
        c.error(
            join(path, "command"),
            "required field is missing: the local runtime runs the command (the image is not used)",
        )
    elif not command and isinstance(m.get("command"), list) and not m.get("command"):
        c.error(join(path, "command"), "must not be empty")
    args = c.string_list(m.get("args"), join(path, "args"))
    env: list[EnvVar] = []
    seen_env: set[str] = set()
    env_path = join(path, "env")
    for i, item in enumerate(c.items(m.get("env"), env_path)):
        ipath = index(env_path, i)
        em = c.mapping(item, ipath, required=True)
        if not em:
            continue
        if "valueFrom" in em:
            c.error(
                join(ipath, "valueFrom"),
                "not supported: the local runtime cannot resolve references; use value",
            )
            continue
        c.known_fields(em, ipath, frozenset({"name", "value"}))
        ename = c.env_name(em.get("name"), join(ipath, "name"))
        value = c.string(em.get("value"), join(ipath, "value"), nonempty=False)
        if ename is None:
            continue
        if ename in seen_env:
            c.error(join(ipath, "name"), f"duplicate environment variable {show(ename)}")
            continue
        seen_env.add(ename)
        env.append(EnvVar(ename, value or ""))
    ports: list[ContainerPort] = []
    port_names: set[str] = set()
    ports_path = join(path, "ports")
    for i, item in enumerate(c.items(m.get("ports"), ports_path)):
        ipath = index(ports_path, i)
        pm = c.mapping(item, ipath, required=True)
        if not pm:
            continue
        c.known_fields(
            pm,
            ipath,
            frozenset({"containerPort", "name", "protocol"}),
            frozenset({"hostPort", "hostIP"}),
        )
        number = c.port(pm.get("containerPort"), join(ipath, "containerPort"), required=True)
        pname = c.port_name(pm.get("name"), join(ipath, "name"))
        proto = c.choice(pm.get("protocol"), join(ipath, "protocol"), ("TCP", "UDP", "SCTP"))
        if pname is not None:
            if pname in port_names:
                c.error(join(ipath, "name"), f"duplicate port name {show(pname)}")
            port_names.add(pname)
        if number is not None:
            ports.append(ContainerPort(number, pname, proto or "TCP"))
    image = c.string(m.get("image"), join(path, "image"))
    working_dir = c.string(m.get("workingDir"), join(path, "workingDir"))
    security = parse_security_context(
        c, m.get("securityContext"), join(path, "securityContext"), container=True
    )
    if name is None:
        return None
    return Container(
        name=name,
        command=command,
        args=args,
        env=tuple(env),
        ports=tuple(ports),
        image=image,
        working_dir=working_dir,
        security_context=security,
        extra=_frozen(extra),
    )


@dataclass(frozen=True, slots=True)
class PodSpec:
    containers: tuple[Container, ...]
    service_account_name: str = DEFAULT_SERVICE_ACCOUNT
    restart_policy: str = "Always"
    termination_grace_period_seconds: int = DEFAULT_GRACE_PERIOD
    node_name: str | None = None
    security_context: SecurityContext | None = None
    extra: Mapping[str, Any] = field(default_factory=_empty)

    @property
    def root_containers(self) -> list[str]:
        """Containers that run as root (``runAsUser: 0`` or ``privileged``): on the local
        runtime such a pod can administer the mesh."""
        return root_containers(
            self.security_context, ((ct.name, ct.security_context) for ct in self.containers)
        )

    def container_port(self, name: str) -> int | None:
        """The number of the container port called ``name`` (for a Service's named targetPort)."""
        for container in self.containers:
            number = container.port_number(name)
            if number is not None:
                return number
        return None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "containers": [ct.to_dict() for ct in self.containers],
            "serviceAccountName": self.service_account_name,
            "restartPolicy": self.restart_policy,
            "terminationGracePeriodSeconds": self.termination_grace_period_seconds,
        }
        if self.node_name is not None:
            out["nodeName"] = self.node_name
        if self.security_context is not None:
            out["securityContext"] = self.security_context.to_dict()
        out.update(self.extra)
        return out


def _parse_pod_spec(c: Checker, data: Any, path: str, *, template: bool) -> PodSpec:
    m = c.mapping(data, path, required=True)
    extra = c.known_fields(m, path, _POD_SPEC_KNOWN, _POD_SPEC_PASSTHROUGH)
    security = parse_security_context(
        c, m.get("securityContext"), join(path, "securityContext"), container=False
    )
    containers: list[Container] = []
    cpath = join(path, "containers")
    raw = c.items(m.get("containers"), cpath, required=True)
    if m and "containers" in m and not raw and isinstance(m.get("containers"), list):
        c.error(cpath, "must list at least one container")
    names: set[str] = set()
    for i, item in enumerate(raw):
        ct = _parse_container(c, item, index(cpath, i))
        if ct is None:
            continue
        check_container(c, security, ct.security_context, join(index(cpath, i), "securityContext"))
        if ct.name in names:
            c.error(join(index(cpath, i), "name"), f"duplicate container name {show(ct.name)}")
            continue
        names.add(ct.name)
        containers.append(ct)
    sa = c.dns_subdomain(
        m.get("serviceAccountName"), join(path, "serviceAccountName"), required=False
    )
    restart_choices = ("Always",) if template else ("Always", "OnFailure", "Never")
    restart = c.choice(
        m.get("restartPolicy"), join(path, "restartPolicy"), restart_choices, default="Always"
    )
    grace = c.integer(
        m.get("terminationGracePeriodSeconds"),
        join(path, "terminationGracePeriodSeconds"),
        minimum=0,
        default=DEFAULT_GRACE_PERIOD,
    )
    node = c.string(m.get("nodeName"), join(path, "nodeName"))
    return PodSpec(
        containers=tuple(containers),
        service_account_name=sa or DEFAULT_SERVICE_ACCOUNT,
        restart_policy=restart or "Always",
        termination_grace_period_seconds=DEFAULT_GRACE_PERIOD if grace is None else grace,
        node_name=node,
        security_context=security,
        extra=_frozen(extra),
    )


@dataclass(frozen=True, slots=True)
class PodTemplate:
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    spec: PodSpec

    def to_dict(self) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        if self.labels:
            meta["labels"] = dict(self.labels)
        if self.annotations:
            meta["annotations"] = dict(self.annotations)
        return {"metadata": meta, "spec": self.spec.to_dict()}


def _parse_template(c: Checker, data: Any, path: str) -> PodTemplate:
    m = c.mapping(data, path, required=True)
    c.known_fields(m, path, frozenset({"metadata", "spec"}))
    mpath = join(path, "metadata")
    meta = c.mapping(m.get("metadata"), mpath)
    c.known_fields(meta, mpath, frozenset({"labels", "annotations", "name", "namespace"}))
    annotations = c.annotations(meta.get("annotations"), join(mpath, "annotations"))
    _check_inbound_annotation(c, annotations, join(mpath, "annotations"))
    return PodTemplate(
        labels=c.labels(meta.get("labels"), join(mpath, "labels")),
        annotations=annotations,
        spec=_parse_pod_spec(c, m.get("spec"), join(path, "spec"), template=True),
    )


POD_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")


@dataclass(frozen=True, slots=True)
class ContainerStatus:
    name: str
    restart_count: int = 0
    ready: bool = False
    state: Mapping[str, Any] = field(default_factory=_empty)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "restartCount": self.restart_count,
            "ready": self.ready,
            "state": dict(self.state),
        }


@dataclass(frozen=True, slots=True)
class PodStatus:
    """What the runtime reports about a pod. ``terminating`` marks a pod that is leaving."""

    phase: str = "Pending"
    pod_ip: str | None = None
    ready: bool = False
    container_statuses: tuple[ContainerStatus, ...] = ()
    start_time: str | None = None
    terminating: bool = False
    extra: Mapping[str, Any] = field(default_factory=_empty)

    @property
    def restarts(self) -> int:
        return sum(cs.restart_count for cs in self.container_statuses)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "phase": self.phase,
            "ready": self.ready,
            "conditions": [{"type": "Ready", "status": "True" if self.ready else "False"}],
            "containerStatuses": [cs.to_dict() for cs in self.container_statuses],
            "terminating": self.terminating,
        }
        if self.pod_ip is not None:
            out["podIP"] = self.pod_ip
        if self.start_time is not None:
            out["startTime"] = self.start_time
        out.update(self.extra)
        return out


_POD_STATUS_KNOWN = frozenset(
    {"phase", "podIP", "ready", "conditions", "containerStatuses", "startTime", "terminating"}
)
_POD_STATUS_PASSTHROUGH = frozenset(
    {
        "message",
        "reason",
        "hostIP",
        "podIPs",
        "qosClass",
        "initContainerStatuses",
        "nominatedNodeName",
    }
)


def _parse_pod_status(c: Checker, data: Any, path: str) -> PodStatus:
    m = c.mapping(data, path)
    extra = c.known_fields(m, path, _POD_STATUS_KNOWN, _POD_STATUS_PASSTHROUGH)
    phase = c.choice(m.get("phase"), join(path, "phase"), POD_PHASES, default="Pending")
    ip = c.ip(m.get("podIP"), join(path, "podIP")) if m.get("podIP") not in (None, "") else None
    ready = c.boolean(m.get("ready"), join(path, "ready"))
    cond_path = join(path, "conditions")
    for i, item in enumerate(c.items(m.get("conditions"), cond_path)):
        ipath = index(cond_path, i)
        cm = c.mapping(item, ipath, required=True)
        c.string(cm.get("type"), join(ipath, "type"), required=True)
        c.choice(cm.get("status"), join(ipath, "status"), ("True", "False", "Unknown"))
        if cm.get("type") == "Ready":
            # the Kubernetes field decides (a client patches conditions and leaves the local
            # runtime's ``ready`` shorthand as it was); ``ready`` alone is the shorthand's
            ready = cm.get("status") == "True"
    statuses: list[ContainerStatus] = []
    cs_path = join(path, "containerStatuses")
    for i, item in enumerate(c.items(m.get("containerStatuses"), cs_path)):
        ipath = index(cs_path, i)
        cm = c.mapping(item, ipath, required=True)
        c.known_fields(
            cm,
            ipath,
            frozenset({"name", "restartCount", "ready", "state"}),
            frozenset({"lastState", "image", "imageID", "containerID", "started"}),
        )
        cname = c.string(cm.get("name"), join(ipath, "name"), required=True)
        restarts = c.integer(cm.get("restartCount"), join(ipath, "restartCount"), minimum=0)
        cready = c.boolean(cm.get("ready"), join(ipath, "ready"))
        state = c.mapping(cm.get("state"), join(ipath, "state"))
        c.json_value(dict(state), join(ipath, "state"))
        if cname is not None:
            statuses.append(ContainerStatus(cname, restarts or 0, cready, _frozen(state)))
    start = c.string(m.get("startTime"), join(path, "startTime"))
    terminating = c.boolean(m.get("terminating"), join(path, "terminating"))
    return PodStatus(
        phase=phase or "Pending",
        pod_ip=ip,
        ready=ready,
        container_statuses=tuple(statuses),
        start_time=start,
        terminating=terminating,
        extra=_frozen(extra),
    )


# --------------------------------------------------------------------------------------------
# kinds


class Resource(Protocol):
    """What every kind's model offers."""

    API_VERSION: ClassVar[str]
    KIND: ClassVar[str]
    NAMESPACED: ClassVar[bool]

    @property
    def metadata(self) -> ObjectMeta: ...

    def to_dict(self) -> dict[str, Any]: ...


def _top(c: Checker, doc: Mapping[str, Any], spec_required: bool = True) -> None:
    c.known_fields(doc, "", _TOP_KNOWN)
    if spec_required and doc.get("spec") is None:
        c.error("spec", "required field is missing")


def _finish(c: Checker) -> None:
    if c.errors:
        raise InvalidResources(c.errors)


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


@dataclass(frozen=True, slots=True)
class KindInfo:
    """How the store and the CLI handle one kind. Documents may also carry one of
    ``other_api_versions`` (another project's group for the same kind, e.g. Linkerd's); the
    store keeps every object under ``api_version``."""

    kind: str
    api_version: str
    namespaced: bool
    plural: str
    aliases: tuple[str, ...]
    parse: Callable[[Mapping[str, Any]], Resource]
    parse_status: Callable[[Mapping[str, Any]], dict[str, Any]]
    other_api_versions: tuple[str, ...] = ()

    @property
    def api_versions(self) -> tuple[str, ...]:
        return (self.api_version, *self.other_api_versions)


def _generic_status(status: Mapping[str, Any]) -> dict[str, Any]:
    c = Checker()
    c.json_value(dict(status), "status")
    _finish(c)
    return dict(status)


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


KINDS: dict[str, KindInfo] = {}
_ALIASES: dict[str, str] = {}


def register_kind(info: KindInfo) -> None:
    """Add a kind (later issues: routes, policy) so the store, loader and CLI accept it."""
    KINDS[info.kind] = info
    for name in (info.kind, info.kind.lower(), info.plural, *info.aliases):
        _ALIASES[name.lower()] = info.kind


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


def resolve_kind(name: str) -> KindInfo:
    """``pods``, ``po``, ``Pod`` -> the Pod kind. Raises ValueError naming the known kinds."""
    kind = _ALIASES.get(name.lower())
    if kind is None:
        known = ", ".join(sorted(KINDS))
        raise ValueError(f"unknown kind {name!r}; known kinds: {known}")
    return KINDS[kind]


def parse_resource(doc: Any) -> Resource:
    """Validate one document and return its model; raises InvalidResources naming every field."""
    c = Checker()
    if not isinstance(doc, Mapping):
        c.error("", f"a document must be a mapping, got {type(doc).__name__} {show(doc)}")
        raise InvalidResources(c.errors)
    kind = doc.get("kind")
    api_version = doc.get("apiVersion")
    if kind is None:
        c.error("kind", "required field is missing")
    elif not isinstance(kind, str) or kind not in KINDS:
        c.error("kind", f"unknown kind {show(kind)}; known kinds: {', '.join(sorted(KINDS))}")
    if api_version is None:
        c.error("apiVersion", "required field is missing")
    elif isinstance(kind, str) and kind in KINDS and api_version not in KINDS[kind].api_versions:
        accepted = " or ".join(show(v) for v in KINDS[kind].api_versions)
        c.error("apiVersion", f"must be {accepted} for kind {kind}, got {show(api_version)}")
    if c.errors:
        raise InvalidResources(c.errors)
    assert isinstance(kind, str)
    return KINDS[kind].parse(doc)


def parse_status(kind: str, status: Any) -> dict[str, Any]:
    """Validate a ``status`` for ``kind`` and return it normalized; raises InvalidResources."""
    if not isinstance(status, Mapping):
        c = Checker()
        c.error("status", f"must be a mapping, got {show(status)}")
        raise InvalidResources(c.errors)
    return KINDS[kind].parse_status(status)


def selector_matches(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """Equality-based label selection; a missing or empty selector selects nothing (as a
    Service's does)."""
    if not selector:
        return False
    return all(labels.get(k) == v for k, v in selector.items())


# the policy and route kinds register themselves; imported last, as they build on this module
from weft.resources import endpointslice as _endpointslice  # noqa: E402, F401
from weft.resources import grpcroute as _grpcroute  # noqa: E402, F401
from weft.resources import policy as _policy  # noqa: E402, F401
from weft.resources import replicaset as _replicaset  # noqa: E402, F401
