"""The inbound policy kinds: who may call a pod's ports, and how often.

Five namespaced kinds, ``policy.weft.io/v1beta1``; Linkerd's manifests are accepted as they are
(``policy.linkerd.io/v1beta3`` Server, ``policy.linkerd.io/v1alpha1`` for the others) and stored
under Weft's apiVersion:

- ``Server``: a port (number, or a container port name) of the pods ``podSelector`` selects
  (``matchLabels`` and ``matchExpressions``; an empty selector selects every pod of the
  namespace), its ``proxyProtocol`` (``unknown``, ``HTTP/1``, ``HTTP/2``, ``gRPC``, ``opaque``,
  ``TLS``) and its ``accessPolicy``: the default policy for traffic no authorization allows
  (``deny`` unless set);
- ``AuthorizationPolicy``: allows clients that satisfy **every** ``requiredAuthenticationRefs``
  entry (at most one MeshTLSAuthentication, one NetworkAuthentication and one ServiceAccount) to
  reach its ``targetRef``: a Server, an HTTPRoute (an inbound route: parentRef kind Server) or
  the policy's own Namespace (every Server in it); ``mode: audit`` (a Weft addition) records what
  it would deny instead of denying;
- ``MeshTLSAuthentication``: client identities, as patterns (``*``, DNS-form identities with a
  leading ``*.``, or SPIFFE URIs, which are converted to DNS form) or as ``identityRefs`` to
  ServiceAccounts and Namespaces;
- ``NetworkAuthentication``: client networks (IPv4 or IPv6 CIDRs, each with ``except`` ranges
  inside it);
- ``HTTPLocalRateLimitPolicy``: request rates for a Server: ``total``, per client ``identity``,
  and ``overrides`` for named service accounts.

Server and AuthorizationPolicy are here, with what every policy kind shares (references, label
selectors, identities, :func:`register`); the authentication kinds are in
:mod:`weft.resources.authn`, the rate limit in :mod:`weft.resources.ratelimitpolicy`.

Each model validates its document (every problem named by its field path, as the other kinds do)
and writes it back in the Kubernetes shape with defaults filled in. Identities are DNS-form
(``<sa>.<ns>.serviceaccount.identity.<trust-domain>``): :func:`identity_name` and
:func:`namespace_identities` build them, :meth:`MeshTLSAuthenticationSpec.patterns` resolves a
MeshTLSAuthentication for a trust domain.

Not for: deciding which policy applies to which pod and port (:mod:`weft.control.inbound`), nor
enforcing it (the inbound proxy).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from weft.inbound import DEFAULT_POLICIES
from weft.resources.meta import ObjectMeta, _empty, _frozen, _parse_meta
from weft.resources.registry import KindInfo, _finish, _generic_status, _top, register_kind
from weft.resources.validate import EMPTY, Checker, index, join, show

GROUP = "policy.weft.io"
API_VERSION = f"{GROUP}/v1beta1"
LINKERD_GROUP = "policy.linkerd.io"
LINKERD_SERVER_API_VERSION = f"{LINKERD_GROUP}/v1beta3"
LINKERD_POLICY_API_VERSION = f"{LINKERD_GROUP}/v1alpha1"

POLICY_GROUPS = (GROUP, LINKERD_GROUP)
CORE_GROUPS = ("", "core")
ROUTE_GROUPS = ("gateway.networking.k8s.io", LINKERD_GROUP)

# proxyProtocol as written -> the InboundPolicy.protocol value
PROXY_PROTOCOLS: Mapping[str, str] = {
    "unknown": "unknown",
    "HTTP/1": "http1",
    "HTTP/2": "http2",
    "gRPC": "grpc",
    "opaque": "opaque",
    "TLS": "tls",
}
DEFAULT_ACCESS_POLICY = "deny"
MODES = ("enforce", "audit")
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_NAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_SPIFFE = re.compile(r"^spiffe://([^/]+)/ns/([^/]+)/sa/([^/]+)$")


# --------------------------------------------------------------------------------------------
# identities


def identity_name(service_account: str, namespace: str, trust_domain: str) -> str:
    """``web.shop.serviceaccount.identity.cluster.local``: the identity of a service account."""
    return f"{service_account}.{namespace}.serviceaccount.identity.{trust_domain}"


def namespace_identities(namespace: str, trust_domain: str) -> str:
    """The pattern of every service account's identity in ``namespace``."""
    return f"*.{namespace}.serviceaccount.identity.{trust_domain}"


def _dns_name_problem(text: str) -> str | None:
    if len(text) > 253 or not _DNS_NAME.match(text):
        return "must be a lower case DNS name (labels of alphanumerics and '-', separated by '.')"
    return None


def spiffe_identity(uri: str) -> str:
    """``spiffe://<td>/ns/<ns>/sa/<sa>`` -> ``<sa>.<ns>.serviceaccount.identity.<td>``.

    Raises ValueError for any other SPIFFE ID (Weft identities are service accounts)."""
    m = _SPIFFE.match(uri)
    if m is None:
        raise ValueError(
            f"invalid SPIFFE ID {show(uri)}: Weft identities are "
            "spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>"
        )
    trust_domain, namespace, account = m.groups()
    name = identity_name(account, namespace, trust_domain)
    problem = _dns_name_problem(name)
    if problem is not None:
        raise ValueError(f"invalid SPIFFE ID {show(uri)}: its DNS form {show(name)} {problem}")
    return name


def identity_pattern(text: str) -> str:
    """An identity pattern as written -> its DNS form (``*``, ``*.<dns>``, ``<dns>``, or a SPIFFE
    URI converted). Raises ValueError saying what is wrong."""
    if text == "*":
        return text
    if text.startswith("spiffe://"):
        return spiffe_identity(text)
    name = text[2:] if text.startswith("*.") else text
    problem = _dns_name_problem(name)
    if problem is not None:
        raise ValueError(
            f"invalid identity {show(text)}: {problem}, optionally starting with '*.'; "
            "or '*', or a SPIFFE URI"
        )
    return text


# --------------------------------------------------------------------------------------------
# shared parts


_REF_FIELDS = frozenset({"group", "kind", "name", "namespace"})


@dataclass(frozen=True, slots=True)
class Ref:
    """A reference to another object. ``group`` as written (None: implied by the kind);
    ``namespace`` None: the referring object's; ``name`` None (ServiceAccount identity refs
    only): every object of the kind in the namespace."""

    kind: str
    name: str | None
    namespace: str | None = None
    group: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.group is not None:
            out["group"] = self.group
        out["kind"] = self.kind
        if self.name is not None:
            out["name"] = self.name
        if self.namespace is not None:
            out["namespace"] = self.namespace
        return out


def _parse_ref(
    c: Checker,
    value: Any,
    path: str,
    kinds: Mapping[str, tuple[str, ...]],
    *,
    namespace: bool,
    optional_name: frozenset[str] = frozenset(),
) -> Ref | None:
    """A ref to one of ``kinds`` (kind -> its accepted groups); ``namespace``: the ref may name
    one (never for kind Namespace); kinds in ``optional_name`` may leave the name out."""
    m = c.mapping(value, path, required=True)
    if m is EMPTY:  # not a mapping (reported); an empty one is parsed, so its fields are named
        return None
    c.known_fields(m, path, _REF_FIELDS if namespace else _REF_FIELDS - {"namespace"})
    choices = ", ".join(kinds)
    kind = c.string(m.get("kind"), join(path, "kind"), required=True)
    if kind is not None and kind not in kinds:
        c.error(join(path, "kind"), f"must be one of {choices}, got {show(kind)}")
        kind = None
    group: str | None = None
    if m.get("group") is not None:
        group = c.string(m.get("group"), join(path, "group"), nonempty=False)
        if group is not None and kind is not None and group not in kinds[kind]:
            allowed = " or ".join(show(g) for g in kinds[kind])
            c.error(join(path, "group"), f"must be {allowed} for kind {kind}, got {show(group)}")
            group = None
    name: str | None = None
    npath = join(path, "name")
    if m.get("name") is None and kind in optional_name:
        pass
    elif kind == "Namespace":
        name = c.dns_label(m.get("name"), npath)
    else:
        name = c.dns_subdomain(m.get("name"), npath)
    ns: str | None = None
    if m.get("namespace") is not None:
        if kind == "Namespace":
            c.error(join(path, "namespace"), "must not be set on a Namespace reference")
        else:
            ns = c.dns_label(m.get("namespace"), join(path, "namespace"))
    if kind is None or (name is None and kind not in optional_name):
        return None
    return Ref(kind=kind, name=name, namespace=ns, group=group)


@dataclass(frozen=True, slots=True)
class _Top:
    """What every policy document has besides its spec."""

    meta: ObjectMeta
    status: Mapping[str, Any]
    spec: Mapping[str, Any]  # {} when missing or not a mapping (reported)
    present: bool  # the spec is a mapping: its required fields are reported when missing

    @property
    def namespace(self) -> str:
        return self.meta.namespace or "default"


def _policy_top(c: Checker, doc: Mapping[str, Any], known: frozenset[str]) -> _Top:
    _top(c, doc)
    meta = _parse_meta(c, doc.get("metadata"), namespaced=True, name_rule=c.dns_subdomain)
    status = c.mapping(doc.get("status"), "status")
    if status:
        c.json_value(dict(status), "status")
    spec = c.mapping(doc.get("spec"), "spec")
    c.known_fields(spec, "spec", known)
    return _Top(meta, _frozen(status), spec, isinstance(doc.get("spec"), Mapping))


def _document(
    kind: str, meta: ObjectMeta, spec: dict[str, Any], status: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": meta.to_dict(),
        "spec": spec,
        "status": dict(status),
    }


# --------------------------------------------------------------------------------------------
# Server


@dataclass(frozen=True, slots=True)
class SelectorRequirement:
    """One ``matchExpressions`` entry."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        found = self.key in labels and labels[self.key] in self.values
        return found if self.operator == "In" else not found

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "operator": self.operator}
        if self.values:
            out["values"] = list(self.values)
        return out


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A Kubernetes label selector; an empty one selects everything."""

    match_labels: Mapping[str, str] = field(default_factory=_empty)
    match_expressions: tuple[SelectorRequirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            e.matches(labels) for e in self.match_expressions
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            out["matchExpressions"] = [e.to_dict() for e in self.match_expressions]
        return out


def _parse_selector(c: Checker, value: Any, path: str) -> LabelSelector:
    m = c.mapping(value, path, required=True)
    c.known_fields(m, path, frozenset({"matchLabels", "matchExpressions"}))
    labels = c.labels(m.get("matchLabels"), join(path, "matchLabels"))
    expressions: list[SelectorRequirement] = []
    epath = join(path, "matchExpressions")
    for i, item in enumerate(c.items(m.get("matchExpressions"), epath)):
        ipath = index(epath, i)
        em = c.mapping(item, ipath, required=True)
        if em is EMPTY:
            continue
        c.known_fields(em, ipath, frozenset({"key", "operator", "values"}))
        key = c.string(em.get("key"), join(ipath, "key"), required=True)
        if key is not None and not c.qualified_key(key, join(ipath, "key")):
            key = None
        opath = join(ipath, "operator")
        if em.get("operator") is None:
            c.error(opath, f"required field is missing: one of {', '.join(OPERATORS)}")
        operator = c.choice(em.get("operator"), opath, OPERATORS)
        vpath = join(ipath, "values")
        raw_values = c.items(em.get("values"), vpath)
        values: list[str] = []
        for j, raw in enumerate(raw_values):
            text = c.label_value(raw, index(vpath, j))
            if text is not None:
                values.append(text)
        if operator in ("In", "NotIn") and not raw_values:
            c.error(vpath, f"must list at least one value for operator {operator}")
        elif operator in ("Exists", "DoesNotExist") and raw_values:
            c.error(vpath, f"must be empty for operator {operator}")
        if key is not None and operator is not None:
            expressions.append(SelectorRequirement(key, operator, tuple(values)))
    return LabelSelector(labels, tuple(expressions))


@dataclass(frozen=True, slots=True)
class ServerSpec:
    pod_selector: LabelSelector
    port: int | str  # a number, or a container port name
    proxy_protocol: str = "unknown"  # as written (a key of PROXY_PROTOCOLS)
    access_policy: str = DEFAULT_ACCESS_POLICY

    @property
    def protocol(self) -> str:
        """The ``InboundPolicy.protocol`` value: ``http1``, ``grpc``, ..."""
        return PROXY_PROTOCOLS[self.proxy_protocol]

    def to_dict(self) -> dict[str, Any]:
        return {
            "podSelector": self.pod_selector.to_dict(),
            "port": self.port,
            "proxyProtocol": self.proxy_protocol,
            "accessPolicy": self.access_policy,
        }


def _parse_server_port(c: Checker, value: Any, path: str) -> int | str | None:
    if value is None:
        c.error(path, "required field is missing: a port number or a container port name")
        return None
    if isinstance(value, str) and value.isdigit():
        return c.port(int(value), path)
    if isinstance(value, str):
        return c.port_name(value, path)
    return c.port(value, path)


_SERVER_FIELDS = frozenset(
    {"podSelector", "port", "proxyProtocol", "accessPolicy", "externalWorkloadSelector"}
)


@dataclass(frozen=True, slots=True)
class Server:
    """A port of a set of pods (see the module docstring)."""

    API_VERSION: ClassVar[str] = API_VERSION
    KIND: ClassVar[str] = "Server"
    NAMESPACED: ClassVar[bool] = True

    metadata: ObjectMeta
    spec: ServerSpec
    status: Mapping[str, Any] = field(default_factory=_empty)

    @property
    def key(self) -> str:
        return f"{self.metadata.namespace}/{self.metadata.name}"

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Server:
        c = Checker()
        top = _policy_top(c, doc, _SERVER_FIELDS)
        m = top.spec
        if m.get("externalWorkloadSelector") is not None:
            c.error(
                "spec.externalWorkloadSelector",
                "externalWorkloadSelector is not supported by Weft (supported: podSelector)",
            )
        selector, port = LabelSelector(), None
        if top.present:
            selector = _parse_selector(c, m.get("podSelector"), "spec.podSelector")
            port = _parse_server_port(c, m.get("port"), "spec.port")
        protocol = c.choice(
            m.get("proxyProtocol"), "spec.proxyProtocol", tuple(PROXY_PROTOCOLS), default="unknown"
        )
        access = c.choice(
            m.get("accessPolicy"),
            "spec.accessPolicy",
            DEFAULT_POLICIES,
            default=DEFAULT_ACCESS_POLICY,
        )
        _finish(c)
        assert port is not None  # else an error was reported
        spec = ServerSpec(selector, port, protocol or "unknown", access or DEFAULT_ACCESS_POLICY)
        return cls(top.meta, spec, top.status)

    def to_dict(self) -> dict[str, Any]:
        return _document(self.KIND, self.metadata, self.spec.to_dict(), self.status)


# --------------------------------------------------------------------------------------------
# AuthorizationPolicy


_TARGET_KINDS: Mapping[str, tuple[str, ...]] = {
    "Server": POLICY_GROUPS,
    "HTTPRoute": ROUTE_GROUPS,
    "Namespace": CORE_GROUPS,
}
_AUTHN_KINDS: Mapping[str, tuple[str, ...]] = {
    "MeshTLSAuthentication": POLICY_GROUPS,
    "NetworkAuthentication": POLICY_GROUPS,
    "ServiceAccount": CORE_GROUPS,
}
_ONE_OF_EACH = {
    "MeshTLSAuthentication": "a client must satisfy every ref; list every identity to allow in "
    "one MeshTLSAuthentication",
    "NetworkAuthentication": "a client must satisfy every ref; list every network to allow in "
    "one NetworkAuthentication",
    "ServiceAccount": "a client has one service account, so it could never satisfy two; to allow "
    "several, use a MeshTLSAuthentication with identityRefs",
}


@dataclass(frozen=True, slots=True)
class AuthorizationPolicySpec:
    target_ref: Ref
    required_authentication_refs: tuple[Ref, ...]
    mode: str = "enforce"

    def to_dict(self) -> dict[str, Any]:
        return {
            "targetRef": self.target_ref.to_dict(),
            "requiredAuthenticationRefs": [r.to_dict() for r in self.required_authentication_refs],
            "mode": self.mode,
        }


def _parse_target(
    c: Checker, value: Any, path: str, kinds: Mapping[str, tuple[str, ...]], namespace: str
) -> Ref | None:
    ref = _parse_ref(c, value, path, kinds, namespace=False)
    if ref is not None and ref.kind == "Namespace" and ref.name != namespace:
        c.error(
            join(path, "name"),
            f"must be the policy's own namespace {show(namespace)}, got {show(ref.name)}: "
            "a policy applies in its namespace only",
        )
        return None
    return ref


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy:
    """Who may reach a Server, an inbound HTTPRoute or a Namespace (see the module docstring)."""

    API_VERSION: ClassVar[str] = API_VERSION
    KIND: ClassVar[str] = "AuthorizationPolicy"
    NAMESPACED: ClassVar[bool] = True

    metadata: ObjectMeta
    spec: AuthorizationPolicySpec
    status: Mapping[str, Any] = field(default_factory=_empty)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> AuthorizationPolicy:
        c = Checker()
        top = _policy_top(c, doc, frozenset({"targetRef", "requiredAuthenticationRefs", "mode"}))
        m = top.spec
        target = None
        if top.present:
            path = "spec.targetRef"
            target = _parse_target(c, m.get("targetRef"), path, _TARGET_KINDS, top.namespace)
        rpath = "spec.requiredAuthenticationRefs"
        if top.present and m.get("requiredAuthenticationRefs") is None:
            c.error(rpath, "required field is missing (an empty list allows every client)")
        refs: list[Ref] = []
        first: dict[str, int] = {}
        for i, item in enumerate(c.items(m.get("requiredAuthenticationRefs"), rpath)):
            ref = _parse_ref(c, item, index(rpath, i), _AUTHN_KINDS, namespace=True)
            if ref is None:
                continue
            if ref.kind in first:
                c.error(
                    index(rpath, i),
                    f"at most one {ref.kind} may be required (the first is {rpath}"
                    f"[{first[ref.kind]}]): {_ONE_OF_EACH[ref.kind]}",
                )
                continue
            first[ref.kind] = i
            refs.append(ref)
        mode = c.choice(m.get("mode"), "spec.mode", MODES, default="enforce")
        _finish(c)
        assert target is not None  # else an error was reported
        spec = AuthorizationPolicySpec(target, tuple(refs), mode or "enforce")
        return cls(top.meta, spec, top.status)

    def to_dict(self) -> dict[str, Any]:
        return _document(self.KIND, self.metadata, self.spec.to_dict(), self.status)


# --------------------------------------------------------------------------------------------
# registry


def register(cls: Any, plural: str, aliases: tuple[str, ...], linkerd: str) -> None:
    register_kind(
        KindInfo(
            cls.KIND, API_VERSION, True, plural, aliases, cls.from_dict, _generic_status, (linkerd,)
        )
    )


register(Server, "servers", ("srv",), LINKERD_SERVER_API_VERSION)
register(AuthorizationPolicy, "authorizationpolicies", ("authzpolicy",), LINKERD_POLICY_API_VERSION)
