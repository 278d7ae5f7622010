"""A discovery feed that tests push updates into: :class:`FakeDiscovery`.

It implements the :class:`weft.discovery.Discovery` protocol the proxy reads (``resolve``,
``close``), from a table the test edits directly: set or remove a whole
:class:`~weft.discovery.Destination`, or change one field of it (endpoints, labels, opaque,
policy). Every change reaches the proxy's subscribers before the call returns (the
:class:`~weft.discovery.Resolution` listeners run synchronously), so a test changes the
endpoint set and sends its next request at once: no YAML file to rewrite, no poll to wait for.
It also records which targets were resolved, and can hold resolutions back to play a slow
first answer.

Not for: testing the YAML format or the file watch (that is
:mod:`weft.proxy.static_discovery`'s own test), nor the control plane's destination stream
(:mod:`weft.proxy.control_discovery`); not a source for a real proxy process.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from weft.addr import Address, format_addr, parse_hostport
from weft.discovery import Destination, Endpoint, Resolution
from weft.policy import ServicePolicy

EndpointLike = Endpoint | Address | str
"""An :class:`Endpoint`, or an address (``("127.0.0.1", 8080)`` or ``"127.0.0.1:8080"``)."""


def normalize_target(target: str | Address) -> str:
    """``host:port`` as the proxy asks (the same key the static file uses)."""
    if isinstance(target, tuple):
        return format_addr(target)
    return format_addr(parse_hostport(target))


def endpoint(address: Address | str, **labels: str) -> Endpoint:
    """A plain endpoint with ``labels`` (``pod=..., namespace=...``)."""
    addr = parse_hostport(address) if isinstance(address, str) else address
    return Endpoint(address=addr, labels=MappingProxyType(dict(labels)))


class FakeDiscovery:
    """A :class:`~weft.discovery.Discovery` whose table the test edits.

    ``resolved`` lists the targets the proxy asked about, in order (normalized). While
    :meth:`hold` is in force, ``resolve`` waits (a discovery that is slow to answer) until
    :meth:`release`.
    """

    def __init__(self, destinations: Iterable[Destination] = ()) -> None:
        self._table: dict[str, Destination] = {}
        self._resolutions: dict[str, Resolution] = {}
        self._released = asyncio.Event()
        self._released.set()
        self.resolved: list[str] = []
        self.closed = False
        for dest in destinations:
            self.set(dest)

    # -- the Discovery protocol -----------------------------------------------------------------

    async def resolve(self, target: str) -> Resolution:
        key = normalize_target(target)
        self.resolved.append(key)
        await self._released.wait()
        res = self._resolutions.get(key)
        if res is None:
            res = self._resolutions[key] = Resolution(key, self._table.get(key))
        return res

    async def close(self) -> None:
        self.closed = True

    # -- what the test does ---------------------------------------------------------------------

    def get(self, target: str | Address) -> Destination | None:
        return self._table.get(normalize_target(target))

    def set(self, dest: Destination) -> Destination:
        """Replace what ``dest.target`` resolves to; subscribers hear of it before this returns."""
        key = normalize_target(dest.target)
        if dest.target != key:
            dest = dataclasses.replace(dest, target=key)
        self._table[key] = dest
        self._publish(key)
        return dest

    def remove(self, target: str | Address) -> None:
        """Forget ``target``: it resolves to ``None`` (unknown: the proxy forwards as is)."""
        key = normalize_target(target)
        self._table.pop(key, None)
        self._publish(key)

    def set_endpoints(
        self, target: str | Address, endpoints: Iterable[EndpointLike], **labels: str
    ) -> Destination:
        """Replace ``target``'s endpoints, keeping its other fields (a target not known yet is
        created). Addresses become plain endpoints; ``labels`` (when given) replace the
        destination's labels."""
        eps = tuple(e if isinstance(e, Endpoint) else endpoint(e) for e in endpoints)
        changes: dict[str, Any] = {"endpoints": eps}
        if labels:
            changes["labels"] = MappingProxyType(dict(labels))
        return self.update(target, **changes)

    def clear_endpoints(self, target: str | Address) -> Destination:
        """``target`` stays known, with no endpoint (the proxy answers 503 after fail-fast)."""
        return self.update(target, endpoints=())

    def set_labels(self, target: str | Address, labels: Mapping[str, str]) -> Destination:
        return self.update(target, labels=MappingProxyType(dict(labels)))

    def set_opaque(self, target: str | Address, opaque: bool = True) -> Destination:
        return self.update(target, opaque=opaque)

    def set_policy(
        self, target: str | Address, policy: ServicePolicy | Mapping[str, Any] | None
    ) -> Destination:
        """Set ``target``'s policy: a :class:`ServicePolicy`, its JSON form (as in the static
        file's ``policy:``), or ``None`` for none."""
        if policy is not None and not isinstance(policy, ServicePolicy):
            policy = ServicePolicy.from_json(policy)
        return self.update(target, policy=policy)

    def update(self, target: str | Address, **changes: Any) -> Destination:
        """Change fields of ``target``'s destination (``endpoints``, ``labels``, ``opaque``,
        ``policy``), creating it when unknown."""
        key = normalize_target(target)
        current = self._table.get(key) or Destination(target=key)
        return self.set(dataclasses.replace(current, **changes))

    def hold(self) -> None:
        """Make ``resolve`` wait (until :meth:`release`): a discovery slow to answer."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def subscribers(self, target: str | Address) -> int:
        """How many listeners follow ``target`` now (0 when never resolved)."""
        res = self._resolutions.get(normalize_target(target))
        return 0 if res is None else len(res._listeners)

    def _publish(self, key: str) -> None:
        res = self._resolutions.get(key)
        if res is not None:
            res.set(self._table.get(key))
