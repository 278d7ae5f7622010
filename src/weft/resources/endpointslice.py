"""``discovery.k8s.io/v1`` EndpointSlice: the validated kind, and reading one as the destination
service does.

A Service's endpoints, as Kubernetes publishes them: each slice holds up to 1,000 endpoints of
one address family (``addressType``: ``IPv4``, ``IPv6``, ``FQDN``) with the same port numbers
(``ports``: the Service port's ``name``, ``protocol``, ``appProtocol`` and the number its pods
listen on, which differs between slices when a named target port resolves differently), and
belongs to its Service by the label ``kubernetes.io/service-name``. Each endpoint has
``addresses`` (consumers use the first), ``conditions`` (``ready``, ``serving``,
``terminating``; a missing ``ready`` reads as true), and usually a ``targetRef`` to its Pod.

:class:`EndpointSlice` registers the kind with the store (the local mesh's slice controller
writes them, as kube-controller-manager does on a cluster); the readers below take decoded JSON
as either API serves it and never raise on a malformed slice (they skip what they cannot read).

Not for: computing slices from Pods (:mod:`weft.runtime.local.endpointslices`), nor what a
destination is (:mod:`weft.control.destinations`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from weft.resources.meta import ObjectMeta, _frozen, _parse_meta
from weft.resources.registry import KindInfo, _finish, _generic_status, register_kind
from weft.resources.validate import Checker, index, join

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MAX_ENDPOINTS = 1000  # the API's limit per slice
MAX_PORTS = 100
ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")

_TOP = frozenset({"apiVersion", "kind", "metadata", "addressType", "endpoints", "ports"})
_ENDPOINT = frozenset({"addresses", "conditions", "targetRef", "nodeName", "hostname", "zone"})
_ENDPOINT_PASSTHROUGH = frozenset({"hints", "deprecatedTopology"})
_CONDITIONS = frozenset({"ready", "serving", "terminating"})
_TARGET_REF = frozenset({"kind", "name", "namespace", "uid", "apiVersion", "resourceVersion"})
_PORT = frozenset({"name", "port", "protocol", "appProtocol"})


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    """A validated slice; the stored form is the document itself (normalised metadata)."""

    API_VERSION: ClassVar[str] = "discovery.k8s.io/v1"
    KIND: ClassVar[str] = "EndpointSlice"
    NAMESPACED: ClassVar[bool] = True

    metadata: ObjectMeta
    address_type: str
    endpoints: tuple[Mapping[str, Any], ...] = ()
    ports: tuple[Mapping[str, Any], ...] = ()
    status: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> EndpointSlice:
        c = Checker()
        c.known_fields(doc, "", _TOP | {"status"})
        meta = _parse_meta(c, doc.get("metadata"), namespaced=True, name_rule=c.dns_subdomain)
        family = c.choice(doc.get("addressType"), "addressType", ADDRESS_TYPES)
        if doc.get("addressType") is None:
            c.error("addressType", "required field is missing")
        endpoints = c.items(doc.get("endpoints"), "endpoints")
        if len(endpoints) > MAX_ENDPOINTS:
            c.error("endpoints", f"must have at most {MAX_ENDPOINTS} items, got {len(endpoints)}")
        for i, ep in enumerate(endpoints[:MAX_ENDPOINTS]):
            _check_endpoint(c, ep, index("endpoints", i), family)
        ports = c.items(doc.get("ports"), "ports")
        if len(ports) > MAX_PORTS:
            c.error("ports", f"must have at most {MAX_PORTS} items, got {len(ports)}")
        for i, port in enumerate(ports[:MAX_PORTS]):
            path = index("ports", i)
            p = c.mapping(port, path)
            c.known_fields(p, path, _PORT)
            if p.get("name") not in (None, ""):
                c.port_name(p.get("name"), join(path, "name"))
            if p.get("port") is not None:
                c.port(p.get("port"), join(path, "port"))
            c.choice(p.get("protocol"), join(path, "protocol"), ("TCP", "UDP", "SCTP"))
            c.string(p.get("appProtocol"), join(path, "appProtocol"))
        _finish(c)
        return cls(
            meta,
            family or "IPv4",
            tuple(_frozen(e) for e in endpoints),
            tuple(_frozen(p) for p in ports),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "apiVersion": self.API_VERSION,
            "kind": self.KIND,
            "metadata": self.metadata.to_dict(),
            "addressType": self.address_type,
            "endpoints": [_thaw(e) for e in self.endpoints],
            "ports": [_thaw(p) for p in self.ports],
        }


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_thaw(v) for v in value]
    return value


def _check_endpoint(c: Checker, ep: Any, path: str, family: str | None) -> None:
    e = c.mapping(ep, path)
    c.known_fields(e, path, _ENDPOINT, _ENDPOINT_PASSTHROUGH)
    addresses = c.items(e.get("addresses"), join(path, "addresses"), required=True)
    if e and not addresses and e.get("addresses") is not None:
        c.error(join(path, "addresses"), "must have at least one address")
    for j, address in enumerate(addresses[:100]):
        apath = index(join(path, "addresses"), j)
        if family == "FQDN":
            c.dns_subdomain(address, apath)
            continue
        ip = c.ip(address, apath)
        if ip is not None and family is not None and (":" in ip) != (family == "IPv6"):
            c.error(apath, f"must be an {family} address, got {ip}")
    cond = c.mapping(e.get("conditions"), join(path, "conditions"))
    c.known_fields(cond, join(path, "conditions"), _CONDITIONS)
    for name in sorted(_CONDITIONS):
        if cond.get(name) is not None:
            c.boolean(cond.get(name), join(join(path, "conditions"), name))
    ref = c.mapping(e.get("targetRef"), join(path, "targetRef"))
    c.known_fields(ref, join(path, "targetRef"), _TARGET_REF)
    for name in ("kind", "name", "namespace", "uid"):
        if ref.get(name) is not None:
            c.string(ref.get(name), join(join(path, "targetRef"), name))
    for name in ("nodeName", "hostname", "zone"):
        if e.get(name) is not None:
            c.string(e.get(name), join(path, name))


register_kind(
    KindInfo(
        "EndpointSlice",
        EndpointSlice.API_VERSION,
        True,
        "endpointslices",
        ("endpointslice",),
        EndpointSlice.from_dict,
        _generic_status,
    )
)


# -- reading slices as either API serves them --------------------------------------------------


def service_of(slice_: Mapping[str, Any]) -> str | None:
    """``namespace/name`` of the Service a slice belongs to (None: it names none)."""
    meta = slice_.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    labels = meta.get("labels")
    name = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, Mapping) else None
    ns = meta.get("namespace")
    if not isinstance(name, str) or not name or not isinstance(ns, str):
        return None
    return f"{ns}/{name}"


def port_number(slice_: Mapping[str, Any], name: str | None) -> int | None:
    """The number of the slice's port named ``name`` (a Service port's name; ``None`` or ``""``
    for an unnamed one), or None when the slice has no such port."""
    want = name or ""
    for port in _list(slice_.get("ports")):
        if isinstance(port, Mapping) and (port.get("name") or "") == want:
            number = port.get("port")
            if isinstance(number, int) and not isinstance(number, bool) and 0 < number < 65536:
                return number
    return None


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    """One endpoint of a slice, as a consumer reads it."""

    address: str
    ready: bool
    serving: bool
    terminating: bool
    pod: str | None  # the targetRef's name when it is a Pod
    pod_namespace: str | None


def endpoints(slice_: Mapping[str, Any]) -> Iterator[SliceEndpoint]:
    """The slice's endpoints (IP families only: an FQDN slice yields none). ``ready`` missing
    reads as true, ``serving`` missing as ``ready``, as the API documents."""
    if slice_.get("addressType") not in ("IPv4", "IPv6"):
        return
    for ep in _list(slice_.get("endpoints")):
        if not isinstance(ep, Mapping):
            continue
        addresses = _list(ep.get("addresses"))
        if not addresses or not isinstance(addresses[0], str):
            continue
        cond = ep.get("conditions")
        cond = cond if isinstance(cond, Mapping) else {}
        ready = cond.get("ready") is not False
        serving = cond.get("serving") if isinstance(cond.get("serving"), bool) else ready
        ref = ep.get("targetRef")
        pod = ns = None
        if isinstance(ref, Mapping) and ref.get("kind") == "Pod":
            name = ref.get("name")
            pod = name if isinstance(name, str) else None
            rns = ref.get("namespace")
            ns = rns if isinstance(rns, str) else None
        yield SliceEndpoint(
            addresses[0], ready, bool(serving), cond.get("terminating") is True, pod, ns
        )


def pods_of(slice_: Mapping[str, Any]) -> list[str]:
    """``namespace/name`` of every Pod the slice's endpoints refer to (an index of the cache)."""
    default_ns = (slice_.get("metadata") or {}).get("namespace")
    out = []
    for ep in endpoints(slice_):
        ns = ep.pod_namespace or default_ns
        if ep.pod and isinstance(ns, str):
            out.append(f"{ns}/{ep.pod}")
    return out


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list | tuple) else []  # type: ignore[return-value]


__all__ = [
    "MANAGED_BY_LABEL",
    "MAX_ENDPOINTS",
    "SERVICE_NAME_LABEL",
    "EndpointSlice",
    "SliceEndpoint",
    "endpoints",
    "pods_of",
    "port_number",
    "service_of",
]
