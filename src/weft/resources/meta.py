"""Object metadata of Weft's resource models: ``metadata`` parsed and validated, and what every kind
shares (default namespace, service account and grace period; the annotations the runtime, the
control plane and the proxy agree on).

Not for: any kind's ``spec`` (:mod:`weft.resources.models` and the kinds' own modules).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from weft.inbound import DEFAULT_POLICIES
from weft.resources.validate import EMPTY, Checker, join, show

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
TOP_KNOWN = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})


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
