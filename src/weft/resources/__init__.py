"""Kubernetes-shaped resources: models, validation, and loading from files.

- :mod:`~weft.resources.models`: frozen, validated models of Namespace, Service, Deployment and Pod,
  the kind registry, and :func:`parse_resource`.
- :mod:`~weft.resources.loader`: YAML/JSON files and directories, all-or-nothing.
- :mod:`~weft.resources.errors`: :class:`FieldError` (file, document, field path, message) and
  :class:`InvalidResources`.

Not for: storing, watching or serving resources (that is :mod:`weft.control`).
"""

from weft.resources.errors import FieldError, InvalidResources
from weft.resources.loader import Document, load_paths, load_text
from weft.resources.models import (
    ANNOTATION_DEPLOYMENT,
    ANNOTATION_PROXY_ADMIN,
    DEFAULT_NAMESPACE,
    KINDS,
    LABEL_POD_TEMPLATE_HASH,
    Deployment,
    KindInfo,
    Namespace,
    Pod,
    Resource,
    Service,
    parse_resource,
    parse_status,
    register_kind,
    resolve_kind,
    selector_matches,
)

__all__ = [
    "ANNOTATION_DEPLOYMENT",
    "ANNOTATION_PROXY_ADMIN",
    "DEFAULT_NAMESPACE",
    "KINDS",
    "LABEL_POD_TEMPLATE_HASH",
    "Deployment",
    "Document",
    "FieldError",
    "InvalidResources",
    "KindInfo",
    "Namespace",
    "Pod",
    "Resource",
    "Service",
    "load_paths",
    "load_text",
    "parse_resource",
    "parse_status",
    "register_kind",
    "resolve_kind",
    "selector_matches",
]
