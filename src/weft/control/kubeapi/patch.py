"""The three patch types of the Kubernetes API, applied to an object as decoded JSON.

- ``application/merge-patch+json`` (RFC 7386): maps merge, ``null`` deletes, lists are replaced;
- ``application/json-patch+json`` (RFC 6902): through ``jsonpatch``, the maintained library;
- ``application/strategic-merge-patch+json`` (built-in kinds only, as the API server; what
  ``kubectl apply`` and ``kubectl edit`` send): a merge patch in which the lists Kubernetes marks
  ``patchStrategy: merge`` merge element by element on their merge key (containers by ``name``,
  their ports by ``containerPort``, env by ``name``, volume mounts by ``mountPath``, volumes,
  Service ports by ``port``, conditions by ``type``, owner references by ``uid``, finalizers as a
  set), and the directives ``$patch: replace|delete|merge``, ``$retainKeys``,
  ``$deleteFromPrimitiveList/<field>`` and ``$setElementOrder/<field>`` (an ordering hint: the
  merged order is the original's, then the new elements) are honoured.

Each raises :class:`PatchError` (HTTP 422/400) for a patch it cannot apply; none mutates its
input.

Not for: deciding whether the result is valid (the store validates what is written).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import jsonpatch

MERGE = "application/merge-patch+json"
JSON = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"

# (path suffix, ignoring list indices) -> the merge key of that list
_MERGE_KEYS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("containers", "ports"), "containerPort"),
    (("initContainers", "ports"), "containerPort"),
    (("containers", "env"), "name"),
    (("initContainers", "env"), "name"),
    (("containers", "volumeMounts"), "mountPath"),
    (("initContainers", "volumeMounts"), "mountPath"),
    (("containers",), "name"),
    (("initContainers",), "name"),
    (("ephemeralContainers",), "name"),
    (("spec", "volumes"), "name"),
    (("spec", "imagePullSecrets"), "name"),
    (("spec", "hostAliases"), "ip"),
    (("spec", "topologySpreadConstraints"), "topologyKey"),
    (("status", "conditions"), "type"),
    (("metadata", "ownerReferences"), "uid"),
)
_PRIMITIVE_SETS = (("metadata", "finalizers"),)
_SERVICE_PORTS = ("spec", "ports")


class PatchError(ValueError):
    """A patch that cannot be applied; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def json_patch(target: Any, patch: Any) -> Any:
    """RFC 6902."""
    if not isinstance(patch, list):
        raise PatchError("a JSON patch must be a list of operations", 400)
    try:
        return jsonpatch.JsonPatch(patch).apply(copy.deepcopy(target))
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
        raise PatchError(f"the JSON patch does not apply: {e}") from None
    except (TypeError, KeyError, IndexError, AttributeError) as e:
        raise PatchError(f"malformed JSON patch: {e}", 400) from None


def _merge_key(kind: str, path: tuple[str, ...]) -> str | None:
    if kind == "Service" and path == _SERVICE_PORTS:
        return "port"
    for suffix, key in _MERGE_KEYS:
        if path[-len(suffix) :] == suffix:
            return key
    return None


def strategic_merge_patch(kind: str, target: Any, patch: Any) -> Any:
    """A strategic merge patch of an object of built-in ``kind``."""
    if not isinstance(patch, Mapping):
        raise PatchError("a strategic merge patch must be an object", 400)
    return _smp_map(kind, target if isinstance(target, Mapping) else {}, patch, ())


def _smp_map(
    kind: str, orig: Mapping[str, Any], patch: Mapping[str, Any], path: tuple[str, ...]
) -> dict[str, Any] | None:
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive not in (None, "merge"):
        raise PatchError(f"unknown $patch directive {directive!r} at {'.'.join(path) or '.'}")
    out = dict(orig)
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.partition("/")[2]
            if isinstance(value, list) and isinstance(out.get(field), list):
                out[field] = [v for v in out[field] if v not in value]
            continue
        if value is None:
            out.pop(key, None)
            continue
        here = (*path, key)
        current = out.get(key)
        if isinstance(value, Mapping):
            merged = _smp_map(kind, current if isinstance(current, Mapping) else {}, value, here)
            if merged is None:
                out.pop(key, None)
            else:
                out[key] = merged
        elif isinstance(value, list):
            out[key] = _smp_list(kind, current if isinstance(current, list) else [], value, here)
        else:
            out[key] = value
    if isinstance(retain, list):
        out = {k: v for k, v in out.items() if k in retain}
    return out


def _smp_list(kind: str, orig: list[Any], patch: list[Any], path: tuple[str, ...]) -> list[Any]:
    if any(isinstance(e, Mapping) and e.get("$patch") == "replace" for e in patch):
        return [
            copy.deepcopy(e)
            for e in patch
            if not (isinstance(e, Mapping) and e.get("$patch") == "replace")
        ]
    if path[-2:] in _PRIMITIVE_SETS or path in _PRIMITIVE_SETS:
        return list(orig) + [v for v in patch if v not in orig]
    key = _merge_key(kind, path)
    if key is None:
        return copy.deepcopy(patch)
    out = [copy.deepcopy(e) for e in orig]
    for element in patch:
        if not isinstance(element, Mapping) or key not in element:
            raise PatchError(f"{'.'.join(path)}: each element needs its merge key {key!r}")
        at = next(
            (i for i, e in enumerate(out) if isinstance(e, Mapping) and e.get(key) == element[key]),
            None,
        )
        if element.get("$patch") == "delete":
            if at is not None:
                del out[at]
            continue
        if at is None:
            merged = _smp_map(kind, {}, element, path)
            if merged is not None:
                out.append(merged)
        else:
            merged = _smp_map(kind, out[at], element, path)
            if merged is None:
                del out[at]
            else:
                out[at] = merged
    return out


__all__ = [
    "APPLY",
    "JSON",
    "MERGE",
    "STRATEGIC",
    "PatchError",
    "json_patch",
    "merge_patch",
    "strategic_merge_patch",
]
