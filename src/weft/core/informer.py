"""One Kubernetes kind's objects as an informer holds them: list, then watch events, into a cache.

:class:`Cache` is the sans-I/O half of an informer (client-go's ``Reflector`` + ``Indexer`` +
``DeltaFIFO``, without the queue): objects of any type (the client library's typed models, or
plain decoded JSON: ``key`` and ``version`` say how to read their ``namespace/name`` and
``metadata.resourceVersion``; the defaults read ``dict``) keyed by ``namespace/name``
(``name`` for cluster-scoped kinds), with named indexes (Service name ->
EndpointSlices, pod IP -> Pod, ...). It turns what the API server sent into the changes a
controller acts on:

- :meth:`Cache.replace` takes a whole list (the first one, or a re-list after ``410 Gone``) and
  returns the differences from what the cache held: objects that appeared, changed (a different
  ``metadata.resourceVersion``) or disappeared while nobody was watching. A re-list therefore
  never loses a delete;
- :meth:`Cache.apply` takes one watch event (its type: ``ADDED``, ``MODIFIED``, ``DELETED``,
  ``BOOKMARK``; and its object) and returns the change it makes, or ``None`` (a bookmark, a
  delete of an unknown object, a repeat of the version already held);
- :meth:`Cache.resync` returns every object as an unchanged update (client-go's resync: a
  handler that missed or mishandled a change converges);
- :func:`watch_error` reads an ``ERROR`` event's ``Status``: ``410`` (the resource version is too
  old: re-list) or something else.

``resource_version`` is where the next watch starts: the list's, then each event's, bookmarks
included. Resource versions are opaque strings (Kubernetes API conventions): they are only ever
passed back, never compared.

Not for: I/O, retries or backoff (:mod:`weft.control.kube.informer` drives this over a client),
or deciding what a change means (the controllers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

Obj = dict[str, Any]
T = TypeVar("T")
Indexer = Callable[[T], Iterable[str]]
ChangeKind = Literal["added", "updated", "deleted"]

WATCH_TYPES = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR")


class BadObject(ValueError):
    """An object or event that is not what the API serves (no ``metadata.name``, a watch event
    with no ``type``, ...): the informer logs and skips it."""


@dataclass(frozen=True, slots=True)
class Change(Generic[T]):
    """What changed in the cache: ``old`` is None for ``added``, ``new`` None for ``deleted``;
    a resync's updates have ``old is new``."""

    kind: ChangeKind
    key: str
    old: T | None
    new: T | None

    @property
    def obj(self) -> T:
        """The object as it is now, or as it was last seen for a delete."""
        obj = self.new if self.new is not None else self.old
        assert obj is not None
        return obj


@dataclass(frozen=True, slots=True)
class WatchError:
    """An ``ERROR`` watch event's ``Status``: ``gone`` means re-list (410: the resource version
    the watch asked for is older than the server keeps)."""

    code: int
    reason: str
    message: str

    @property
    def gone(self) -> bool:
        return self.code == 410 or self.reason in ("Expired", "Gone")


def key_of(obj: Any) -> str:
    """``namespace/name``, or ``name`` for a cluster-scoped object (of decoded JSON)."""
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    if not isinstance(meta, Mapping):
        raise BadObject("object without metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise BadObject("object without metadata.name")
    namespace = meta.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        raise BadObject(f"{name}: metadata.namespace is not a string")
    return f"{namespace}/{name}" if namespace else name


def resource_version_of(obj: Any) -> str:
    """``metadata.resourceVersion`` of decoded JSON ("" when it has none)."""
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    rv = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
    return rv if isinstance(rv, str) else ""


def watch_error(event: Mapping[str, Any]) -> WatchError:
    """The ``Status`` of an ``ERROR`` watch event (what is missing reads as a 500)."""
    status = event.get("object")
    if not isinstance(status, Mapping):
        return WatchError(500, "", "watch error without a Status")
    code = status.get("code")
    return WatchError(
        code if isinstance(code, int) else 500,
        str(status.get("reason") or ""),
        str(status.get("message") or ""),
    )


class Cache(Generic[T]):
    """One kind's objects by key, with indexes (see the module docstring). ``key`` and
    ``version`` read an object's key and resource version (:class:`BadObject` for one without
    a name)."""

    __slots__ = ("_index", "_indexers", "_key", "_objects", "_version", "resource_version")

    def __init__(
        self,
        indexers: Mapping[str, Indexer[T]] | None = None,
        *,
        key: Callable[[T], str] = key_of,
        version: Callable[[T], str] = resource_version_of,
    ) -> None:
        self._objects: dict[str, T] = {}
        self._key = key
        self._version = version
        self._indexers: dict[str, Indexer[T]] = dict(indexers or {})
        # index name -> value -> keys of the objects with that value
        self._index: dict[str, dict[str, set[str]]] = {name: {} for name in self._indexers}
        self.resource_version = ""

    # -- reading ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._objects)

    def __iter__(self) -> Iterator[str]:
        """The keys (a copy: handlers may change the cache while a caller iterates)."""
        return iter(list(self._objects))

    def __contains__(self, key: object) -> bool:
        return key in self._objects

    def get(self, key: str) -> T | None:
        return self._objects.get(key)

    def values(self) -> Iterator[T]:
        return iter(list(self._objects.values()))

    def keys(self) -> list[str]:
        return list(self._objects)

    def by_index(self, index: str, value: str) -> list[T]:
        """The objects whose ``index`` function gave ``value`` (KeyError: no such index)."""
        keys = self._index[index].get(value, ())
        return [self._objects[k] for k in sorted(keys)]

    def index_values(self, index: str) -> list[str]:
        return sorted(self._index[index])

    # -- writing ------------------------------------------------------------------------------

    def replace(self, items: Iterable[T], resource_version: str) -> list[Change[T]]:
        """A whole list: the cache becomes ``items``; returns what differs from before (adds,
        updates, then deletes of what the list no longer has). Items without a name are
        skipped (:class:`BadObject` is not raised for one bad item in a list)."""
        fresh: dict[str, T] = {}
        for item in items:
            try:
                fresh[self._key(item)] = item
            except BadObject:
                continue
        changes: list[Change[T]] = []
        version = self._version
        for key, obj in fresh.items():
            old = self._objects.get(key)
            if old is None:
                changes.append(self._put(key, None, obj))
            elif version(old) != version(obj) or not version(obj):
                changes.append(self._put(key, old, obj))
        for key in [k for k in self._objects if k not in fresh]:
            changes.append(self._remove(key))
        self.resource_version = resource_version
        return changes

    def apply(self, kind: str, obj: T | None) -> Change[T] | None:
        """One watch event, of type ``kind`` (not ``ERROR``: see :func:`watch_error`); advances
        :attr:`resource_version`. Raises :class:`BadObject` for an event that is not one."""
        if kind not in WATCH_TYPES or kind == "ERROR":
            raise BadObject(f"watch event of type {kind!r}")
        if obj is None:
            raise BadObject(f"{kind} event without an object")
        rv = self._version(obj)
        if kind == "BOOKMARK":
            if rv:
                self.resource_version = rv
            return None
        key = self._key(obj)
        if rv:
            self.resource_version = rv
        old = self._objects.get(key)
        if kind == "DELETED":
            return None if old is None else self._remove(key, last=obj)
        if old is not None and rv and self._version(old) == rv:
            return None  # the same version again (a watch resumed at an object's own version)
        return self._put(key, old, obj)

    def resync(self) -> list[Change[T]]:
        """Every object as an update that changes nothing (``old is new``)."""
        return [Change("updated", k, o, o) for k, o in list(self._objects.items())]

    # -- internals ----------------------------------------------------------------------------

    def _put(self, key: str, old: T | None, new: T) -> Change[T]:
        if old is not None:
            self._unindex(key, old)
        self._objects[key] = new
        self._reindex(key, new)
        return Change("added" if old is None else "updated", key, old, new)

    def _remove(self, key: str, last: T | None = None) -> Change[T]:
        old = self._objects.pop(key)
        self._unindex(key, old)
        return Change("deleted", key, old if last is None else last, None)

    def _values(self, name: str, obj: T) -> Iterable[str]:
        try:
            return list(self._indexers[name](obj))
        except (KeyError, TypeError, AttributeError, ValueError):
            return ()  # an object missing what the index reads is in no bucket of it

    def _reindex(self, key: str, obj: T) -> None:
        for name, buckets in self._index.items():
            for value in self._values(name, obj):
                buckets.setdefault(value, set()).add(key)

    def _unindex(self, key: str, obj: T) -> None:
        for name, buckets in self._index.items():
            for value in self._values(name, obj):
                keys = buckets.get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del buckets[value]


__all__ = [
    "BadObject",
    "Cache",
    "Change",
    "Indexer",
    "Obj",
    "WatchError",
    "key_of",
    "resource_version_of",
    "watch_error",
]
