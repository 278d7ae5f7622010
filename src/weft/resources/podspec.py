"""Pod specs as Weft's resource models read them: containers, the pod spec, pod templates (of
Deployments and ReplicaSets) and pod status, validated field by field.

Fields Kubernetes defines but Weft does not interpret (probes, resources, volumes, ...) are kept
verbatim; fields nobody defines are rejected.

Not for: the Pod kind itself and the registry (:mod:`weft.resources.models`), nor reading a Pod
as a cluster has it (:mod:`weft.resources.pods`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from weft.resources.meta import (
    DEFAULT_GRACE_PERIOD,
    DEFAULT_SERVICE_ACCOUNT,
    _check_inbound_annotation,
    _empty,
    _frozen,
)
from weft.resources.security import (
    SecurityContext,
    check_container,
    parse_security_context,
    root_containers,
)
from weft.resources.validate import EMPTY, Checker, index, join, show

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
