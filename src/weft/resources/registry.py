"""The kind registry: what the store, the loader, the Kubernetes API and the CLI know of each
kind (:class:`KindInfo`), and :func:`parse_resource`, which validates a document of any kind.

Each kind's module registers itself (:func:`register_kind`): :mod:`weft.resources.models`
(Namespace, Service, Deployment, Pod), :mod:`~weft.resources.replicaset`,
:mod:`~weft.resources.endpointslice`, :mod:`~weft.resources.httproute`,
:mod:`~weft.resources.grpcroute`, :mod:`~weft.resources.policy`. The package imports all of them
(``weft/resources/__init__.py``), so whoever imports any part of it sees every kind; this module
imports none of them.

Not for: any kind's fields (their modules).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from weft.resources.errors import InvalidResources
from weft.resources.meta import TOP_KNOWN, ObjectMeta
from weft.resources.validate import Checker, show


class Resource(Protocol):
    """What every kind's model offers."""

    API_VERSION: ClassVar[str]
    KIND: ClassVar[str]
    NAMESPACED: ClassVar[bool]

    @property
    def metadata(self) -> ObjectMeta: ...

    def to_dict(self) -> dict[str, Any]: ...


def _top(c: Checker, doc: Mapping[str, Any], spec_required: bool = True) -> None:
    c.known_fields(doc, "", TOP_KNOWN)
    if spec_required and doc.get("spec") is None:
        c.error("spec", "required field is missing")


def _finish(c: Checker) -> None:
    if c.errors:
        raise InvalidResources(c.errors)


@dataclass(frozen=True, slots=True)
class KindInfo:
    """How the store and the CLI handle one kind. Documents may also carry one of
    ``other_api_versions`` (another project's group for the same kind, e.g. Linkerd's); the
    store keeps every object under ``api_version``."""

    kind: str
    api_version: str
    namespaced: bool
    plural: str
    aliases: tuple[str, ...]
    parse: Callable[[Mapping[str, Any]], Resource]
    parse_status: Callable[[Mapping[str, Any]], dict[str, Any]]
    other_api_versions: tuple[str, ...] = ()

    @property
    def api_versions(self) -> tuple[str, ...]:
        return (self.api_version, *self.other_api_versions)


def _generic_status(status: Mapping[str, Any]) -> dict[str, Any]:
    c = Checker()
    c.json_value(dict(status), "status")
    _finish(c)
    return dict(status)


KINDS: dict[str, KindInfo] = {}
_ALIASES: dict[str, str] = {}


def register_kind(info: KindInfo) -> None:
    """Add a kind (later issues: routes, policy) so the store, loader and CLI accept it."""
    KINDS[info.kind] = info
    for name in (info.kind, info.kind.lower(), info.plural, *info.aliases):
        _ALIASES[name.lower()] = info.kind


def resolve_kind(name: str) -> KindInfo:
    """``pods``, ``po``, ``Pod`` -> the Pod kind. Raises ValueError naming the known kinds."""
    kind = _ALIASES.get(name.lower())
    if kind is None:
        known = ", ".join(sorted(KINDS))
        raise ValueError(f"unknown kind {name!r}; known kinds: {known}")
    return KINDS[kind]


def parse_resource(doc: Any) -> Resource:
    """Validate one document and return its model; raises InvalidResources naming every field."""
    c = Checker()
    if not isinstance(doc, Mapping):
        c.error("", f"a document must be a mapping, got {type(doc).__name__} {show(doc)}")
        raise InvalidResources(c.errors)
    kind = doc.get("kind")
    api_version = doc.get("apiVersion")
    if kind is None:
        c.error("kind", "required field is missing")
    elif not isinstance(kind, str) or kind not in KINDS:
        c.error("kind", f"unknown kind {show(kind)}; known kinds: {', '.join(sorted(KINDS))}")
    if api_version is None:
        c.error("apiVersion", "required field is missing")
    elif isinstance(kind, str) and kind in KINDS and api_version not in KINDS[kind].api_versions:
        accepted = " or ".join(show(v) for v in KINDS[kind].api_versions)
        c.error("apiVersion", f"must be {accepted} for kind {kind}, got {show(api_version)}")
    if c.errors:
        raise InvalidResources(c.errors)
    assert isinstance(kind, str)
    return KINDS[kind].parse(doc)


def parse_status(kind: str, status: Any) -> dict[str, Any]:
    """Validate a ``status`` for ``kind`` and return it normalized; raises InvalidResources."""
    if not isinstance(status, Mapping):
        c = Checker()
        c.error("status", f"must be a mapping, got {show(status)}")
        raise InvalidResources(c.errors)
    return KINDS[kind].parse_status(status)


__all__ = [
    "KINDS",
    "KindInfo",
    "Resource",
    "parse_resource",
    "parse_status",
    "register_kind",
    "resolve_kind",
]
