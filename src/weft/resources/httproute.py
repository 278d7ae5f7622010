"""The Gateway API ``HTTPRoute`` kind (``gateway.networking.k8s.io/v1``) in mesh mode.

An HTTPRoute attaches to Services through ``spec.parentRefs`` (kind ``Service``, group ``""`` or
``core``, as in Linkerd and Istio's "GAMMA" mesh mode) and describes how requests to them are
routed: matches on path (``Exact``, ``PathPrefix``, ``RegularExpression``), headers, query
parameters and method; weighted ``backendRefs``; the filters ``RequestHeaderModifier``,
``ResponseHeaderModifier`` and ``RequestRedirect``; ``timeouts.request`` and
``timeouts.backendRequest``; and the ``retry.weft.io/*`` / ``timeout.weft.io/*`` annotations.

:meth:`HTTPRoute.from_dict` validates a document as the Gateway API's schema and CEL rules do, and
refuses what Weft does not implement with the field path and the feature's name
(``spec.rules[0].filters[1].type: RequestMirror is not supported by Weft (supported: ...)``):
filters ``URLRewrite``, ``RequestMirror``, ``ExtensionRef`` (and ``CORS``, ``ExternalAuth``),
Gateway parents, ``sectionName``, parents in other namespaces (consumer routes), filters on
backendRefs, ``ReplacePrefixMatch`` redirects, the experimental ``retry`` and
``sessionPersistence``. Nothing is silently ignored. Matches, filters and timeouts are parsed into
the :mod:`weft.policy` types the proxy receives, and written back by :meth:`HTTPRoute.to_dict` in
the Kubernetes shape with the Gateway API's defaults filled in.

A route whose parents are Servers (group ``policy.weft.io`` or ``policy.linkerd.io``, as
Linkerd's inbound routes) is an *inbound* route: its matches split a Server's traffic so that
AuthorizationPolicies can target one route (:mod:`weft.control.inbound`). It only matches: its
requests go to the pod the Server selects, so ``backendRefs``, ``filters``, ``timeouts``,
``hostnames`` and the ``retry.weft.io/*`` / ``timeout.weft.io/*`` annotations are refused on it,
as is mixing Server and Service parents. Linkerd's ``policy.linkerd.io`` HTTPRoute apiVersions are
accepted too (stored as ``gateway.networking.k8s.io/v1``).

The status (``status.parents[]`` with ``Accepted`` / ``ResolvedRefs`` conditions) is written by the
control plane (:mod:`weft.control.routestatus`); :mod:`weft.resources.routestatus` validates its
shape. Matches and filters are parsed by :mod:`weft.resources.httpmatch`.

Not for: deciding which routes apply to which service, or resolving backends (the control plane).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

from weft.policy import HeaderModifier, PathMatch, Redirect, RouteMatch, Timeouts
from weft.resources.annotations import PREFIXES, parse_policy_annotations
from weft.resources.httpmatch import (
    _HOSTNAME,
    match_dict,
    modifier_dict,
    parse_filters,
    parse_match,
    redirect_dict,
    unsupported,
)
from weft.resources.meta import ObjectMeta, _frozen, _parse_meta
from weft.resources.registry import KindInfo, _finish, _top, register_kind
from weft.resources.routestatus import parse_route_status
from weft.resources.validate import EMPTY, Checker, index, join, show

GROUP = "gateway.networking.k8s.io"
API_VERSION = f"{GROUP}/v1"
LINKERD_API_VERSIONS = tuple(f"policy.linkerd.io/v1beta{n}" for n in (1, 2, 3))
CONTROLLER_NAME = "weft.io/control-plane"

# the filter types of the Gateway API and the field holding each one's configuration
SERVICE_GROUPS = ("", "core")
SERVER_GROUPS = ("policy.weft.io", "policy.linkerd.io")
_PARENTS = (
    'Service, with group "" or "core"; Server, with group policy.weft.io or policy.linkerd.io'
)
_INBOUND = "an inbound route (parentRef kind Server)"

# Gateway API limits (maxItems in the CRD)
MAX_PARENT_REFS = 32
MAX_HOSTNAMES = 16
MAX_RULES = 16
MAX_MATCHES = 64
MAX_BACKEND_REFS = 16
MAX_WEIGHT = 1_000_000

# GEP-2257 durations: 1 to 4 parts of up to 5 digits and a unit
_GATEWAY_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
_DURATION_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_DURATION_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")

_SPEC_KNOWN = frozenset({"parentRefs", "hostnames", "rules"})
_PARENT_KNOWN = frozenset({"group", "kind", "namespace", "name", "sectionName", "port"})
_RULE_KNOWN = frozenset({"name", "matches", "filters", "backendRefs", "timeouts"})
_RULE_REFUSED = {
    "retry": "retry is not supported by Weft (use the retry.weft.io/* annotations)",
    "sessionPersistence": "sessionPersistence is not supported by Weft",
}
_BACKEND_KNOWN = frozenset({"group", "kind", "name", "namespace", "port", "weight"})


def gateway_duration(text: str) -> float:
    """A GEP-2257 duration (``10s``, ``1m30s``, ``500ms``; ``0s`` disables) in seconds.

    Raises ValueError for anything else, including Go forms the Gateway API refuses (``1.5s``).
    """
    if not _GATEWAY_DURATION.match(text):
        raise ValueError(
            f"invalid duration {show(text)}: expected 1 to 4 parts of <number><h|m|s|ms> "
            "such as 10s, 1m30s, 500ms (Gateway API durations)"
        )
    return sum(
        int(m.group(1)) * _DURATION_SECONDS[m.group(2)] for m in _DURATION_PART.finditer(text)
    )


# --------------------------------------------------------------------------------------------
# model


@dataclass(frozen=True, slots=True)
class ParentRef:
    """A Service the route attaches to (``port``: only that service port; None: every port), or
    a Server (``kind="Server"``, never a port) for an inbound route."""

    name: str
    namespace: str
    port: int | None = None
    group: str = "core"
    kind: str = "Service"

    @property
    def service(self) -> bool:
        return self.kind == "Service"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "group": self.group,
            "kind": self.kind,
            "name": self.name,
            "namespace": self.namespace,
        }
        if self.port is not None:
            out["port"] = self.port
        return out

    def describe(self) -> str:
        """``web:8080`` / ``web`` / ``Server web-http`` (the namespace is the route's)."""
        if not self.service:
            return f"Server {self.name}"
        return self.name if self.port is None else f"{self.name}:{self.port}"


@dataclass(frozen=True, slots=True)
class BackendRef:
    """A weighted Service backend (``port`` None: the port the request was sent to)."""

    name: str
    namespace: str
    port: int | None = None
    weight: int = 1
    group: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "group": self.group,
            "kind": "Service",
            "name": self.name,
            "namespace": self.namespace,
            "weight": self.weight,
        }
        if self.port is not None:
            out["port"] = self.port
        return out


@dataclass(frozen=True, slots=True)
class RouteTimeouts:
    """``timeouts`` as written (GEP-2257 strings) and in seconds (``0s``: None, no timeout)."""

    request: str | None = None
    backend_request: str | None = None

    def seconds(self) -> Timeouts:
        def s(text: str | None) -> float | None:
            if text is None:
                return None
            value = gateway_duration(text)
            return value if value > 0 else None

        return Timeouts(request=s(self.request), backend_request=s(self.backend_request))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.request is not None:
            out["request"] = self.request
        if self.backend_request is not None:
            out["backendRequest"] = self.backend_request
        return out


@dataclass(frozen=True, slots=True)
class HTTPRouteRule:
    """One rule: ``matches`` (Gateway defaults filled in), filters in their order, backends."""

    matches: tuple[RouteMatch, ...]
    filters: tuple[str, ...] = ()  # filter types, in order
    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    redirect: Redirect | None = None
    backend_refs: tuple[BackendRef, ...] = ()
    timeouts: RouteTimeouts = field(default_factory=RouteTimeouts)
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.name is not None:
            out["name"] = self.name
        out["matches"] = [match_dict(m) for m in self.matches]
        filters: list[dict[str, Any]] = []
        for ftype in self.filters:
            if ftype == "RequestHeaderModifier" and self.request_headers is not None:
                config = modifier_dict(self.request_headers)
                filters.append({"type": ftype, "requestHeaderModifier": config})
            elif ftype == "ResponseHeaderModifier" and self.response_headers is not None:
                config = modifier_dict(self.response_headers)
                filters.append({"type": ftype, "responseHeaderModifier": config})
            elif ftype == "RequestRedirect" and self.redirect is not None:
                filters.append({"type": ftype, "requestRedirect": redirect_dict(self.redirect)})
        if filters:
            out["filters"] = filters
        if self.backend_refs:
            out["backendRefs"] = [b.to_dict() for b in self.backend_refs]
        timeouts = self.timeouts.to_dict()
        if timeouts:
            out["timeouts"] = timeouts
        return out


@dataclass(frozen=True, slots=True)
class HTTPRouteSpec:
    parent_refs: tuple[ParentRef, ...]
    rules: tuple[HTTPRouteRule, ...]
    hostnames: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"parentRefs": [p.to_dict() for p in self.parent_refs]}
        if self.hostnames:
            out["hostnames"] = list(self.hostnames)
        out["rules"] = [r.to_dict() for r in self.rules]
        return out


@dataclass(frozen=True, slots=True)
class HTTPRoute:
    """A validated HTTPRoute (see the module docstring)."""

    API_VERSION: ClassVar[str] = API_VERSION
    KIND: ClassVar[str] = "HTTPRoute"
    NAMESPACED: ClassVar[bool] = True

    metadata: ObjectMeta
    spec: HTTPRouteSpec
    status: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def key(self) -> str:
        """``ns/name``: the route's name in policies and in the ``route`` metric label."""
        return f"{self.metadata.namespace}/{self.metadata.name}"

    @property
    def inbound(self) -> bool:
        """Attached to Servers (an inbound route), not to Services."""
        return any(not p.service for p in self.spec.parent_refs)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> HTTPRoute:
        c = Checker()
        _top(c, doc)
        meta = _parse_meta(c, doc.get("metadata"), namespaced=True, name_rule=c.dns_subdomain)
        ns = meta.namespace or "default"
        spec = _parse_spec(c, doc.get("spec"), ns)
        if any(not p.service for p in spec.parent_refs):
            for key in meta.annotations:
                if key.startswith(PREFIXES):
                    c.error(
                        join("metadata.annotations", key),
                        unsupported(f"{key} on {_INBOUND}", "matches only"),
                    )
        else:
            parse_policy_annotations(meta.annotations, "HTTPRoute", c)
        status = c.mapping(doc.get("status"), "status")
        if status:
            c.json_value(dict(status), "status")
        _finish(c)
        return cls(meta, spec, _frozen(status))

    def to_dict(self) -> dict[str, Any]:
        return {
            "apiVersion": self.API_VERSION,
            "kind": self.KIND,
            "metadata": self.metadata.to_dict(),
            "spec": self.spec.to_dict(),
            "status": dict(self.status),
        }


# --------------------------------------------------------------------------------------------
# parsing


def _parse_spec(c: Checker, value: Any, namespace: str) -> HTTPRouteSpec:
    present = isinstance(value, Mapping)  # a missing spec is reported once, by _top
    m = c.mapping(value, "spec")
    c.known_fields(m, "spec", _SPEC_KNOWN)
    parents: list[ParentRef] = []
    raw_parents = c.items(m.get("parentRefs"), "spec.parentRefs", required=present)
    if not raw_parents and isinstance(m.get("parentRefs"), list):
        c.error("spec.parentRefs", "must list at least one parent: the Service the route is for")
    if len(raw_parents) > MAX_PARENT_REFS:
        c.error("spec.parentRefs", f"must have at most {MAX_PARENT_REFS} items")
    seen: dict[tuple[str, str, int | None], int] = {}
    for i, item in enumerate(raw_parents):
        path = index("spec.parentRefs", i)
        ref = _parse_parent(c, item, path, namespace)
        if ref is None:
            continue
        key = (ref.kind, ref.name, ref.port)
        if key in seen:
            c.error(path, f"duplicate of spec.parentRefs[{seen[key]}]")
            continue
        seen[key] = i
        parents.append(ref)
    # a parent for every port and one for a single port of the same Service overlap
    names_all_ports = {p.name for p in parents if p.port is None and p.service}
    for i, p in enumerate(parents):
        if p.port is not None and p.name in names_all_ports:
            c.error(
                index("spec.parentRefs", i),
                f"overlaps the parentRef for every port of Service {show(p.name)}",
            )
    inbound = any(not p.service for p in parents)
    if inbound and any(p.service for p in parents):
        c.error(
            "spec.parentRefs",
            "mixes Service and Server parents: a route is either outbound (Services) or "
            "inbound (Servers), not both",
        )
    hostnames: list[str] = []
    if inbound and m.get("hostnames") is not None:
        c.error("spec.hostnames", unsupported(f"hostnames on {_INBOUND}", "matches only"))
    raw_hosts = () if inbound else c.items(m.get("hostnames"), "spec.hostnames")
    if len(raw_hosts) > MAX_HOSTNAMES:
        c.error("spec.hostnames", f"must have at most {MAX_HOSTNAMES} items")
    for i, item in enumerate(raw_hosts):
        path = index("spec.hostnames", i)
        text = c.string(item, path, required=True, max_len=253)
        if text is None:
            continue
        if not _HOSTNAME.match(text):
            c.error(
                path,
                f"invalid hostname {show(text)}: lower case DNS name, optionally starting "
                "with '*.'",
            )
            continue
        hostnames.append(text)
    rules: list[HTTPRouteRule] = []
    raw_rules = c.items(m.get("rules"), "spec.rules")
    if len(raw_rules) > MAX_RULES:
        c.error("spec.rules", f"must have at most {MAX_RULES} items")
    rule_names: set[str] = set()
    for i, item in enumerate(raw_rules):
        rule = _parse_rule(c, item, index("spec.rules", i), namespace, inbound=inbound)
        if rule is None:
            continue
        if rule.name is not None:
            if rule.name in rule_names:
                c.error(
                    join(index("spec.rules", i), "name"), f"duplicate rule name {show(rule.name)}"
                )
            rule_names.add(rule.name)
        rules.append(rule)
    if present and m.get("rules") is None:
        # Gateway API default: one rule matching every request, to the parent itself
        rules.append(HTTPRouteRule(matches=(RouteMatch(path=PathMatch("PathPrefix", "/")),)))
    return HTTPRouteSpec(tuple(parents), tuple(rules), tuple(hostnames))


def _service_group(c: Checker, value: Any, path: str, *, default: str | None) -> str | None:
    if value is None:
        return default
    group = c.string(value, path, nonempty=False)
    if group is None:
        return None
    if group not in SERVICE_GROUPS:
        c.error(path, unsupported(f"group {show(group)}", 'Service, with group "" or "core"'))
        return None
    return group


def _server_group(c: Checker, value: Any, path: str) -> str | None:
    group = c.string(value, path, nonempty=False)
    if group is not None and group not in SERVER_GROUPS:
        supported = "Server, with group policy.weft.io or policy.linkerd.io"
        c.error(path, unsupported(f"group {show(group)}", supported))
        return None
    return group


def _parse_parent(c: Checker, item: Any, path: str, namespace: str) -> ParentRef | None:
    m = c.mapping(item, path, required=True)
    if m is EMPTY:  # not a mapping (reported); an empty one is parsed, so its fields are named
        return None
    c.known_fields(m, path, _PARENT_KNOWN)
    kind = m.get("kind")
    if kind == "Server":
        name = c.dns_subdomain(m.get("name"), join(path, "name"))
    else:
        name = c.dns_1035_label(m.get("name"), join(path, "name"))
    ok = name is not None
    if kind is None:
        c.error(
            join(path, "kind"),
            unsupported(
                "Gateway (the default when kind is omitted)",
                'Service, with group "" or "core": Weft routes are for the mesh',
            ),
        )
        ok = False
    elif kind not in ("Service", "Server"):
        text = c.string(kind, join(path, "kind"))
        if text is not None:
            c.error(join(path, "kind"), unsupported(text, _PARENTS))
        ok = False
    group: str | None = None
    if "group" not in m:
        if kind == "Service":
            c.error(
                join(path, "group"),
                'required for a Service parent: "" or "core" (when omitted, the Gateway API '
                "reads it as gateway.networking.k8s.io)",
            )
        elif kind == "Server":
            c.error(
                join(path, "group"),
                "required for a Server parent: policy.weft.io or policy.linkerd.io",
            )
        ok = False
    elif kind == "Server":
        group = _server_group(c, m.get("group"), join(path, "group"))
        ok = ok and group is not None
    else:
        group = _service_group(c, m.get("group"), join(path, "group"), default=None)
        ok = ok and group is not None
    raw_ns = m.get("namespace")
    if raw_ns is not None:
        ns = c.dns_label(raw_ns, join(path, "namespace"))
        if ns is not None and ns != namespace:
            c.error(
                join(path, "namespace"),
                unsupported(
                    f"a parent in another namespace ({show(ns)}: a consumer route)",
                    f"Services in the route's own namespace {show(namespace)}",
                ),
            )
            ok = False
    if m.get("sectionName") is not None:
        c.error(join(path, "sectionName"), unsupported("sectionName", "port, for a Service parent"))
        ok = False
    port = c.port(m.get("port"), join(path, "port"))
    if m.get("port") is not None and port is None:
        ok = False
    if kind == "Server" and port is not None:
        c.error(join(path, "port"), unsupported("port on a Server parent", "the Server's own port"))
        ok = False
    if not ok or name is None or group is None:
        return None
    return ParentRef(name=name, namespace=namespace, port=port, group=group, kind=str(kind))


def _parse_rule(
    c: Checker, item: Any, path: str, namespace: str, *, inbound: bool
) -> HTTPRouteRule | None:
    m = c.mapping(item, path, required=True)
    if not m and not isinstance(item, Mapping):
        return None
    for refused, message in _RULE_REFUSED.items():
        if m.get(refused) is not None:
            c.error(join(path, refused), message)
    if inbound:
        # an inbound route only matches: its requests go to the pod the Server selects
        for key in ("filters", "backendRefs", "timeouts"):
            if m.get(key) is not None:
                c.error(join(path, key), unsupported(f"{key} on {_INBOUND}", "matches only"))
        m = {k: v for k, v in m.items() if k not in ("filters", "backendRefs", "timeouts")}
    c.known_fields(m, path, _RULE_KNOWN | frozenset(_RULE_REFUSED))
    name: str | None = None
    if m.get("name") is not None:
        name = c.dns_subdomain(m.get("name"), join(path, "name"))
    matches: list[RouteMatch] = []
    mpath = join(path, "matches")
    raw_matches = c.items(m.get("matches"), mpath)
    if len(raw_matches) > MAX_MATCHES:
        c.error(mpath, f"must have at most {MAX_MATCHES} items")
    for i, raw in enumerate(raw_matches):
        match = parse_match(c, raw, index(mpath, i))
        if match is not None:
            matches.append(match)
    if not raw_matches:
        matches.append(RouteMatch(path=PathMatch("PathPrefix", "/")))
    filters, req, resp, redirect = parse_filters(c, m.get("filters"), join(path, "filters"))
    backends: list[BackendRef] = []
    bpath = join(path, "backendRefs")
    raw_backends = c.items(m.get("backendRefs"), bpath)
    if len(raw_backends) > MAX_BACKEND_REFS:
        c.error(bpath, f"must have at most {MAX_BACKEND_REFS} items")
    seen: dict[tuple[str, str, int | None], int] = {}
    for i, raw in enumerate(raw_backends):
        ref = _parse_backend(c, raw, index(bpath, i), namespace)
        if ref is None:
            continue
        bkey = (ref.namespace, ref.name, ref.port)
        if bkey in seen:
            c.error(index(bpath, i), f"duplicate of {bpath}[{seen[bkey]}]")
            continue
        seen[bkey] = i
        backends.append(ref)
    timeouts = _parse_timeouts(c, m.get("timeouts"), join(path, "timeouts"))
    return HTTPRouteRule(
        matches=tuple(matches),
        filters=filters,
        request_headers=req,
        response_headers=resp,
        redirect=redirect,
        backend_refs=tuple(backends),
        timeouts=timeouts,
        name=name,
    )


def _parse_backend(c: Checker, value: Any, path: str, namespace: str) -> BackendRef | None:
    m = c.mapping(value, path, required=True)
    if m is EMPTY:  # not a mapping (reported); an empty one is parsed, so its fields are named
        return None
    if m.get("filters") is not None:
        c.error(
            join(path, "filters"),
            unsupported("filters on a backendRef", "filters on the rule"),
        )
    c.known_fields(m, path, _BACKEND_KNOWN | {"filters"})
    ok = True
    kind = m.get("kind", "Service")
    if kind != "Service":
        text = c.string(kind, join(path, "kind"))
        if text is not None:
            c.error(join(path, "kind"), unsupported(f"backend kind {text}", "Service"))
        ok = False
    group = _service_group(c, m.get("group"), join(path, "group"), default="")
    name = c.dns_1035_label(m.get("name"), join(path, "name"))
    ns = namespace
    if m.get("namespace") is not None:
        ns = c.dns_label(m.get("namespace"), join(path, "namespace")) or namespace
    port = c.port(m.get("port"), join(path, "port"))
    weight = c.integer(m.get("weight"), join(path, "weight"), minimum=0, maximum=MAX_WEIGHT)
    bad = (m.get("port") is not None and port is None) or (
        m.get("weight") is not None and weight is None
    )
    if not ok or bad or name is None or group is None:
        return None
    weight = 1 if weight is None else weight
    return BackendRef(name=name, namespace=ns, port=port, weight=weight, group=group)


def _parse_timeouts(c: Checker, value: Any, path: str) -> RouteTimeouts:
    m = c.mapping(value, path)
    c.known_fields(m, path, frozenset({"request", "backendRequest"}))
    texts: dict[str, str | None] = {}
    seconds: dict[str, float] = {}
    for key in ("request", "backendRequest"):
        text = c.string(m.get(key), join(path, key))
        texts[key] = text
        if text is None:
            continue
        try:
            seconds[key] = gateway_duration(text)
        except ValueError as exc:
            c.error(join(path, key), str(exc))
            texts[key] = None
    req, backend = seconds.get("request"), seconds.get("backendRequest")
    if req and backend and backend > req:
        c.error(
            join(path, "backendRequest"),
            f"must not be longer than timeouts.request ({texts['request']}), "
            f"got {texts['backendRequest']}",
        )
    return RouteTimeouts(request=texts["request"], backend_request=texts["backendRequest"])


register_kind(
    KindInfo(
        "HTTPRoute",
        API_VERSION,
        True,
        "httproutes",
        (),
        HTTPRoute.from_dict,
        parse_route_status,
        LINKERD_API_VERSIONS,
    )
)
