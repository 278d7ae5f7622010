"""Kubernetes-shaped resources: models, validation, and loading from files.

- :mod:`~weft.resources.models`: frozen, validated models of Namespace, Service, Deployment and Pod
  (their metadata in :mod:`~weft.resources.meta`, pod specs in :mod:`~weft.resources.podspec`).
- :mod:`~weft.resources.registry`: the kind registry and :func:`parse_resource`.
- :mod:`~weft.resources.httproute`: the Gateway API HTTPRoute (mesh mode: parents are Services),
  with what Weft does not support refused by name.
- :mod:`~weft.resources.annotations`: the ``retry.weft.io/*``, ``timeout.weft.io/*`` and
  ``failure-accrual.weft.io/*`` annotations of Services and routes.
- :mod:`~weft.resources.loader`: YAML/JSON files and directories, all-or-nothing.
- :mod:`~weft.resources.errors`: :class:`FieldError` (file, document, field path, message) and
  :class:`InvalidResources`.

Every kind's module is imported here, so each has registered itself
(:mod:`~weft.resources.registry`) before any part of the package is used.

Not for: storing, watching or serving resources (that is :mod:`weft.control`).
"""

# the kinds that only register themselves
from weft.resources import authn as _authn  # noqa: F401
from weft.resources import endpointslice as _endpointslice  # noqa: F401
from weft.resources import grpcroute as _grpcroute  # noqa: F401
from weft.resources import policy as _policy  # noqa: F401
from weft.resources import ratelimitpolicy as _ratelimitpolicy  # noqa: F401
from weft.resources import replicaset as _replicaset  # noqa: F401
from weft.resources.annotations import PolicyAnnotations, parse_policy_annotations
from weft.resources.errors import FieldError, InvalidResources
from weft.resources.httproute import HTTPRoute
from weft.resources.loader import Document, load_paths, load_text
from weft.resources.meta import (
    ANNOTATION_DEPLOYMENT,
    ANNOTATION_PROXY_ADMIN,
    DEFAULT_NAMESPACE,
    LABEL_POD_TEMPLATE_HASH,
)
from weft.resources.models import Deployment, Namespace, Pod, Service, selector_matches
from weft.resources.registry import (
    KINDS,
    KindInfo,
    Resource,
    parse_resource,
    parse_status,
    register_kind,
    resolve_kind,
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
    "HTTPRoute",
    "InvalidResources",
    "KindInfo",
    "Namespace",
    "Pod",
    "PolicyAnnotations",
    "Resource",
    "Service",
    "load_paths",
    "load_text",
    "parse_policy_annotations",
    "parse_resource",
    "parse_status",
    "register_kind",
    "resolve_kind",
    "selector_matches",
]
