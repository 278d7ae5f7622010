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
control plane (:mod:`weft.control.routestatus`); :func:`parse_route_status` validates its shape.

Not for: deciding which routes apply to which service, or resolving backends (the control plane).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

from weft.policy import HeaderModifier, PathMatch, Redirect, RouteMatch, Timeouts, ValueMatch
from weft.resources.annotations import PREFIXES, parse_policy_annotations
from weft.resources.errors import InvalidResources
from weft.resources.meta import ObjectMeta, _frozen, _parse_meta
from weft.resources.registry import KindInfo, _finish, _top, register_kind
from weft.resources.validate import EMPTY, Checker, index, join, show

GROUP = "gateway.networking.k8s.io"
API_VERSION = f"{GROUP}/v1"
LINKERD_API_VERSIONS = tuple(f"policy.linkerd.io/v1beta{n}" for n in (1, 2, 3))
CONTROLLER_NAME = "weft.io/control-plane"

SUPPORTED_FILTERS = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect")
# the filter types of the Gateway API and the field holding each one's configuration
_FILTER_FIELDS = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "RequestMirror": "requestMirror",
    "ExtensionRef": "extensionRef",
    "CORS": "cors",
    "ExternalAuth": "externalAuth",
}
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
REDIRECT_CODES = (301, 302, 303, 307, 308)
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
MAX_FILTERS = 16
MAX_BACKEND_REFS = 16
MAX_HEADER_MATCHES = 16
MAX_MODIFIER_ITEMS = 16
MAX_WEIGHT = 1_000_000

_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
_HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
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
_MATCH_KNOWN = frozenset({"path", "headers", "queryParams", "method"})
_BACKEND_KNOWN = frozenset({"group", "kind", "name", "namespace", "port", "weight"})


def unsupported(feature: str, supported: str) -> str:
    """The message refusing a feature: ``X is not supported by Weft (supported: ...)``."""
    return f"{feature} is not supported by Weft (supported: {supported})"


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
        out["matches"] = [_match_dict(m) for m in self.matches]
        filters: list[dict[str, Any]] = []
        for ftype in self.filters:
            if ftype == "RequestHeaderModifier" and self.request_headers is not None:
                config = _modifier_dict(self.request_headers)
                filters.append({"type": ftype, "requestHeaderModifier": config})
            elif ftype == "ResponseHeaderModifier" and self.response_headers is not None:
                config = _modifier_dict(self.response_headers)
                filters.append({"type": ftype, "responseHeaderModifier": config})
            elif ftype == "RequestRedirect" and self.redirect is not None:
                filters.append({"type": ftype, "requestRedirect": _redirect_dict(self.redirect)})
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
        match = _parse_match(c, raw, index(mpath, i))
        if match is not None:
            matches.append(match)
    if not raw_matches:
        matches.append(RouteMatch(path=PathMatch("PathPrefix", "/")))
    filters, req, resp, redirect = _parse_filters(c, m.get("filters"), join(path, "filters"))
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


def _parse_path(c: Checker, value: Any, path: str) -> PathMatch | None:
    m = c.mapping(value, path)
    c.known_fields(m, path, frozenset({"type", "value"}))
    ptype = c.choice(
        m.get("type"),
        join(path, "type"),
        ("Exact", "PathPrefix", "RegularExpression"),
        default="PathPrefix",
    )
    vpath = join(path, "value")
    text = c.string(m.get("value"), vpath, max_len=1024)
    if m.get("value") is None:
        text = "/"
    if text is None or ptype is None:
        return None
    if ptype == "RegularExpression":
        if not _regex_ok(c, text, vpath):
            return None
    else:
        problem = _path_problem(text)
        if problem is not None:
            c.error(vpath, f"invalid path {show(text)}: {problem}")
            return None
    return PathMatch(ptype, text)


def _path_problem(text: str) -> str | None:
    if not text.startswith("/"):
        return "must be an absolute path starting with '/'"
    if "//" in text:
        return "must not contain '//'"
    for bad in ("/./", "/../", "%2f", "%2F", "#"):
        if bad in text:
            return f"must not contain {show(bad)}"
    if text.endswith(("/..", "/.")):
        return "must not end with '/..' or '/.'"
    return None


def _regex_ok(c: Checker, text: str, path: str) -> bool:
    try:
        re.compile(text)
    except re.error as exc:
        c.error(path, f"invalid regular expression {show(text)}: {exc}")
        return False
    return True


def _parse_value_matches(c: Checker, value: Any, path: str, what: str) -> tuple[ValueMatch, ...]:
    out: list[ValueMatch] = []
    raw = c.items(value, path)
    if len(raw) > MAX_HEADER_MATCHES:
        c.error(path, f"must have at most {MAX_HEADER_MATCHES} items")
    seen: set[str] = set()
    for i, item in enumerate(raw):
        ipath = index(path, i)
        m = c.mapping(item, ipath, required=True)
        if m is EMPTY:  # not a mapping (reported); an empty one is parsed, so its fields are named
            continue
        c.known_fields(m, ipath, frozenset({"type", "name", "value"}))
        mtype = c.choice(
            m.get("type"), join(ipath, "type"), ("Exact", "RegularExpression"), default="Exact"
        )
        name = _header_name(c, m.get("name"), join(ipath, "name"))
        text = c.string(m.get("value"), join(ipath, "value"), required=True, max_len=4096)
        if name is None or text is None or mtype is None:
            continue
        # header names are case-insensitive, query parameter names are not
        folded = name.lower() if what == "header" else name
        if folded in seen:
            c.error(join(ipath, "name"), f"duplicate {what} name {show(name)} in this match")
            continue
        seen.add(folded)
        if mtype == "RegularExpression" and not _regex_ok(c, text, join(ipath, "value")):
            continue
        out.append(ValueMatch(name=name, value=text, type=mtype))
    return tuple(out)


def _header_name(c: Checker, value: Any, path: str) -> str | None:
    text = c.string(value, path, required=True, max_len=256)
    if text is None:
        return None
    if not _HEADER_NAME.match(text):
        c.error(path, f"invalid header name {show(text)}: must be an HTTP token")
        return None
    return text


def _parse_match(c: Checker, value: Any, path: str) -> RouteMatch | None:
    m = c.mapping(value, path, required=True)
    if not isinstance(value, Mapping):
        return None
    c.known_fields(m, path, _MATCH_KNOWN)
    pm = _parse_path(c, m.get("path"), join(path, "path")) if "path" in m else None
    if "path" not in m:
        pm = PathMatch("PathPrefix", "/")  # the Gateway API default
    headers = _parse_value_matches(c, m.get("headers"), join(path, "headers"), "header")
    query = _parse_value_matches(c, m.get("queryParams"), join(path, "queryParams"), "query")
    method = c.choice(m.get("method"), join(path, "method"), METHODS)
    if pm is None:
        return None
    return RouteMatch(path=pm, headers=headers, query_params=query, method=method)


def _parse_modifier(c: Checker, value: Any, path: str) -> HeaderModifier | None:
    m = c.mapping(value, path, required=True)
    if not isinstance(value, Mapping):
        return None
    c.known_fields(m, path, frozenset({"set", "add", "remove"}))
    lists: dict[str, tuple[tuple[str, str], ...]] = {}
    for key in ("set", "add"):
        kpath = join(path, key)
        raw = c.items(m.get(key), kpath)
        if len(raw) > MAX_MODIFIER_ITEMS:
            c.error(kpath, f"must have at most {MAX_MODIFIER_ITEMS} items")
        pairs: list[tuple[str, str]] = []
        seen: set[str] = set()
        for i, item in enumerate(raw):
            ipath = index(kpath, i)
            im = c.mapping(item, ipath, required=True)
            if not im:
                continue
            c.known_fields(im, ipath, frozenset({"name", "value"}))
            name = _header_name(c, im.get("name"), join(ipath, "name"))
            text = c.string(im.get("value"), join(ipath, "value"), nonempty=False, max_len=4096)
            if im.get("value") is None:
                c.error(join(ipath, "value"), "required field is missing")
            if name is None or text is None:
                continue
            if name.lower() in seen:
                c.error(join(ipath, "name"), f"duplicate header {show(name)} in {key}")
                continue
            seen.add(name.lower())
            pairs.append((name, text))
        lists[key] = tuple(pairs)
    rpath = join(path, "remove")
    removed: list[str] = []
    raw_remove = c.items(m.get("remove"), rpath)
    if len(raw_remove) > MAX_MODIFIER_ITEMS:
        c.error(rpath, f"must have at most {MAX_MODIFIER_ITEMS} items")
    for i, item in enumerate(raw_remove):
        name = _header_name(c, item, index(rpath, i))
        if name is None:
            continue
        if name.lower() in {r.lower() for r in removed}:
            c.error(index(rpath, i), f"duplicate header {show(name)} in remove")
            continue
        removed.append(name)
    return HeaderModifier(set=lists["set"], add=lists["add"], remove=tuple(removed))


def _parse_redirect(c: Checker, value: Any, path: str) -> Redirect | None:
    m = c.mapping(value, path, required=True)
    if not isinstance(value, Mapping):
        return None
    c.known_fields(m, path, frozenset({"scheme", "hostname", "path", "port", "statusCode"}))
    before = len(c.errors)
    scheme = c.choice(m.get("scheme"), join(path, "scheme"), ("http", "https"))
    hostname = c.string(m.get("hostname"), join(path, "hostname"), max_len=253)
    if hostname is not None and (hostname.startswith("*.") or not _HOSTNAME.match(hostname)):
        c.error(join(path, "hostname"), f"invalid hostname {show(hostname)}: a DNS name")
    full_path: str | None = None
    if m.get("path") is not None:
        ppath = join(path, "path")
        pm = c.mapping(m.get("path"), ppath)
        c.known_fields(pm, ppath, frozenset({"type", "replaceFullPath", "replacePrefixMatch"}))
        ptype = pm.get("type")
        if ptype is None:
            c.error(join(ppath, "type"), "required field is missing")
        elif ptype == "ReplacePrefixMatch":
            c.error(join(ppath, "type"), unsupported("ReplacePrefixMatch", "ReplaceFullPath"))
        elif ptype != "ReplaceFullPath":
            c.error(join(ppath, "type"), f"must be ReplaceFullPath, got {show(ptype)}")
        else:
            if pm.get("replacePrefixMatch") is not None:
                c.error(
                    join(ppath, "replacePrefixMatch"), "must not be set with type ReplaceFullPath"
                )
            fpath = join(ppath, "replaceFullPath")
            full_path = c.string(pm.get("replaceFullPath"), fpath, required=True, max_len=1024)
            if full_path is not None:
                problem = _path_problem(full_path)
                if problem is not None:
                    c.error(fpath, f"invalid path {show(full_path)}: {problem}")
    port = c.port(m.get("port"), join(path, "port"))
    code = m.get("statusCode", 302)
    if isinstance(code, bool) or code not in REDIRECT_CODES:
        c.error(
            join(path, "statusCode"),
            f"must be one of {', '.join(map(str, REDIRECT_CODES))}, got {show(code)}",
        )
    if len(c.errors) > before:
        return None
    return Redirect(
        scheme=scheme, hostname=hostname, path=full_path, port=port, status_code=int(code)
    )


def _parse_filters(
    c: Checker, value: Any, path: str
) -> tuple[tuple[str, ...], HeaderModifier | None, HeaderModifier | None, Redirect | None]:
    order: list[str] = []
    req: HeaderModifier | None = None
    resp: HeaderModifier | None = None
    redirect: Redirect | None = None
    raw = c.items(value, path)
    if len(raw) > MAX_FILTERS:
        c.error(path, f"must have at most {MAX_FILTERS} items")
    supported = ", ".join(SUPPORTED_FILTERS)
    for i, item in enumerate(raw):
        ipath = index(path, i)
        m = c.mapping(item, ipath, required=True)
        if m is EMPTY:  # not a mapping (reported); an empty one is parsed, so its fields are named
            continue
        c.known_fields(m, ipath, frozenset({"type", *_FILTER_FIELDS.values()}))
        ftype = c.string(m.get("type"), join(ipath, "type"), required=True)
        if ftype is None:
            continue
        if ftype not in SUPPORTED_FILTERS:
            c.error(join(ipath, "type"), unsupported(ftype, supported))
            continue
        config_field = _FILTER_FIELDS[ftype]
        for other in _FILTER_FIELDS.values():
            if other != config_field and m.get(other) is not None:
                c.error(join(ipath, other), f"must not be set with type {ftype}")
        if ftype in order:
            c.error(join(ipath, "type"), f"{ftype} may appear only once in a rule's filters")
            continue
        order.append(ftype)
        cpath = join(ipath, config_field)
        if ftype == "RequestHeaderModifier":
            req = _parse_modifier(c, m.get(config_field), cpath)
        elif ftype == "ResponseHeaderModifier":
            resp = _parse_modifier(c, m.get(config_field), cpath)
        else:
            redirect = _parse_redirect(c, m.get(config_field), cpath)
    return tuple(order), req, resp, redirect


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


# --------------------------------------------------------------------------------------------
# writing back


def _match_dict(m: RouteMatch) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if m.path is not None:
        out["path"] = {"type": m.path.type, "value": m.path.value}
    if m.headers:
        out["headers"] = [{"type": h.type, "name": h.name, "value": h.value} for h in m.headers]
    if m.query_params:
        out["queryParams"] = [
            {"type": q.type, "name": q.name, "value": q.value} for q in m.query_params
        ]
    if m.method is not None:
        out["method"] = m.method
    return out


def _modifier_dict(h: HeaderModifier) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if h.set:
        out["set"] = [{"name": n, "value": v} for n, v in h.set]
    if h.add:
        out["add"] = [{"name": n, "value": v} for n, v in h.add]
    if h.remove:
        out["remove"] = list(h.remove)
    return out


def _redirect_dict(r: Redirect) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if r.scheme is not None:
        out["scheme"] = r.scheme
    if r.hostname is not None:
        out["hostname"] = r.hostname
    if r.path is not None:
        out["path"] = {"type": "ReplaceFullPath", "replaceFullPath": r.path}
    if r.port is not None:
        out["port"] = r.port
    out["statusCode"] = r.status_code
    return out


# --------------------------------------------------------------------------------------------
# status


CONDITION_STATUSES = ("True", "False", "Unknown")
_CONDITION_KNOWN = frozenset(
    {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"}
)


def parse_route_status(status: Mapping[str, Any]) -> dict[str, Any]:
    """Validate an HTTPRoute ``status`` (Gateway API ``RouteStatus``); raises InvalidResources."""
    c = Checker()
    c.known_fields(status, "status", frozenset({"parents"}))
    parents = c.items(status.get("parents"), "status.parents")
    for i, item in enumerate(parents):
        path = index("status.parents", i)
        m = c.mapping(item, path, required=True)
        if m is EMPTY:  # not a mapping (reported); an empty one is parsed, so its fields are named
            continue
        c.known_fields(m, path, frozenset({"parentRef", "controllerName", "conditions"}))
        ref = c.mapping(m.get("parentRef"), join(path, "parentRef"), required=True)
        c.string(ref.get("name"), join(path, "parentRef.name"), required=True)
        c.string(m.get("controllerName"), join(path, "controllerName"), required=True)
        for j, cond in enumerate(c.items(m.get("conditions"), join(path, "conditions"))):
            cpath = index(join(path, "conditions"), j)
            cm = c.mapping(cond, cpath, required=True)
            if not cm:
                continue
            c.known_fields(
                cm,
                cpath,
                _CONDITION_KNOWN,
            )
            c.string(cm.get("type"), join(cpath, "type"), required=True)
            if cm.get("status") is None:
                c.error(join(cpath, "status"), "required field is missing")
            else:
                c.choice(cm.get("status"), join(cpath, "status"), CONDITION_STATUSES)
            c.string(cm.get("reason"), join(cpath, "reason"), required=True)
            c.string(cm.get("message"), join(cpath, "message"), nonempty=False)
            if cm.get("observedGeneration") is not None:
                gpath = join(cpath, "observedGeneration")
                c.integer(cm.get("observedGeneration"), gpath, minimum=0)
    c.json_value(dict(status), "status")
    if c.errors:
        raise InvalidResources(c.errors)
    return dict(status)


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
