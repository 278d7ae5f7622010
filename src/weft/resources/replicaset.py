"""``apps/v1`` ReplicaSet: the validated kind, and reading an owner reference.

On a cluster a Deployment owns ReplicaSets (one per pod template, named
``<deployment>-<pod-template-hash>``), and each ReplicaSet owns its Pods; the local mesh keeps
the same objects (:mod:`weft.runtime.local.deployments`, :mod:`weft.runtime.local.replicasets`),
so ``kubectl get rs`` and ``kubectl rollout`` read what they read on a cluster.

:class:`ReplicaSet` registers the kind with the store; :func:`controller_of` and
:func:`owner_ref` are the one place that reads and writes ``metadata.ownerReferences``.

Not for: what a controller does with them (the runtimes), nor Deployments
(:mod:`weft.resources.models`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from weft.resources.meta import ObjectMeta, _empty, _frozen, _parse_meta
from weft.resources.models import _deployment_status
from weft.resources.podspec import PodTemplate, _parse_template
from weft.resources.registry import KindInfo, _finish, _top, register_kind
from weft.resources.validate import Checker


@dataclass(frozen=True, slots=True)
class ReplicaSet:
    API_VERSION: ClassVar[str] = "apps/v1"
    KIND: ClassVar[str] = "ReplicaSet"
    NAMESPACED: ClassVar[bool] = True

    metadata: ObjectMeta
    replicas: int
    selector: Mapping[str, str]
    template: PodTemplate
    status: Mapping[str, Any] = field(default_factory=_empty)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ReplicaSet:
        c = Checker()
        _top(c, doc)
        meta = _parse_meta(c, doc.get("metadata"), namespaced=True, name_rule=c.dns_subdomain)
        m = c.mapping(doc.get("spec"), "spec")
        c.known_fields(
            m,
            "spec",
            frozenset({"replicas", "selector", "template"}),
            frozenset({"minReadySeconds"}),
        )
        replicas = c.integer(m.get("replicas"), "spec.replicas", minimum=0, default=1)
        sel = c.mapping(m.get("selector"), "spec.selector", required=True)
        c.known_fields(sel, "spec.selector", frozenset({"matchLabels"}))
        selector = c.labels(sel.get("matchLabels"), "spec.selector.matchLabels")
        if not selector:
            c.error("spec.selector.matchLabels", "required field is missing")
        template = _parse_template(c, m.get("template"), "spec.template")
        for key, value in selector.items():
            if template.labels.get(key) != value:
                c.error(
                    "spec.template.metadata.labels",
                    f"must match spec.selector.matchLabels: {key}={value} is missing",
                )
                break
        status = c.mapping(doc.get("status"), "status")
        c.json_value(dict(status), "status")
        _finish(c)
        return cls(meta, 1 if replicas is None else replicas, selector, template, _frozen(status))

    def to_dict(self) -> dict[str, Any]:
        return {
            "apiVersion": self.API_VERSION,
            "kind": self.KIND,
            "metadata": self.metadata.to_dict(),
            "spec": {
                "replicas": self.replicas,
                "selector": {"matchLabels": dict(self.selector)},
                "template": self.template.to_dict(),
            },
            "status": dict(self.status),
        }


def controller_of(obj: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """``(kind, name, uid)`` of the object's controller owner reference, if it has one."""
    meta = obj.get("metadata")
    refs = meta.get("ownerReferences") if isinstance(meta, Mapping) else None
    for ref in refs if isinstance(refs, list) else ():
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            return str(ref.get("kind") or ""), str(ref.get("name") or ""), str(ref.get("uid") or "")
    return None


def owner_ref(owner: Mapping[str, Any]) -> dict[str, Any]:
    """The controller owner reference to ``owner`` (a stored object, so it has a uid)."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner.get("apiVersion", "apps/v1"),
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta.get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }


register_kind(
    KindInfo(
        "ReplicaSet",
        ReplicaSet.API_VERSION,
        True,
        "replicasets",
        ("rs",),
        ReplicaSet.from_dict,
        _deployment_status,
    )
)

__all__ = ["ReplicaSet", "controller_of", "owner_ref"]
