"""The store's vocabulary: keys, limits, the outcomes of writes, and the errors they raise.

Shared by the store (:mod:`weft.control.store`, which re-exports them) and its callers (the APIs
answer each error with its HTTP status).

Not for: storing anything.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Key = tuple[str, str, str]
Obj = dict[str, Any]

MAX_OBJECT_BYTES = 1536 * 1024  # the Kubernetes API server's limit for one object (etcd's)
FOREGROUND = "foregroundDeletion"  # the finalizer of an owner deleted in the foreground
PROPAGATIONS = ("Background", "Foreground", "Orphan")
MAX_DOCUMENTS = 1000  # per apply: a bigger batch would hold the API up for seconds


class NotFound(LookupError):
    def __init__(self, kind: str, namespace: str, name: str) -> None:
        self.kind, self.namespace, self.name = kind, namespace, name
        where = f"{namespace}/{name}" if namespace else name
        super().__init__(f"{kind} {where} not found")


class Expired(Exception):
    """A watch asked for a resourceVersion the store can no longer replay from (HTTP 410)."""


class AlreadyExists(Exception):
    """A create of an object that exists (HTTP 409)."""

    def __init__(self, kind: str, namespace: str, name: str) -> None:
        self.kind, self.namespace, self.name = kind, namespace, name
        where = f"{namespace}/{name}" if namespace else name
        super().__init__(f"{kind} {where} already exists")


class Conflict(Exception):
    """A write based on an older resourceVersion of the object (HTTP 409): read it again, then
    write."""


@dataclass(frozen=True, slots=True)
class Applied:
    """The outcome of one applied document: ``created``, ``configured`` or ``unchanged``."""

    action: str
    object: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Deleted:
    """The outcome of one delete: ``deleted`` or ``not found``; ``object`` is the reference or
    the last state of the deleted object."""

    action: str
    object: Mapping[str, Any]


def on_a_node(pod: Mapping[str, Any]) -> bool:
    """A node has started the pod and it has not finished: its deletion is graceful."""
    status = pod.get("status") or {}
    return bool(status.get("hostIP")) and status.get("phase") not in ("Succeeded", "Failed")


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj["metadata"]
    return (str(obj["kind"]), str(meta.get("namespace") or ""), str(meta["name"]))


def size_of(doc: Any) -> int:
    """The JSON size of a document (0 when it is not JSON at all: validation says why)."""
    try:
        return len(json.dumps(doc, separators=(",", ":")))
    except (TypeError, ValueError):
        return 0


def rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def same_but_version(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal apart from the resourceVersion."""

    def strip(o: Mapping[str, Any]) -> dict[str, Any]:
        meta = {k: v for k, v in o["metadata"].items() if k != "resourceVersion"}
        return {**o, "metadata": meta}

    return strip(a) == strip(b)


__all__ = [
    "FOREGROUND",
    "MAX_DOCUMENTS",
    "MAX_OBJECT_BYTES",
    "PROPAGATIONS",
    "AlreadyExists",
    "Applied",
    "Conflict",
    "Deleted",
    "Expired",
    "Key",
    "NotFound",
    "Obj",
    "key_of",
    "on_a_node",
    "rfc3339",
    "same_but_version",
    "size_of",
]
