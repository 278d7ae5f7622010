"""Discovery from a YAML file, watched for changes: the source before a control plane exists.

Format::

    destinations:
      - target: 10.96.0.10:8080          # ip:port or name:port, as the proxy asks
        labels: {service: emoji, namespace: default}
        opaque: false
        endpoints:
          - address: 127.0.0.1:9001
            labels: {pod: emoji-1, deployment: emoji, namespace: default}
            # meshed: true, identity: NAME, proxy_port: 4143   (dial its proxy, mutual TLS)

The file is re-read when its modification time or size changes (polled every ``interval``
seconds); every resolution is updated in place. A file that fails to parse is logged and the last
good content stays in force: a typo never empties the mesh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

import yaml

from weft.addr import format_addr, parse_hostport
from weft.discovery import Destination, Resolution

log = logging.getLogger("weft.discovery")


class StaticDiscoveryError(ValueError):
    """The discovery file is invalid; the message names the file and the entry."""


def parse_destinations(text: str, source: str = "<discovery>") -> dict[str, Destination]:
    """Parse the file's text into destinations keyed by normalized target."""
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise StaticDiscoveryError(f"{source}: invalid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("destinations", []), list):
        raise StaticDiscoveryError(f"{source}: expected a mapping with a 'destinations' list")
    out: dict[str, Destination] = {}
    for i, entry in enumerate(data.get("destinations") or []):
        where = f"{source}: destinations[{i}]"
        if not isinstance(entry, dict) or "target" not in entry:
            raise StaticDiscoveryError(f"{where}: expected a mapping with 'target'")
        try:
            dest = Destination.from_json(entry)
            key = normalize_target(dest.target)
        except (KeyError, ValueError, TypeError) as exc:
            raise StaticDiscoveryError(f"{where}: {exc}") from exc
        out[key] = dest
    return out


def normalize_target(target: str) -> str:
    return format_addr(parse_hostport(target))


class StaticDiscovery:
    """A :class:`~weft.discovery.Discovery` backed by a watched YAML file."""

    def __init__(self, path: str, *, interval: float = 0.5) -> None:
        self.path = path
        self.interval = interval
        self._stamp: tuple[float, int] | None = None
        self._table: dict[str, Destination] = {}
        self._resolutions: dict[str, Resolution] = {}
        self._task: asyncio.Task[None] | None = None
        self.reload()

    def reload(self) -> bool:
        """Re-read the file if it changed; True when new content was applied."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if self._stamp is None:
                raise StaticDiscoveryError(f"{self.path}: cannot read: {exc}") from exc
            return False
        stamp = (st.st_mtime, st.st_size)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            with open(self.path, encoding="utf-8") as f:
                table = parse_destinations(f.read(), self.path)
        except (OSError, StaticDiscoveryError) as exc:
            if not self._table and not self._resolutions:
                raise StaticDiscoveryError(str(exc)) from exc
            log.error("keeping the last good discovery: %s", exc)
            return False
        self._table = table
        for key, res in self._resolutions.items():
            res.set(table.get(key))
        return True

    async def resolve(self, target: str) -> Resolution:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())
        key = normalize_target(target)
        res = self._resolutions.get(key)
        if res is None:
            res = self._resolutions[key] = Resolution(key, self._table.get(key))
        return res

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.reload()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
