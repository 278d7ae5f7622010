"""The ``HTTPLocalRateLimitPolicy`` kind: request rates for a Server.

``total``, per client ``identity``, and ``overrides`` for named service accounts; enforced by each
proxy for its own pod (:mod:`weft.core.ratelimit`). What the policy kinds share is in
:mod:`weft.resources.policy`. Not for: enforcing the limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from weft.resources.meta import ObjectMeta, _empty
from weft.resources.policy import (
    API_VERSION,
    CORE_GROUPS,
    LINKERD_POLICY_API_VERSION,
    POLICY_GROUPS,
    Ref,
    _document,
    _parse_ref,
    _parse_target,
    _policy_top,
    register,
)
from weft.resources.registry import _finish
from weft.resources.validate import EMPTY, Checker, index, join, show

# --------------------------------------------------------------------------------------------
# HTTPLocalRateLimitPolicy


_RATELIMIT_TARGETS: Mapping[str, tuple[str, ...]] = {"Server": POLICY_GROUPS}
_CLIENT_KINDS: Mapping[str, tuple[str, ...]] = {"ServiceAccount": CORE_GROUPS}


@dataclass(frozen=True, slots=True)
class RateLimitOverrideSpec:
    requests_per_second: float
    client_refs: tuple[Ref, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "requestsPerSecond": self.requests_per_second,
            "clientRefs": [r.to_dict() for r in self.client_refs],
        }


@dataclass(frozen=True, slots=True)
class HTTPLocalRateLimitPolicySpec:
    target_ref: Ref
    total: float | None = None
    identity: float | None = None
    overrides: tuple[RateLimitOverrideSpec, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"targetRef": self.target_ref.to_dict()}
        if self.total is not None:
            out["total"] = {"requestsPerSecond": self.total}
        if self.identity is not None:
            out["identity"] = {"requestsPerSecond": self.identity}
        if self.overrides:
            out["overrides"] = [o.to_dict() for o in self.overrides]
        return out


def _limit(c: Checker, value: Any, path: str) -> float | None:
    m = c.mapping(value, path)
    if m is EMPTY:  # absent, or not a mapping (reported)
        return None
    c.known_fields(m, path, frozenset({"requestsPerSecond"}))
    rpath = join(path, "requestsPerSecond")
    return c.positive_number(m.get("requestsPerSecond"), rpath, required=True)


@dataclass(frozen=True, slots=True)
class HTTPLocalRateLimitPolicy:
    """Request rates a Server accepts (see the module docstring)."""

    API_VERSION: ClassVar[str] = API_VERSION
    KIND: ClassVar[str] = "HTTPLocalRateLimitPolicy"
    NAMESPACED: ClassVar[bool] = True

    metadata: ObjectMeta
    spec: HTTPLocalRateLimitPolicySpec
    status: Mapping[str, Any] = field(default_factory=_empty)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> HTTPLocalRateLimitPolicy:
        c = Checker()
        top = _policy_top(c, doc, frozenset({"targetRef", "total", "identity", "overrides"}))
        m, ns = top.spec, top.namespace
        target = None
        if top.present:
            target = _parse_target(c, m.get("targetRef"), "spec.targetRef", _RATELIMIT_TARGETS, ns)
        total = _limit(c, m.get("total"), "spec.total")
        identity = _limit(c, m.get("identity"), "spec.identity")
        if total is not None and identity is not None and identity > total:
            c.error(
                "spec.identity.requestsPerSecond",
                f"must not be greater than spec.total.requestsPerSecond ({show(total)}), "
                f"got {show(identity)}",
            )
        overrides: list[RateLimitOverrideSpec] = []
        seen: dict[tuple[str, str], str] = {}
        opath = "spec.overrides"
        for i, item in enumerate(c.items(m.get("overrides"), opath)):
            ipath = index(opath, i)
            om = c.mapping(item, ipath, required=True)
            if om is EMPTY:
                continue
            c.known_fields(om, ipath, frozenset({"requestsPerSecond", "clientRefs"}))
            rpath = join(ipath, "requestsPerSecond")
            rate = c.positive_number(om.get("requestsPerSecond"), rpath, required=True)
            if rate is not None and total is not None and rate > total:
                c.error(
                    rpath,
                    f"must not be greater than spec.total.requestsPerSecond ({show(total)}), "
                    f"got {show(rate)}",
                )
            cpath = join(ipath, "clientRefs")
            raw_refs = c.items(om.get("clientRefs"), cpath, required=True)
            if isinstance(om.get("clientRefs"), list) and not raw_refs:
                c.error(cpath, "must list at least one client")
            refs: list[Ref] = []
            for j, raw in enumerate(raw_refs):
                ref = _parse_ref(c, raw, index(cpath, j), _CLIENT_KINDS, namespace=True)
                if ref is None:
                    continue
                client = (ref.namespace or ns, str(ref.name))
                if client in seen:
                    c.error(
                        index(cpath, j),
                        f"ServiceAccount {client[0]}/{client[1]} already has an override "
                        f"({seen[client]})",
                    )
                    continue
                seen[client] = index(cpath, j)
                refs.append(ref)
            if rate is not None:
                overrides.append(RateLimitOverrideSpec(rate, tuple(refs)))
        if top.present and all(m.get(k) is None for k in ("total", "identity", "overrides")):
            c.error("spec", "set at least one limit: total, identity or overrides")
        _finish(c)
        assert target is not None  # else an error was reported
        spec = HTTPLocalRateLimitPolicySpec(target, total, identity, tuple(overrides))
        return cls(top.meta, spec, top.status)

    def to_dict(self) -> dict[str, Any]:
        return _document(self.KIND, self.metadata, self.spec.to_dict(), self.status)


register(
    HTTPLocalRateLimitPolicy,
    "httplocalratelimitpolicies",
    ("ratelimit",),
    LINKERD_POLICY_API_VERSION,
)
