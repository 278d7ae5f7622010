"""API discovery for the embedded Kubernetes API: what ``kubectl`` asks before anything else.

``/version``, ``/api`` (the core group's versions), ``/apis`` (every other group),
``/apis/<group>`` and the resource lists of ``/api/v1`` and ``/apis/<group>/<version>``, built
from the kinds the store knows (:data:`weft.resources.registry.KINDS`): plural, singular, kind,
namespaced, verbs, short names, and the ``status`` (and for Pods ``log``) subresources. Served
as plain JSON (the legacy form); a client that asks for aggregated discovery first falls back to
it, as it does with any server that lacks it.

:data:`BUILT_IN` names the kinds Kubernetes itself defines: they take strategic merge patches;
the others (Gateway API routes, Weft's policy kinds) are custom resources on a cluster and,
here as there, do not.

Not for: serving the resources (:mod:`weft.control.kubeapi.server`).
"""

from __future__ import annotations

from typing import Any

from weft.resources.registry import KINDS, KindInfo

# the Kubernetes minor this API follows (the rig's, and lightkube-models')
VERSION = {
    "major": "1",
    "minor": "37",
    "gitVersion": "v1.37.2-weft",
    "gitCommit": "",
    "gitTreeState": "clean",
    "buildDate": "2026-12-01T00:00:00Z",
    "goVersion": "",
    "compiler": "",
    "platform": "linux/amd64",
}
BUILT_IN = frozenset({"Namespace", "Service", "Pod", "Deployment", "ReplicaSet", "EndpointSlice"})
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def split(api_version: str) -> tuple[str, str]:
    """``("", "v1")`` for ``v1``, ``("apps", "v1")`` for ``apps/v1``."""
    group, _, version = api_version.rpartition("/")
    return group, version


def group_versions() -> dict[str, list[str]]:
    """group -> versions it serves (core is ``""``)."""
    out: dict[str, list[str]] = {}
    for info in KINDS.values():
        group, version = split(info.api_version)
        versions = out.setdefault(group, [])
        if version not in versions:
            versions.append(version)
    return out


def kinds_of(group: str, version: str) -> list[KindInfo]:
    return sorted(
        (i for i in KINDS.values() if split(i.api_version) == (group, version)),
        key=lambda i: i.plural,
    )


def by_plural(group: str, version: str, plural: str) -> KindInfo | None:
    for info in KINDS.values():
        if info.plural == plural and split(info.api_version) == (group, version):
            return info
    return None


def core_versions() -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    }


def _group(group: str, versions: list[str]) -> dict[str, Any]:
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}


def group_list() -> dict[str, Any]:
    groups = [_group(g, v) for g, v in sorted(group_versions().items()) if g]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def group(name: str) -> dict[str, Any] | None:
    versions = group_versions().get(name)
    if not name or versions is None:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name, versions)}


def resource_list(group: str, version: str) -> dict[str, Any] | None:
    infos = kinds_of(group, version)
    if not infos:
        return None
    resources: list[dict[str, Any]] = []
    for info in infos:
        resources.append(
            {
                "name": info.plural,
                "singularName": info.kind.lower(),
                "namespaced": info.namespaced,
                "kind": info.kind,
                "verbs": VERBS,
                "shortNames": list(info.aliases),
            }
        )
        resources.append(
            {
                "name": f"{info.plural}/status",
                "singularName": "",
                "namespaced": info.namespaced,
                "kind": info.kind,
                "verbs": ["get", "patch", "update"],
            }
        )
        if info.kind == "Deployment":
            resources.append(
                {
                    "name": "deployments/scale",
                    "singularName": "",
                    "namespaced": True,
                    "kind": "Scale",
                    "group": "autoscaling",
                    "version": "v1",
                    "verbs": ["get", "patch", "update"],
                }
            )
        if info.kind == "Pod":
            resources.append(
                {
                    "name": "pods/log",
                    "singularName": "",
                    "namespaced": True,
                    "kind": "Pod",
                    "verbs": ["get"],
                }
            )
    gv = f"{group}/{version}" if group else version
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def openapi_root() -> dict[str, Any]:
    """``/openapi/v3``: one document per group version."""
    paths = {}
    for group, versions in sorted(group_versions().items()):
        for version in versions:
            path = _gv_path(group, version)
            paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}"}
    return {"paths": paths}


OPENAPI_V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (payloads here are under 128 bytes)."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def openapi_v2() -> bytes:
    """``/openapi/v2``, as kubectl asks for it (gnostic's ``openapi_v2.Document`` in protobuf):
    a document with no definitions. kubectl validates a ``List``'s items against it, finds no
    schema, and leaves validation to the server, which validates every object strictly."""
    info = _field(1, b"Weft") + _field(2, VERSION["gitVersion"].encode())
    return _field(1, b"2.0") + _field(2, info) + _field(8, b"")


_FIELD_VALIDATION = {
    "name": "fieldValidation",
    "in": "query",
    "description": "Strict: unknown and duplicate fields are errors (always, here)",
    "schema": {"type": "string", "uniqueItems": True},
}


def openapi_gv(group: str, version: str) -> dict[str, Any] | None:
    """``/openapi/v3/<group version>``: its paths, with the operations that take the
    ``fieldValidation`` parameter (what ``kubectl`` looks for before it lets the server
    validate, which this server always does strictly). Schemas are open: the store validates."""
    infos = kinds_of(group, version)
    if not infos:
        return None
    paths: dict[str, Any] = {}
    base = "/" + _gv_path(group, version)
    for info in infos:
        gvk = {"group": group, "version": version, "kind": info.kind}
        scope = f"{base}/namespaces/{{namespace}}" if info.namespaced else base
        op = {
            "x-kubernetes-group-version-kind": gvk,
            "parameters": [_FIELD_VALIDATION],
            "responses": {"200": {"description": "OK"}},
        }
        paths[f"{scope}/{info.plural}"] = {"post": op, "get": op}
        paths[f"{scope}/{info.plural}/{{name}}"] = {"put": op, "patch": op, "get": op, "delete": op}
    schemas = {
        f"{group or 'core'}.{version}.{info.kind}": {
            "type": "object",
            "x-kubernetes-group-version-kind": [
                {"group": group, "version": version, "kind": info.kind}
            ],
            "x-kubernetes-preserve-unknown-fields": True,
        }
        for info in infos
    }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Weft", "version": VERSION["gitVersion"]},
        "paths": paths,
        "components": {"schemas": schemas},
    }


__all__ = [
    "BUILT_IN",
    "OPENAPI_V2_PROTOBUF",
    "VERSION",
    "by_plural",
    "core_versions",
    "group",
    "group_list",
    "group_versions",
    "kinds_of",
    "openapi_gv",
    "openapi_root",
    "openapi_v2",
    "resource_list",
    "split",
]
