"""The authentication kinds of inbound policy: who a client is, by identity or by network.

- ``MeshTLSAuthentication``: client identities, as patterns (``*``, DNS-form identities with a
  leading ``*.``, or SPIFFE URIs, which are converted to DNS form) or as ``identityRefs`` to
  ServiceAccounts and Namespaces;
- ``NetworkAuthentication``: client networks (IPv4 or IPv6 CIDRs, each with ``except`` ranges
  inside it).

AuthorizationPolicies name them in ``requiredAuthenticationRefs`` (:mod:`weft.resources.policy`,
which has what the policy kinds share). Not for: deciding who is authenticated (the proxy).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from weft.inbound import Network
from weft.resources.meta import ObjectMeta, _empty
from weft.resources.policy import (
    API_VERSION,
    CORE_GROUPS,
    LINKERD_POLICY_API_VERSION,
    Ref,
    _document,
    _parse_ref,
    _policy_top,
    identity_name,
    identity_pattern,
    namespace_identities,
    register,
)
from weft.resources.registry import _finish
from weft.resources.validate import EMPTY, Checker, index, join, show

# --------------------------------------------------------------------------------------------
# MeshTLSAuthentication


_IDENTITY_REF_KINDS: Mapping[str, tuple[str, ...]] = {
    "ServiceAccount": CORE_GROUPS,
    "Namespace": CORE_GROUPS,
}


@dataclass(frozen=True, slots=True)
class MeshTLSAuthenticationSpec:
    """``identities`` as written, or ``identity_refs`` (exactly one of the two is set)."""

    identities: tuple[str, ...] = ()
    identity_refs: tuple[Ref, ...] = ()

    def patterns(self, namespace: str, trust_domain: str) -> tuple[str, ...]:
        """The DNS-form identity patterns this allows (``namespace``: the resource's own, for
        refs that name none)."""
        if self.identities:
            return tuple(identity_pattern(text) for text in self.identities)
        out: list[str] = []
        for ref in self.identity_refs:
            if ref.kind == "Namespace":
                out.append(namespace_identities(str(ref.name), trust_domain))
            elif ref.name is None:
                out.append(namespace_identities(ref.namespace or namespace, trust_domain))
            else:
                out.append(identity_name(ref.name, ref.namespace or namespace, trust_domain))
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        if self.identities:
            return {"identities": list(self.identities)}
        return {"identityRefs": [r.to_dict() for r in self.identity_refs]}


@dataclass(frozen=True, slots=True)
class MeshTLSAuthentication:
    """Clients that presented one of these mesh TLS identities (see the module docstring)."""

    API_VERSION: ClassVar[str] = API_VERSION
    KIND: ClassVar[str] = "MeshTLSAuthentication"
    NAMESPACED: ClassVar[bool] = True

    metadata: ObjectMeta
    spec: MeshTLSAuthenticationSpec
    status: Mapping[str, Any] = field(default_factory=_empty)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> MeshTLSAuthentication:
        c = Checker()
        top = _policy_top(c, doc, frozenset({"identities", "identityRefs"}))
        m = top.spec
        has_ids, has_refs = m.get("identities") is not None, m.get("identityRefs") is not None
        if has_ids and has_refs:
            c.error("spec", "set exactly one of identities and identityRefs, not both")
        elif top.present and not has_ids and not has_refs:
            c.error("spec.identities", "required field is missing: set identities or identityRefs")
        identities: list[str] = []
        for i, item in enumerate(c.items(m.get("identities"), "spec.identities")):
            path = index("spec.identities", i)
            text = c.string(item, path, required=True)
            if text is None:
                continue
            try:
                identity_pattern(text)
            except ValueError as exc:
                c.error(path, str(exc))
                continue
            identities.append(text)
        refs: list[Ref] = []
        for i, item in enumerate(c.items(m.get("identityRefs"), "spec.identityRefs")):
            ref = _parse_ref(
                c,
                item,
                index("spec.identityRefs", i),
                _IDENTITY_REF_KINDS,
                namespace=True,
                optional_name=frozenset({"ServiceAccount"}),
            )
            if ref is not None:
                refs.append(ref)
        for key in ("identities", "identityRefs"):
            if m.get(key) == []:
                c.error(join("spec", key), "must list at least one entry")
        _finish(c)
        return cls(top.meta, MeshTLSAuthenticationSpec(tuple(identities), tuple(refs)), top.status)

    def to_dict(self) -> dict[str, Any]:
        return _document(self.KIND, self.metadata, self.spec.to_dict(), self.status)


# --------------------------------------------------------------------------------------------
# NetworkAuthentication


def _network(
    c: Checker, value: Any, path: str
) -> ipaddress.IPv4Network | ipaddress.IPv6Network | (None):
    text = c.string(value, path, required=True)
    if text is None:
        return None
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        c.error(path, f"must be a CIDR such as 10.0.0.0/8 or fd00::/8, got {show(text)}: {exc}")
        return None


@dataclass(frozen=True, slots=True)
class NetworkAuthenticationSpec:
    networks: tuple[Network, ...]

    def to_dict(self) -> dict[str, Any]:
        out: list[dict[str, Any]] = []
        for n in self.networks:
            entry: dict[str, Any] = {"cidr": n.cidr}
            if n.exceptions:
                entry["except"] = list(n.exceptions)
            out.append(entry)
        return {"networks": out}


@dataclass(frozen=True, slots=True)
class NetworkAuthentication:
    """Clients whose source address is in one of these networks (see the module docstring)."""

    API_VERSION: ClassVar[str] = API_VERSION
    KIND: ClassVar[str] = "NetworkAuthentication"
    NAMESPACED: ClassVar[bool] = True

    metadata: ObjectMeta
    spec: NetworkAuthenticationSpec
    status: Mapping[str, Any] = field(default_factory=_empty)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> NetworkAuthentication:
        c = Checker()
        top = _policy_top(c, doc, frozenset({"networks"}))
        m = top.spec
        raw = c.items(m.get("networks"), "spec.networks", required=top.present)
        if isinstance(m.get("networks"), list) and not raw:
            c.error("spec.networks", "must list at least one network")
        networks: list[Network] = []
        for i, item in enumerate(raw):
            path = index("spec.networks", i)
            nm = c.mapping(item, path, required=True)
            if nm is EMPTY:
                continue
            c.known_fields(nm, path, frozenset({"cidr", "except"}))
            net = _network(c, nm.get("cidr"), join(path, "cidr"))
            carved: list[str] = []
            epath = join(path, "except")
            for j, raw_except in enumerate(c.items(nm.get("except"), epath)):
                sub = _network(c, raw_except, index(epath, j))
                if sub is None or net is None:
                    continue
                if sub.version != net.version or not sub.subnet_of(net):  # type: ignore[arg-type]
                    c.error(index(epath, j), f"{sub} must lie within the cidr {net}")
                    continue
                carved.append(str(sub))
            if net is not None:
                networks.append(Network(str(net), tuple(carved)))
        _finish(c)
        return cls(top.meta, NetworkAuthenticationSpec(tuple(networks)), top.status)

    def to_dict(self) -> dict[str, Any]:
        return _document(self.KIND, self.metadata, self.spec.to_dict(), self.status)


register(
    MeshTLSAuthentication, "meshtlsauthentications", ("meshtlsauthn",), LINKERD_POLICY_API_VERSION
)
register(NetworkAuthentication, "networkauthentications", ("netauthn",), LINKERD_POLICY_API_VERSION)
