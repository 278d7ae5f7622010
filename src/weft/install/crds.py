"""Weft's CustomResourceDefinitions: the policy kinds of ``policy.weft.io/v1beta1`` on a cluster.

``weft install --crds | kubectl apply -f -`` installs them. Each has a structural OpenAPI v3
schema that says on the API server what :mod:`weft.resources.policy` says in Weft (the fields
and their types, the enumerations, the required fields, the one-of rules as CEL validations), so
a mistake is refused by ``kubectl apply`` with the field named rather than skipped later by the
controllers; printer columns for ``kubectl get``; and the status subresource. The values come
from the same constants the parsers use, so the two cannot drift apart on an enumeration.

Not for: Gateway API's CRDs (HTTPRoute, GRPCRoute: the Gateway API project's, installed by the
cluster's owner), nor parsing a policy (:mod:`weft.resources.policy`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from weft.inbound import DEFAULT_POLICIES
from weft.resources.policy import API_VERSION, GROUP, MODES, OPERATORS, PROXY_PROTOCOLS

VERSION = API_VERSION.split("/")[1]
LABELS = {"app.kubernetes.io/part-of": "weft", "app.kubernetes.io/component": "crds"}
Schema = dict[str, Any]


def _string(**more: Any) -> Schema:
    return {"type": "string", **more}


def _array(items: Schema, **more: Any) -> Schema:
    return {"type": "array", "items": items, **more}


def _object(
    props: Mapping[str, Schema],
    required: Sequence[str] = (),
    *,
    validations: Sequence[Mapping[str, str]] = (),
) -> Schema:
    out: Schema = {"type": "object", "properties": dict(props)}
    if required:
        out["required"] = list(required)
    if validations:  # CEL rules, for what a schema alone cannot say
        out["x-kubernetes-validations"] = [dict(v) for v in validations]
    return out


def _ref(*, namespace: bool = True, name_required: bool = True) -> Schema:
    """A reference to another object (``group``, ``kind``, ``name``, ``namespace``)."""
    props = {"group": _string(), "kind": _string(minLength=1), "name": _string(minLength=1)}
    if namespace:
        props["namespace"] = _string(minLength=1)
    return _object(props, ["kind", "name"] if name_required else ["kind"])


def _selector() -> Schema:
    expression = _object(
        {
            "key": _string(minLength=1),
            "operator": _string(enum=list(OPERATORS)),
            "values": _array(_string()),
        },
        ["key", "operator"],
    )
    return _object(
        {
            "matchLabels": {"type": "object", "additionalProperties": _string()},
            "matchExpressions": _array(expression),
        }
    )


def _rate() -> Schema:
    return _object(
        {"requestsPerSecond": {"type": "number", "minimum": 0, "exclusiveMinimum": True}},
        ["requestsPerSecond"],
    )


SPECS: dict[str, Schema] = {
    "Server": _object(
        {
            "podSelector": _selector(),
            # a number (1-65535) or a container port's name
            "port": {"x-kubernetes-int-or-string": True},
            "proxyProtocol": _string(enum=list(PROXY_PROTOCOLS)),
            "accessPolicy": _string(enum=list(DEFAULT_POLICIES)),
        },
        ["podSelector", "port"],
    ),
    "AuthorizationPolicy": _object(
        {
            "targetRef": _ref(namespace=False),
            "requiredAuthenticationRefs": _array(_ref(name_required=False)),
            "mode": _string(enum=list(MODES)),
        },
        ["targetRef", "requiredAuthenticationRefs"],
    ),
    "MeshTLSAuthentication": _object(
        {
            "identities": _array(_string(minLength=1), minItems=1),
            "identityRefs": _array(_ref(name_required=False), minItems=1),
        },
        validations=[
            {
                "rule": "has(self.identities) != has(self.identityRefs)",
                "message": "set exactly one of identities and identityRefs",
            }
        ],
    ),
    "NetworkAuthentication": _object(
        {
            "networks": _array(
                _object({"cidr": _string(minLength=1), "except": _array(_string())}, ["cidr"]),
                minItems=1,
            )
        },
        ["networks"],
    ),
    "HTTPLocalRateLimitPolicy": _object(
        {
            "targetRef": _ref(namespace=False),
            "total": _rate(),
            "identity": _rate(),
            "overrides": _array(
                _object(
                    {
                        "requestsPerSecond": _rate()["properties"]["requestsPerSecond"],
                        "clientRefs": _array(_ref(name_required=False), minItems=1),
                    },
                    ["requestsPerSecond", "clientRefs"],
                )
            ),
        },
        ["targetRef"],
    ),
}

# kind -> (plural, short names, printer columns (name, type, JSON path))
NAMES: dict[str, tuple[str, tuple[str, ...], tuple[tuple[str, str, str], ...]]] = {
    "Server": (
        "servers",
        ("srv",),
        (
            ("Port", "string", ".spec.port"),
            ("Protocol", "string", ".spec.proxyProtocol"),
            ("Access", "string", ".spec.accessPolicy"),
        ),
    ),
    "AuthorizationPolicy": (
        "authorizationpolicies",
        ("authzpolicy",),
        (
            ("Target Kind", "string", ".spec.targetRef.kind"),
            ("Target", "string", ".spec.targetRef.name"),
            ("Mode", "string", ".spec.mode"),
        ),
    ),
    "MeshTLSAuthentication": (
        "meshtlsauthentications",
        ("meshtlsauthn",),
        (("Identities", "string", ".spec.identities"),),
    ),
    "NetworkAuthentication": (
        "networkauthentications",
        ("netauthn",),
        (("Networks", "string", ".spec.networks[*].cidr"),),
    ),
    "HTTPLocalRateLimitPolicy": (
        "httplocalratelimitpolicies",
        ("ratelimit",),
        (
            ("Target", "string", ".spec.targetRef.name"),
            ("Total RPS", "number", ".spec.total.requestsPerSecond"),
            ("Identity RPS", "number", ".spec.identity.requestsPerSecond"),
        ),
    ),
}


def crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition of one of Weft's kinds."""
    plural, short, columns = NAMES[kind]
    printer = [{"name": n, "type": t, "jsonPath": p} for n, t, p in columns]
    printer.append({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})
    schema = _object(
        {
            "apiVersion": _string(),
            "kind": _string(),
            "metadata": {"type": "object"},
            "spec": SPECS[kind],
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
        ["spec"],
    )
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": dict(LABELS)},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": list(short),
                "categories": ["weft", "policy"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": printer,
                }
            ],
        },
    }


def crds() -> list[dict[str, Any]]:
    """Every Weft CRD, in a fixed order."""
    return [crd(kind) for kind in NAMES]


__all__ = ["NAMES", "SPECS", "crd", "crds"]
