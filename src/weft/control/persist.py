"""Persisting the store under the state directory: one JSON file, replaced atomically.

``StateFile(path).save(store.snapshot())`` writes a temporary file next to ``path``, flushes it to
disk and renames it over ``path``, so a crash leaves the old or the new state, never half of one.
``load()`` returns the last snapshot (or ``None`` when there is none yet); a corrupt file is moved
aside (``*.corrupt``) with an error rather than silently dropped.

Not for: deciding what to persist (the store's snapshot) or when (the server commits after every
change).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class StateFile:
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
