"""Deleting from the store as the API server deletes: graceful pods, propagation, namespaces.

:class:`Deletions` is the part of :class:`weft.control.store.Store` that deletes (a mixin: the
store's objects, clock and change recording are its own):

- :meth:`Deletions.terminate` marks an object leaving (``metadata.deletionTimestamp``; a
  Namespace's phase ``Terminating``), what a graceful delete does first;
- :meth:`Deletions.delete` deletes by reference: a Pod that a node runs gracefully, owners with
  the propagation asked for (Background, Orphan, Foreground), a Namespace with its contents.

Not for: what controllers do with a deleted owner's dependents (the local runtime's
controllers), nor the HTTP side (the APIs).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from weft.control.objects import (
    FOREGROUND,
    Deleted,
    Key,
    NotFound,
    Obj,
    on_a_node,
    rfc3339,
)
from weft.resources.errors import FieldError, InvalidResources
from weft.resources.meta import DEFAULT_GRACE_PERIOD, DEFAULT_NAMESPACE
from weft.resources.registry import KINDS
from weft.resources.validate import show


class Deletions:
    """The store's deletes (see the module docstring)."""

    _objects: dict[Key, Obj]
    _clock: Callable[[], float]

    def get(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        raise NotImplementedError

    def _record(self, type_: str, obj: Obj) -> Obj:
        raise NotImplementedError

    def _commit(self) -> None:
        raise NotImplementedError

    def _remove(self, key: Key) -> Obj:
        raise NotImplementedError

    def terminate(self, kind: str, namespace: str | None, name: str) -> Obj:
        """Mark an object as leaving (``metadata.deletionTimestamp``; a Namespace's phase
        ``Terminating``): what a graceful delete does first. Raises NotFound."""
        current = self.get(kind, namespace, name)
        if current is None:
            raise NotFound(kind, namespace or "", name)
        if current["metadata"].get("deletionTimestamp"):
            return current
        meta = {**current["metadata"], "deletionTimestamp": rfc3339(self._clock())}
        obj = {**current, "metadata": meta}
        if kind == "Namespace":
            obj["status"] = {**(current.get("status") or {}), "phase": "Terminating"}
        recorded = self._record("MODIFIED", obj)
        self._commit()
        return recorded

    def delete(
        self,
        refs: Sequence[Any],
        *,
        grace: int | None = None,
        propagation: str = "Background",
    ) -> builtins.list[Deleted]:
        """Delete the objects named by ``refs`` (``kind`` and ``metadata.name``/``namespace``);
        absent ones are reported ``not found``. Raises InvalidResources for malformed refs.

        ``propagation``, as the API server's: ``Background`` (the owner goes now, the
        controllers delete its dependents), ``Orphan`` (the dependents lose their owner
        reference and stay), ``Foreground`` (an owner with dependents stays, with
        ``deletionTimestamp`` and the ``foregroundDeletion`` finalizer, until the controllers
        have deleted them and then it; a second delete finishes it).

        A Pod that a node runs (``status.hostIP``) and that has not finished is deleted
        gracefully, as the API server does: it gets ``deletionTimestamp`` and
        ``deletionGracePeriodSeconds`` (``grace``, else its ``terminationGracePeriodSeconds``)
        and stays until its node has stopped it and deletes it with ``grace=0``."""
        errors: builtins.list[FieldError] = []
        keys: builtins.list[Key] = []
        for i, ref in enumerate(refs):
            key = self._ref_key(i, ref, errors)
            if key is not None:
                keys.append(key)
        if errors:
            raise InvalidResources(errors)
        # namespaces last, so that a file listing a namespace before its contents deletes each
        # of them by name rather than reporting them "not found" after the cascade
        order = sorted(range(len(keys)), key=lambda n: keys[n][0] == "Namespace")
        out: dict[int, Deleted] = {}
        for n in order:
            key = keys[n]
            current = self._objects.get(key)
            if current is None:
                ref = {"kind": key[0], "metadata": {"name": key[2]}}
                if key[1]:
                    ref["metadata"]["namespace"] = key[1]
                out[n] = Deleted("not found", ref)
                continue
            if key[0] == "Namespace":
                for other in sorted(self._objects):
                    if other[1] == key[2] and other[0] != "Namespace":
                        self._delete_one(other, grace)
            out[n] = Deleted("deleted", self._delete_one(key, grace, propagation))
        if any(d.action == "deleted" for d in out.values()):
            self._commit()
        return [out[n] for n in range(len(keys))]

    def _ref_key(self, i: int, ref: Any, errors: builtins.list[FieldError]) -> Key | None:
        def fail(path: str, message: str) -> None:
            errors.append(FieldError(path, message, document=i))

        if not isinstance(ref, Mapping):
            fail("", f"must be a mapping with kind and metadata.name, got {show(ref)}")
            return None
        kind = ref.get("kind")
        if not isinstance(kind, str) or kind not in KINDS:
            fail("kind", f"unknown kind {show(kind)}; known kinds: {', '.join(sorted(KINDS))}")
            return None
        meta = ref.get("metadata")
        if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
            fail("metadata.name", "required field is missing")
            return None
        name = str(meta["name"])
        if not KINDS[kind].namespaced:
            if kind == "Namespace" and name == DEFAULT_NAMESPACE:
                fail("metadata.name", 'the "default" namespace may not be deleted')
                return None
            return (kind, "", name)
        ns = meta.get("namespace") or DEFAULT_NAMESPACE
        if not isinstance(ns, str):
            fail("metadata.namespace", f"must be a string, got {show(ns)}")
            return None
        return (kind, ns, name)

    def _delete_one(self, key: Key, grace: int | None, propagation: str = "Background") -> Obj:
        current = self._objects[key]
        leaving = bool(current["metadata"].get("deletionTimestamp"))
        if propagation == "Orphan":
            self._orphan(current)
        elif propagation == "Foreground" and not leaving and self._dependents(current):
            finalizers = [*(current["metadata"].get("finalizers") or []), FOREGROUND]
            meta = {**current["metadata"], "deletionTimestamp": rfc3339(self._clock()),
                    "finalizers": finalizers}  # fmt: skip
            return self._record("MODIFIED", {**current, "metadata": meta})
        if key[0] != "Pod" or grace == 0 or not on_a_node(current):
            return self._remove(key)
        if current["metadata"].get("deletionTimestamp"):
            return current
        if grace is None:
            grace = (current.get("spec") or {}).get("terminationGracePeriodSeconds")
            grace = grace if isinstance(grace, int) else DEFAULT_GRACE_PERIOD
        meta = {
            **current["metadata"],
            "deletionTimestamp": rfc3339(self._clock()),
            "deletionGracePeriodSeconds": grace,
        }
        return self._record("MODIFIED", {**current, "metadata": meta})

    def _dependents(self, owner: Mapping[str, Any]) -> builtins.list[Key]:
        uid = owner["metadata"].get("uid")
        return [
            k
            for k, o in self._objects.items()
            if uid and any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or ())
        ]

    def _orphan(self, owner: Mapping[str, Any]) -> None:
        uid = owner["metadata"].get("uid")
        for k in self._dependents(owner):
            dependent = self._objects[k]
            meta = dict(dependent["metadata"])
            refs = [r for r in meta.pop("ownerReferences") if r.get("uid") != uid]
            if refs:
                meta["ownerReferences"] = refs
            self._record("MODIFIED", {**dependent, "metadata": meta})


__all__ = ["Deletions"]
