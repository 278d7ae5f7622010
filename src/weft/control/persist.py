"""Persisting the store under the state directory, change by change, in SQLite.

:class:`StateDb` keeps one row per object (kind, namespace, name, JSON body) and the store's
resource version in ``<state dir>/store.db`` (0600; SQLite in WAL mode with full syncs: a commit
is on disk when :meth:`StateDb.write` returns, and a crash leaves the last commit whole, as k3s
keeps its API in SQLite through kine). :meth:`StateDb.write` takes only what changed since the last
commit (the store's :meth:`~weft.control.store.Store.take_changes`): the cost of a write grows
with what it changed, never with the store. :meth:`StateDb.load` returns a snapshot in the
store's format (:meth:`~weft.control.store.Store.restore` reads it), or None for a new database.
A database that SQLite cannot read is moved aside (``*.corrupt``) with an error, never silently
replaced. :func:`migrate_json` brings the state of an older Weft (``store.json``, one JSON file
rewritten whole on every change) into the database once.

:class:`StateFile` is that older format (kept to migrate from, and for one-shot exports).

Not for: deciding what to persist (the store's changes) or when (the control plane commits
after every change).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SNAPSHOT_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""
Key = tuple[str, str, str]


class StateDb:
    """The store's objects in SQLite (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self.writes = 0

    def __repr__(self) -> str:
        return f"<StateDb {self.path} writes={self.writes}>"

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # private before the first byte
            os.close(fd)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(_SCHEMA)
            except sqlite3.DatabaseError:
                db.close()
                raise
            self._db = db
        return self._db

    def load(self) -> dict[str, Any] | None:
        """The saved objects as a store snapshot, or None when the database is new. A database
        SQLite cannot read is renamed to ``<name>.corrupt`` and ValueError raised."""
        try:
            db = self._open()
            rv = db.execute("SELECT value FROM meta WHERE key = 'resourceVersion'").fetchone()
            rows = db.execute("SELECT body FROM objects ORDER BY kind, namespace, name").fetchall()
        except sqlite3.DatabaseError as exc:
            self.close()
            aside = self.path.with_name(self.path.name + ".corrupt")
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.path}{suffix}")
            raise ValueError(
                f"state database {self.path} is corrupt ({exc}); moved to {aside}"
            ) from None
        if rv is None:
            return None
        objects = []
        for (body,) in rows:
            with contextlib.suppress(ValueError):
                objects.append(json.loads(body))
        return {"version": SNAPSHOT_VERSION, "resourceVersion": int(rv[0]), "objects": objects}

    def write(self, changes: Mapping[Key, Mapping[str, Any] | None], resource_version: int) -> None:
        """Commit ``changes`` (key -> object, or None for a delete) and the resource version, in
        one transaction. Raises OSError (sqlite3's errors wrapped) when it cannot."""
        db = self._open()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                for (kind, ns, name), obj in changes.items():
                    if obj is None:
                        db.execute(
                            "DELETE FROM objects WHERE kind=? AND namespace=? AND name=?",
                            (kind, ns, name),
                        )
                    else:
                        db.execute(
                            "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?)",
                            (kind, ns, name, json.dumps(obj, separators=(",", ":"))),
                        )
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('resourceVersion', ?)",
                    (str(resource_version),),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise OSError(f"cannot write {self.path}: {exc}") from exc
        self.writes += 1

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def migrate_json(json_path: Path, db: StateDb) -> dict[str, Any] | None:
    """The snapshot of an older Weft's ``store.json``, written into ``db`` whole and the file
    renamed ``*.migrated``; None when there is no such file."""
    snapshot = StateFile(json_path).load()
    if snapshot is None:
        return None
    changes: dict[Key, Mapping[str, Any] | None] = {}
    for obj in snapshot.get("objects") or []:
        meta = obj.get("metadata") or {}
        changes[(str(obj.get("kind")), str(meta.get("namespace") or ""), str(meta.get("name")))] = (
            obj
        )
    db.write(changes, int(snapshot.get("resourceVersion") or 0))
    os.replace(json_path, json_path.with_name(json_path.name + ".migrated"))
    return snapshot


class StateFile:
    """The older format: one JSON snapshot file, replaced atomically on every save."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"<StateFile {self.path}>"

    def load(self) -> dict[str, Any] | None:
        """The saved snapshot, or None when there is none. A file that is not a JSON object is
        renamed to ``<name>.corrupt`` and ValueError raised naming both files."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            aside = self.path.with_name(self.path.name + ".corrupt")
            os.replace(self.path, aside)
            raise ValueError(
                f"state file {self.path} is corrupt ({exc}); moved to {aside}"
            ) from None
        return data

    def save(self, snapshot: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        data = json.dumps(snapshot, separators=(",", ":"), sort_keys=True).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)


__all__ = ["SNAPSHOT_VERSION", "StateDb", "StateFile", "migrate_json"]
