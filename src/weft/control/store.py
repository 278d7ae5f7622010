"""The resource store: validated objects, a global resourceVersion, watches, and snapshots.

Synchronous and free of I/O: the API server (an asyncio shell) calls :meth:`Store.apply`,
:meth:`Store.delete`, :meth:`Store.put_status`, reads with :meth:`Store.get`/:meth:`Store.list`, and
streams :class:`Watch` queues; persistence is a commit hook (:mod:`weft.control.persist`). The clock
and the uid source are injected.

Semantics (those of the Kubernetes API server, reduced to what Weft needs):

- Objects are Kubernetes-shaped dicts, keyed by kind, namespace (``""`` for cluster-scoped kinds)
  and name. Stored dicts are never mutated in place; callers must treat them as read-only.
- ``resourceVersion`` is one global counter; every change (create, update, status, delete) takes
  the next value and is one event. Applying an identical document changes nothing ("unchanged").
- ``apply`` is all-or-nothing: every document is validated, namespaces must exist (or be created
  by the same batch), Service cluster IPs are checked or allocated, and only then is anything
  changed. ``status`` in an applied document is taken only when the object is created.
- ``metadata.generation`` starts at 1 and grows when ``spec`` changes.
- A Service keeps its ``spec.clusterIP`` for its whole life, across updates and restarts.
- Deleting a Namespace deletes every object in it. A Pod that a node runs is deleted gracefully
  (:meth:`Store.delete`): its node drains it, stops it, and deletes it for good.
- A watch starts with the current objects as ``ADDED`` events (or, from a given resourceVersion,
  the recorded events after it), then a ``BOOKMARK``, then every change in order. Watch queues are
  bounded: a watcher that falls behind is closed (it re-watches), never waited on.

Not for: networking, the destination view (:mod:`weft.control.destinations`), or metrics.
"""

from __future__ import annotations

import builtins
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from weft.control.deletion import Deletions
from weft.control.events import Event, Watch, bookmark
from weft.control.ipam import RangeFull, ServiceIPAllocator
from weft.control.objects import (
    MAX_DOCUMENTS,
    MAX_OBJECT_BYTES,
    PROPAGATIONS,
    AlreadyExists,
    Applied,
    Conflict,
    Deleted,
    Expired,
    Key,
    NotFound,
    Obj,
    key_of,
    rfc3339,
    same_but_version,
    size_of,
)
from weft.resources.errors import FieldError, InvalidResources
from weft.resources.meta import DEFAULT_NAMESPACE
from weft.resources.registry import KINDS, parse_resource, parse_status
from weft.resources.validate import show

SNAPSHOT_VERSION = 1


class Store(Deletions):
    """Resources by kind/namespace/name with watches; see the module docstring for semantics."""

    def __init__(
        self,
        *,
        service_cidr: str = "10.96.0.0/16",
        clock: Callable[[], float] = time.time,
        uid: Callable[[], str] = lambda: str(uuid.uuid4()),
        history: int = 4096,
        watch_limit: int = 10_000,
        on_commit: Callable[[Store], None] | None = None,
    ) -> None:
        self.ips = ServiceIPAllocator(service_cidr)
        self._clock = clock
        self._uid = uid
        self._objects: dict[Key, Obj] = {}
        self._rv = 0
        self._history: deque[Event] = deque(maxlen=history)
        self._replay_floor = 0
        self._watches: builtins.list[Watch] = []
        self._listeners: builtins.list[Callable[[Event], None]] = []
        self.watch_limit = watch_limit
        self.on_commit = on_commit
        # what changed since the last take_changes(): key -> object, or None when deleted
        self._changes: dict[Key, Obj | None] = {}
        self._ensure_default_namespace()

    # -- reading ---------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    def get(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        info = KINDS.get(kind)
        if info is None:
            return None
        ns = (namespace or DEFAULT_NAMESPACE) if info.namespaced else ""
        return self._objects.get((kind, ns, name))

    def list(self, kind: str, namespace: str | None = None) -> builtins.list[Obj]:
        """Objects of ``kind`` (in ``namespace``, or all), ordered by namespace and name."""
        keys = sorted(
            k for k in self._objects if k[0] == kind and (namespace is None or k[1] == namespace)
        )
        return [self._objects[k] for k in keys]

    def __len__(self) -> int:
        return len(self._objects)

    def __repr__(self) -> str:
        return (
            f"<Store objects={len(self._objects)} rv={self._rv} watches={len(self._watches)} "
            f"ips={len(self.ips)}>"
        )

    # -- writing -----------------------------------------------------------------------------

    def apply(
        self, docs: Sequence[Any], *, source: str | None = None, mode: str = "apply"
    ) -> builtins.list[Applied]:
        """Create or update every document, or none. Raises InvalidResources naming document
        index (and ``source``), field path and value of every problem.

        ``mode`` ``create``: each object must not exist (:class:`AlreadyExists`); ``replace``:
        each must exist (:class:`NotFound`) and, when the document carries a
        ``metadata.resourceVersion``, be at that version (:class:`Conflict`)."""
        errors: builtins.list[FieldError] = []
        parsed: builtins.list[tuple[int, Obj]] = []
        if len(docs) > MAX_DOCUMENTS:
            raise InvalidResources(
                [
                    FieldError(
                        "",
                        f"{len(docs)} documents in one request; at most {MAX_DOCUMENTS}: "
                        "apply them in parts",
                        source=source,
                    )
                ]
            )
        for i, doc in enumerate(docs):
            size = size_of(doc)
            if size > MAX_OBJECT_BYTES:
                errors.append(
                    FieldError(
                        "",
                        f"the object is {size} bytes of JSON; at most {MAX_OBJECT_BYTES}",
                        document=i,
                        source=source,
                    )
                )
                continue
            try:
                resource = parse_resource(doc)
            except InvalidResources as exc:
                errors.extend(e.located(document=i, source=source) for e in exc.errors)
                continue
            obj = resource.to_dict()
            if not isinstance(doc, Mapping) or "status" not in doc:
                obj.pop("status", None)
            parsed.append((i, obj))

        def fail(i: int, path: str, message: str) -> None:
            errors.append(FieldError(path, message, document=i, source=source))

        seen: dict[Key, int] = {}
        batch_namespaces = {o["metadata"]["name"] for _, o in parsed if o["kind"] == "Namespace"}
        planned_ips: set[str] = set()
        ip_plan: dict[int, str] = {}
        for i, obj in parsed:
            key = key_of(obj)
            self._check_mode(mode, key, docs[i])
            if key in seen:
                fail(i, "metadata.name", f"duplicate of document {seen[key] + 1} in this request")
                continue
            seen[key] = i
            ns = key[1]
            namespace = self._objects.get(("Namespace", "", ns)) if ns else None
            if ns and (ns not in batch_namespaces and namespace is None):
                fail(i, "metadata.namespace", f"namespace {show(ns)} does not exist")
            elif (
                namespace is not None
                and namespace["metadata"].get("deletionTimestamp")
                and key not in self._objects
            ):
                fail(
                    i,
                    "metadata.namespace",
                    f"unable to create new content in namespace {ns} because it is being "
                    "terminated",
                )
            if obj["kind"] == "Service":
                ip = self._plan_cluster_ip(i, obj, planned_ips, fail)
                if ip is not None:
                    ip_plan[i] = ip
                    planned_ips.add(ip)
        if errors:
            raise InvalidResources(errors)

        results: builtins.list[Applied] = []
        changed = False
        for i, obj in parsed:
            if obj["kind"] == "Service":
                obj["spec"]["clusterIP"] = ip_plan[i]
            applied = self._put(obj)
            changed = changed or applied.action != "unchanged"
            results.append(applied)
        if changed:
            self._commit()
        return results

    def _check_mode(self, mode: str, key: Key, doc: Any) -> None:
        current = self._objects.get(key)
        if mode == "create" and current is not None:
            raise AlreadyExists(*key)
        if mode == "replace":
            if current is None:
                raise NotFound(*key)
            wanted = (doc.get("metadata") or {}).get("resourceVersion")
            have = current["metadata"].get("resourceVersion")
            if wanted not in (None, "") and str(wanted) != have:
                raise Conflict(
                    f'Operation cannot be fulfilled on {key[0]} "{key[2]}": the object has been '
                    "modified; please apply your changes to the latest version and try again"
                )

    def _plan_cluster_ip(
        self, i: int, obj: Obj, planned: set[str], fail: Callable[[int, str, str], None]
    ) -> str | None:
        current = self._objects.get(key_of(obj))
        wanted = obj["spec"].get("clusterIP")
        if current is not None:
            have = current["spec"].get("clusterIP")
            if wanted is not None and wanted != have:
                fail(
                    i, "spec.clusterIP", f"field is immutable: is {show(have)}, got {show(wanted)}"
                )
                return None
            return str(have)
        if wanted is not None:
            if not self.ips.usable(wanted):
                fail(
                    i,
                    "spec.clusterIP",
                    f"{show(wanted)} is not a usable address of the service range {self.ips.cidr}",
                )
                return None
            if self.ips.taken(wanted) or wanted in planned:
                fail(i, "spec.clusterIP", f"{show(wanted)} is already allocated")
                return None
            return str(wanted)
        try:
            return self.ips.next_free(planned)
        except RangeFull as exc:
            fail(i, "spec.clusterIP", str(exc))
            return None

    def _put(self, obj: Obj) -> Applied:
        key = key_of(obj)
        current = self._objects.get(key)
        meta = obj["metadata"]
        if current is None:
            meta["uid"] = self._uid()
            meta["creationTimestamp"] = rfc3339(self._clock())
            meta["generation"] = 1
            if "status" not in obj:
                obj["status"] = self._default_status(obj["kind"])
            if obj["kind"] == "Service":
                self.ips.reserve(obj["spec"]["clusterIP"])
            return Applied("created", self._record("ADDED", obj))
        cmeta = current["metadata"]
        meta["uid"] = cmeta["uid"]
        meta["creationTimestamp"] = cmeta["creationTimestamp"]
        if cmeta.get("deletionTimestamp"):  # leaving stays leaving, whatever the update says
            meta["deletionTimestamp"] = cmeta["deletionTimestamp"]
        same_spec = obj.get("spec") == current.get("spec")
        meta["generation"] = cmeta.get("generation", 1) + (0 if same_spec else 1)
        obj["status"] = current.get("status", {})
        meta["resourceVersion"] = cmeta.get("resourceVersion")
        if same_but_version(obj, current):
            return Applied("unchanged", current)
        return Applied("configured", self._record("MODIFIED", obj))

    @staticmethod
    def _default_status(kind: str) -> dict[str, Any]:
        return parse_status(kind, {}) if kind == "Pod" else {}

    def put_status(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        status: Any,
        *,
        resource_version: str | None = None,
    ) -> Obj:
        """Replace an object's ``status`` (when at ``resource_version``, if given). Raises
        NotFound, Conflict or InvalidResources."""
        if kind not in KINDS:
            raise NotFound(kind, namespace or "", name)
        current = self.get(kind, namespace, name)
        if current is None:
            ns = (namespace or DEFAULT_NAMESPACE) if KINDS[kind].namespaced else ""
            raise NotFound(kind, ns, name)
        if resource_version and resource_version != current["metadata"].get("resourceVersion"):
            raise Conflict(
                f'Operation cannot be fulfilled on {kind} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again"
            )
        new_status = parse_status(kind, status)
        if new_status == current.get("status"):
            return current
        obj = self._record("MODIFIED", {**current, "status": new_status})
        self._commit()
        return obj

    def _remove(self, key: Key) -> Obj:
        current = self._objects[key]
        if key[0] == "Service" and current["spec"].get("clusterIP"):
            self.ips.release(current["spec"]["clusterIP"])
        return self._record("DELETED", current)

    def _record(self, type_: str, obj: Obj) -> Obj:
        """Store (or drop) ``obj`` under the next resourceVersion, tell watchers; the stored
        object."""
        self._rv += 1
        meta = dict(obj["metadata"])
        meta["resourceVersion"] = str(self._rv)
        obj = {**obj, "metadata": meta}
        key = key_of(obj)
        if type_ == "DELETED":
            old = self._objects.pop(key, None)
            self._changes[key] = None
        else:
            old = self._objects.get(key)
            self._objects[key] = obj
            self._changes[key] = obj
        event = Event(type_, obj, self._rv, old)
        if len(self._history) == self._history.maxlen:
            self._replay_floor = self._history[0].resource_version
        self._history.append(event)
        for w in list(self._watches):
            if w.wants(event):
                w.push(event)
        for listener in list(self._listeners):
            listener(event)
        return obj

    def _commit(self) -> None:
        if self.on_commit is not None:
            self.on_commit(self)

    def _ensure_default_namespace(self) -> None:
        if ("Namespace", "", DEFAULT_NAMESPACE) not in self._objects:
            ns = parse_resource(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": DEFAULT_NAMESPACE}}
            ).to_dict()
            self._put(ns)

    # -- watching ----------------------------------------------------------------------------

    def watch(
        self, kinds: Collection[str] | None = None, resource_version: int | None = None
    ) -> Watch:
        """A watch of ``kinds`` (all when None). Without ``resource_version``: the current
        objects as ADDED, a BOOKMARK, then changes. With one: the recorded events after it, a
        BOOKMARK, then changes; raises Expired when those events are no longer known."""
        wanted = frozenset(kinds) if kinds else None
        if wanted is not None:
            unknown = sorted(k for k in wanted if k not in KINDS)
            if unknown:
                raise ValueError(
                    f"unknown kind {unknown[0]!r}; known kinds: {', '.join(sorted(KINDS))}"
                )
        initial: builtins.list[Event]
        if resource_version is None:
            objs = [o for k, o in self._objects.items() if wanted is None or k[0] in wanted]
            objs.sort(key=lambda o: int(o["metadata"]["resourceVersion"]))
            initial = [Event("ADDED", o, int(o["metadata"]["resourceVersion"])) for o in objs]
        else:
            if resource_version > self._rv or resource_version < self._replay_floor:
                raise Expired(
                    f"resourceVersion {resource_version} is too old or unknown (this store can "
                    f"replay from {self._replay_floor} to {self._rv}); watch without it to "
                    "start from the current state"
                )
            initial = [
                e
                for e in self._history
                if e.resource_version > resource_version and (wanted is None or e.kind in wanted)
            ]
        initial.append(bookmark(self._rv))
        w = Watch(self._drop_watch, wanted, max(self.watch_limit, len(initial) + 1), initial)
        self._watches.append(w)
        return w

    def _drop_watch(self, w: Watch) -> None:
        if w in self._watches:
            self._watches.remove(w)

    def subscribe(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``listener`` synchronously on every change (it must not block)."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    # -- persistence -------------------------------------------------------------------------

    def take_changes(self) -> dict[Key, Obj | None]:
        """What changed since the last call (key -> the object now, or None when deleted):
        what a commit hook writes."""
        changes, self._changes = self._changes, {}
        return changes

    def return_changes(self, changes: Mapping[Key, Obj | None]) -> None:
        """Give back changes a commit hook could not write: the next take has them (the newer
        change of a key wins)."""
        self._changes = {**changes, **self._changes}

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to restore this store: a JSON-ready dict."""
        return {
            "version": SNAPSHOT_VERSION,
            "resourceVersion": self._rv,
            "objects": [self._objects[k] for k in sorted(self._objects)],
        }

    def restore(self, snapshot: Mapping[str, Any]) -> builtins.list[str]:
        """Replace the contents with a snapshot (at start, before any watch). Objects that no
        longer validate are skipped; returns a warning for each one skipped or adjusted."""
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(
                f"unsupported state snapshot version {snapshot.get('version')!r} "
                f"(expected {SNAPSHOT_VERSION})"
            )
        rv = snapshot.get("resourceVersion")
        objects = snapshot.get("objects")
        if not isinstance(rv, int) or not isinstance(objects, list):
            raise ValueError(
                "state snapshot needs an integer resourceVersion and a list of objects"
            )
        warnings: builtins.list[str] = []
        self._objects.clear()
        self.ips = ServiceIPAllocator(self.ips.cidr)
        for raw in objects:
            try:
                parse_resource(raw)
                key = key_of(raw)
            except (InvalidResources, KeyError, TypeError) as exc:
                warnings.append(f"skipped an object that no longer validates: {exc}")
                continue
            obj: Obj = dict(raw)
            if key[0] == "Service":
                ip = obj["spec"].get("clusterIP")
                if not ip or not self.ips.reserve(ip):
                    warnings.append(
                        f"Service {key[1]}/{key[2]} keeps clusterIP {ip} outside the service "
                        f"range {self.ips.cidr}"
                    )
            self._objects[key] = obj
        self._rv = max(rv, self._max_object_rv())
        self._history.clear()
        self._replay_floor = self._rv
        self._changes = {}  # what was restored is saved already
        self._ensure_default_namespace()
        return warnings

    def _max_object_rv(self) -> int:
        best = 0
        for o in self._objects.values():
            try:
                best = max(best, int(o["metadata"].get("resourceVersion", 0)))
            except (TypeError, ValueError):
                continue
        return best


__all__ = [
    "MAX_DOCUMENTS",
    "MAX_OBJECT_BYTES",
    "PROPAGATIONS",
    "SNAPSHOT_VERSION",
    "AlreadyExists",
    "Applied",
    "Conflict",
    "Deleted",
    "Expired",
    "NotFound",
    "Store",
    "key_of",
]
