"""The Gateway API ``GRPCRoute`` kind (``gateway.networking.k8s.io/v1``) in mesh mode.

A GRPCRoute attaches to Services through ``spec.parentRefs`` (kind ``Service``, group ``""`` or
``core``, GAMMA mesh mode, as HTTPRoutes do) and routes the gRPC calls to them: ``matches`` on the
gRPC method (``type`` ``Exact`` or ``RegularExpression``, ``service`` and/or ``method``) and on
headers; weighted ``backendRefs``; the filters ``RequestHeaderModifier`` and
``ResponseHeaderModifier``; ``hostnames``; and the ``retry.weft.io/*`` / ``timeout.weft.io/*``
annotations (GRPCRoute has no ``timeouts`` field: the annotations give them).

:meth:`GRPCRoute.from_dict` validates as the Gateway API's schema and CEL rules do (a method match
names a service or a method or both; ``Exact`` names are gRPC identifiers; regular expressions
compile) and refuses what Weft does not implement with the field path and the feature's name:
Gateway or Server parents, ``sectionName``, parents in other namespaces, the filters
``RequestMirror`` and ``ExtensionRef``, filters on backendRefs, ``sessionPersistence``.

:func:`compile_match` turns a match into the :class:`weft.policy.RouteMatch` the proxy's
:class:`~weft.core.routes.RouteTable` evaluates: a gRPC call is ``POST /<service>/<method>``, so
``service`` and ``method`` both ``Exact`` is an ``Exact`` path match, ``service`` alone a
``PathPrefix`` on ``/<service>/``, anything else a ``RegularExpression`` on the path. (So the
RouteTable's precedence, Exact over RegularExpression over PathPrefix, ranks a method-only match
above a service-only one, where the Gateway API ranks by the characters of the matching service
first.)

The status (``status.parents[]``, ``Accepted`` / ``ResolvedRefs``) is written by the control
plane like an HTTPRoute's (:mod:`weft.control.routestatus`).

Not for: deciding which routes apply to which service (:mod:`weft.control.policies`), nor the
retry conditions themselves (``RetryPolicy.grpc``, enforced by :mod:`weft.proxy.protocol.http2`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

# httproute is still initializing when models.py imports this module (to register the kind):
# its names are looked up when used, not at import time
import weft.resources.httpmatch as _match
import weft.resources.httproute as _http
from weft.policy import HeaderModifier, PathMatch, RouteMatch, ValueMatch
from weft.resources.annotations import parse_policy_annotations
from weft.resources.meta import ObjectMeta, _frozen, _parse_meta
from weft.resources.registry import KindInfo, _finish, _top
from weft.resources.registry import register_kind as _register_kind
from weft.resources.routestatus import parse_route_status
from weft.resources.validate import EMPTY, Checker, index, join, show

KIND = "GRPCRoute"
API_VERSION = "gateway.networking.k8s.io/v1"
SUPPORTED_FILTERS = ("RequestHeaderModifier", "ResponseHeaderModifier")
_FILTER_FIELDS = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestMirror": "requestMirror",
    "ExtensionRef": "extensionRef",
}
MATCH_TYPES = ("Exact", "RegularExpression")
MAX_NAME = 1024  # service and method, as the CRD limits them

# the Gateway API's CEL rules for Exact method matches
_SERVICE = re.compile(r"^\.?[a-zA-Z_][a-zA-Z_0-9]*(\.[a-zA-Z_][a-zA-Z_0-9]*)*$")
_METHOD = re.compile(r"^[A-Za-z_][A-Za-z_0-9]*$")

_SPEC_KNOWN = frozenset({"parentRefs", "hostnames", "rules"})
_RULE_KNOWN = frozenset({"name", "matches", "filters", "backendRefs"})
_RULE_REFUSED = {
    "sessionPersistence": "sessionPersistence is not supported by Weft",
    "timeouts": "timeouts is not a GRPCRoute field (use the timeout.weft.io/* annotations)",
    "retry": "retry is not a GRPCRoute field (use the retry.weft.io/* annotations)",
}
_MATCH_KNOWN = frozenset({"method", "headers"})
_METHOD_KNOWN = frozenset({"type", "service", "method"})
_SERVICE_PARENT = 'Service, with group "" or "core"'


# --------------------------------------------------------------------------------------------
# model


@dataclass(frozen=True, slots=True)
class GRPCMethodMatch:
    """``matches[].method``: at least one of ``service`` and ``method``."""

    type: str = "Exact"
    service: str | None = None
    method: str | None = None

    def path_match(self) -> PathMatch:
        """The path match of a call ``/<service>/<method>`` (see the module docstring)."""
        service, method = self.service, self.method
        if self.type == "Exact":
            if service is not None and method is not None:
                return PathMatch("Exact", f"/{service}/{method}")
            if service is not None:
                return PathMatch("PathPrefix", f"/{service}/")
            assert method is not None
            return PathMatch("RegularExpression", f"/[^/]+/{re.escape(method)}")
        s = f"(?:{service})" if service is not None else "[^/]+"
        m = f"(?:{method})" if method is not None else "[^/]+"
        return PathMatch("RegularExpression", f"/{s}/{m}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.service is not None:
            out["service"] = self.service
        if self.method is not None:
            out["method"] = self.method
        return out


@dataclass(frozen=True, slots=True)
class GRPCRouteMatch:
    """One match: all its conditions must hold (no method: any method)."""

    method: GRPCMethodMatch | None = None
    headers: tuple[ValueMatch, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.method is not None:
            out["method"] = self.method.to_dict()
        if self.headers:
            out["headers"] = [
                {"type": h.type, "name": h.name, "value": h.value} for h in self.headers
            ]
        return out


def compile_match(match: GRPCRouteMatch) -> RouteMatch:
    """The :class:`~weft.policy.RouteMatch` the proxy evaluates for ``match``."""
    path = match.method.path_match() if match.method is not None else None
    return RouteMatch(path=path, headers=match.headers)


@dataclass(frozen=True, slots=True)
class GRPCRouteRule:
    """One rule: its matches (none: every call), header filters in their order, backends."""

    matches: tuple[GRPCRouteMatch, ...] = ()
    filters: tuple[str, ...] = ()
    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    backend_refs: tuple[_http.BackendRef, ...] = ()
    name: str | None = None

    def route_matches(self) -> tuple[RouteMatch, ...]:
        """The rule's matches as the proxy evaluates them (empty: every request)."""
        return tuple(compile_match(m) for m in self.matches)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.name is not None:
            out["name"] = self.name
        if self.matches:
            out["matches"] = [m.to_dict() for m in self.matches]
        filters: list[dict[str, Any]] = []
        for ftype in self.filters:
            mod = (
                self.request_headers if ftype == "RequestHeaderModifier" else self.response_headers
            )
            if mod is not None:
                filters.append({"type": ftype, _FILTER_FIELDS[ftype]: _match.modifier_dict(mod)})
        if filters:
            out["filters"] = filters
        if self.backend_refs:
            out["backendRefs"] = [b.to_dict() for b in self.backend_refs]
        return out


@dataclass(frozen=True, slots=True)
class GRPCRouteSpec:
    parent_refs: tuple[_http.ParentRef, ...]
    rules: tuple[GRPCRouteRule, ...]
    hostnames: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"parentRefs": [p.to_dict() for p in self.parent_refs]}
        if self.hostnames:
            out["hostnames"] = list(self.hostnames)
        out["rules"] = [r.to_dict() for r in self.rules]
        return out


@dataclass(frozen=True, slots=True)
class GRPCRoute:
    """A validated GRPCRoute (see the module docstring)."""

    API_VERSION: ClassVar[str] = API_VERSION
    KIND: ClassVar[str] = KIND
    NAMESPACED: ClassVar[bool] = True

    metadata: ObjectMeta
    spec: GRPCRouteSpec
    status: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def key(self) -> str:
        """``ns/name``: the route's name in policies and in the ``route`` metric label."""
        return f"{self.metadata.namespace}/{self.metadata.name}"

    @property
    def inbound(self) -> bool:
        """Always False: GRPCRoutes attach to Services only."""
        return False

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> GRPCRoute:
        c = Checker()
        _top(c, doc)
        meta = _parse_meta(c, doc.get("metadata"), namespaced=True, name_rule=c.dns_subdomain)
        spec = _parse_spec(c, doc.get("spec"), meta.namespace or "default")
        parse_policy_annotations(meta.annotations, KIND, c)
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


def _parse_spec(c: Checker, value: Any, namespace: str) -> GRPCRouteSpec:
    present = isinstance(value, Mapping)  # a missing spec is reported once, by _top
    m = c.mapping(value, "spec")
    c.known_fields(m, "spec", _SPEC_KNOWN)
    raw_parents = c.items(m.get("parentRefs"), "spec.parentRefs", required=present)
    if not raw_parents and isinstance(m.get("parentRefs"), list):
        c.error("spec.parentRefs", "must list at least one parent: the Service the route is for")
    if len(raw_parents) > _http.MAX_PARENT_REFS:
        c.error("spec.parentRefs", f"must have at most {_http.MAX_PARENT_REFS} items")
    parents: list[_http.ParentRef] = []
    seen: dict[tuple[str, int | None], int] = {}
    for i, item in enumerate(raw_parents):
        path = index("spec.parentRefs", i)
        if isinstance(item, Mapping) and item.get("kind") == "Server":
            c.error(join(path, "kind"), _match.unsupported(f"Server on a {KIND}", _SERVICE_PARENT))
            continue
        ref = _http._parse_parent(c, item, path, namespace)
        if ref is None:
            continue
        key = (ref.name, ref.port)
        if key in seen:
            c.error(path, f"duplicate of spec.parentRefs[{seen[key]}]")
            continue
        seen[key] = i
        parents.append(ref)
    all_ports = {p.name for p in parents if p.port is None}
    for i, p in enumerate(parents):
        if p.port is not None and p.name in all_ports:
            c.error(
                index("spec.parentRefs", i),
                f"overlaps the parentRef for every port of Service {show(p.name)}",
            )
    hostnames = _parse_hostnames(c, m.get("hostnames"))
    raw_rules = c.items(m.get("rules"), "spec.rules")
    if len(raw_rules) > _http.MAX_RULES:
        c.error("spec.rules", f"must have at most {_http.MAX_RULES} items")
    rules: list[GRPCRouteRule] = []
    names: set[str] = set()
    for i, item in enumerate(raw_rules):
        rule = _parse_rule(c, item, index("spec.rules", i), namespace)
        if rule is None:
            continue
        if rule.name is not None:
            if rule.name in names:
                c.error(
                    join(index("spec.rules", i), "name"), f"duplicate rule name {show(rule.name)}"
                )
            names.add(rule.name)
        rules.append(rule)
    return GRPCRouteSpec(tuple(parents), tuple(rules), hostnames)


def _parse_hostnames(c: Checker, value: Any) -> tuple[str, ...]:
    raw = c.items(value, "spec.hostnames")
    if len(raw) > _http.MAX_HOSTNAMES:
        c.error("spec.hostnames", f"must have at most {_http.MAX_HOSTNAMES} items")
    out: list[str] = []
    for i, item in enumerate(raw):
        path = index("spec.hostnames", i)
        text = c.string(item, path, required=True, max_len=253)
        if text is None:
            continue
        if not _match._HOSTNAME.match(text):
            c.error(
                path,
                f"invalid hostname {show(text)}: lower case DNS name, optionally starting "
                "with '*.'",
            )
            continue
        out.append(text)
    return tuple(out)


def _parse_rule(c: Checker, item: Any, path: str, namespace: str) -> GRPCRouteRule | None:
    m = c.mapping(item, path, required=True)
    if m is EMPTY and not isinstance(item, Mapping):
        return None
    for refused, message in _RULE_REFUSED.items():
        if m.get(refused) is not None:
            c.error(join(path, refused), message)
    c.known_fields(m, path, _RULE_KNOWN | frozenset(_RULE_REFUSED))
    name = None
    if m.get("name") is not None:
        name = c.dns_subdomain(m.get("name"), join(path, "name"))
    mpath = join(path, "matches")
    raw_matches = c.items(m.get("matches"), mpath)
    if len(raw_matches) > _http.MAX_MATCHES:
        c.error(mpath, f"must have at most {_http.MAX_MATCHES} items")
    matches: list[GRPCRouteMatch] = []
    for i, raw in enumerate(raw_matches):
        match = _parse_match(c, raw, index(mpath, i))
        if match is not None:
            matches.append(match)
    order, req, resp = _parse_filters(c, m.get("filters"), join(path, "filters"))
    bpath = join(path, "backendRefs")
    raw_backends = c.items(m.get("backendRefs"), bpath)
    if len(raw_backends) > _http.MAX_BACKEND_REFS:
        c.error(bpath, f"must have at most {_http.MAX_BACKEND_REFS} items")
    backends: list[_http.BackendRef] = []
    seen: dict[tuple[str, str, int | None], int] = {}
    for i, raw in enumerate(raw_backends):
        ref = _http._parse_backend(c, raw, index(bpath, i), namespace)
        if ref is None:
            continue
        key = (ref.namespace, ref.name, ref.port)
        if key in seen:
            c.error(index(bpath, i), f"duplicate of {bpath}[{seen[key]}]")
            continue
        seen[key] = i
        backends.append(ref)
    return GRPCRouteRule(tuple(matches), order, req, resp, tuple(backends), name)


def _parse_match(c: Checker, value: Any, path: str) -> GRPCRouteMatch | None:
    m = c.mapping(value, path, required=True)
    if not isinstance(value, Mapping):
        return None
    c.known_fields(m, path, _MATCH_KNOWN)
    before = len(c.errors)
    method = _parse_method(c, m.get("method"), join(path, "method")) if "method" in m else None
    hpath = join(path, "headers")
    headers = _match.parse_value_matches(c, m.get("headers"), hpath, "header")
    if len(c.errors) > before:
        return None
    return GRPCRouteMatch(method=method, headers=headers)


def _parse_method(c: Checker, value: Any, path: str) -> GRPCMethodMatch | None:
    m = c.mapping(value, path, required=True)
    if not isinstance(value, Mapping):
        return None
    c.known_fields(m, path, _METHOD_KNOWN)
    mtype = c.choice(m.get("type"), join(path, "type"), MATCH_TYPES, default="Exact")
    service = c.string(m.get("service"), join(path, "service"), max_len=MAX_NAME)
    method = c.string(m.get("method"), join(path, "method"), max_len=MAX_NAME)
    if m.get("service") is None and m.get("method") is None:
        c.error(path, "one or both of service and method must be specified")
        return None
    if mtype is None or (m.get("service") is not None and service is None):
        return None
    if m.get("method") is not None and method is None:
        return None
    ok = True
    for key, text, pattern, rule in (
        ("service", service, _SERVICE, "a dot-separated gRPC service name such as pkg.Service"),
        ("method", method, _METHOD, "a gRPC method name: letters, digits and '_'"),
    ):
        if text is None:
            continue
        kpath = join(path, key)
        if mtype == "Exact" and not pattern.match(text):
            c.error(kpath, f"invalid {key} {show(text)}: must be {rule} (type Exact)")
            ok = False
        elif mtype == "RegularExpression":
            try:
                re.compile(text)
            except re.error as exc:
                c.error(kpath, f"invalid regular expression {show(text)}: {exc}")
                ok = False
    if not ok:
        return None
    if mtype == "Exact" and service is not None:
        service = service.removeprefix(".")  # ".pkg.Svc" names pkg.Svc: the path has no dot
    return GRPCMethodMatch(type=mtype, service=service, method=method)


def _parse_filters(
    c: Checker, value: Any, path: str
) -> tuple[tuple[str, ...], HeaderModifier | None, HeaderModifier | None]:
    order: list[str] = []
    mods: dict[str, HeaderModifier | None] = {}
    supported = ", ".join(SUPPORTED_FILTERS)
    for i, item in enumerate(c.items(value, path)):
        ipath = index(path, i)
        m = c.mapping(item, ipath, required=True)
        if m is EMPTY:
            continue
        c.known_fields(m, ipath, frozenset({"type", *_FILTER_FIELDS.values()}))
        ftype = c.string(m.get("type"), join(ipath, "type"), required=True)
        if ftype is None:
            continue
        if ftype not in SUPPORTED_FILTERS:
            what = ftype if ftype in _FILTER_FIELDS else f"{ftype} (not a GRPCRoute filter)"
            c.error(join(ipath, "type"), _match.unsupported(what, supported))
            continue
        config_field = _FILTER_FIELDS[ftype]
        for other in _FILTER_FIELDS.values():
            if other != config_field and m.get(other) is not None:
                c.error(join(ipath, other), f"must not be set with type {ftype}")
        if ftype in order:
            c.error(join(ipath, "type"), f"{ftype} may appear only once in a rule's filters")
            continue
        order.append(ftype)
        mods[ftype] = _match.parse_modifier(c, m.get(config_field), join(ipath, config_field))
    return (
        tuple(order),
        mods.get("RequestHeaderModifier"),
        mods.get("ResponseHeaderModifier"),
    )


def _register() -> None:
    _register_kind(
        KindInfo(
            KIND,
            API_VERSION,
            True,
            "grpcroutes",
            (),
            GRPCRoute.from_dict,
            parse_route_status,
        )
    )


_register()
