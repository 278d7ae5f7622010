"""The seam between service discovery and the proxy.

A proxy asks a :class:`Discovery` about a *target* (a service's virtual IP and port, or a
``name:port``) and gets a :class:`Resolution`: a live view whose ``current`` value is the latest
:class:`Destination` snapshot (or ``None`` when discovery does not know the target, in which case
the proxy forwards to the original address as is). Sources push new snapshots into the resolution
at any moment; listeners are called synchronously and must not block.

Implementations: :mod:`weft.proxy.static_discovery` (a watched YAML file) and the control plane's
destination API client. Snapshots are plain frozen data with a JSON form (``to_json``/``from_json``)
shared by the control plane (producer) and the proxy (consumer).

Not for: balancing or connection management (that is the proxy's outbound path).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from weft.addr import Address, format_addr, parse_hostport
from weft.policy import ServicePolicy

log = logging.getLogger("weft.discovery")

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One instance behind a destination.

    ``labels`` carry workload metadata (``pod``, ``namespace``, ``deployment``, ``serviceaccount``)
    that become ``dst_*`` metric labels. ``identity`` is the TLS identity the server's proxy must
    present; ``meshed`` says the endpoint has a Weft sidecar; ``protocol`` is a hint
    (``"opaque"``, ``"http1"``, ``"http2"``) or ``None`` to detect. ``proxy_port``, for a meshed
    endpoint, is its proxy's inbound port on the endpoint's IP: a client proxy with an identity
    connects there (mutual TLS, then a transport header naming the port of ``address``) rather
    than to the app's port (:mod:`weft.core.transport_header`); ``None``: dial ``address``.
    """

    address: Address
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    identity: str | None = None
    meshed: bool = False
    protocol: str | None = None
    proxy_port: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"address": format_addr(self.address), "labels": dict(self.labels)}
        if self.identity is not None:
            out["identity"] = self.identity
        if self.meshed:
            out["meshed"] = True
        if self.protocol is not None:
            out["protocol"] = self.protocol
        if self.proxy_port is not None:
            out["proxy_port"] = self.proxy_port
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Endpoint:
        labels = data.get("labels") or {}
        if not isinstance(labels, Mapping):
            raise ValueError("endpoint.labels must be a mapping")
        return cls(
            address=parse_hostport(str(data["address"])),
            labels=MappingProxyType({str(k): str(v) for k, v in labels.items()}),
            identity=_opt_str(data.get("identity")),
            meshed=bool(data.get("meshed", False)),
            protocol=_opt_str(data.get("protocol")),
            proxy_port=_opt_port(data.get("proxy_port")),
        )


@dataclass(frozen=True, slots=True)
class Destination:
    """A snapshot of what a target resolves to.

    ``labels`` describe the destination service (``service``, ``namespace``) and become
    ``dst_service``/``dst_namespace`` metric labels. ``opaque`` means the port is declared opaque
    TCP: the proxy skips protocol detection. ``policy`` carries routes, retries, timeouts and
    failure accrual configured for the service (``None``: nothing configured).
    """

    target: str
    endpoints: tuple[Endpoint, ...] = ()
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    opaque: bool = False
    policy: ServicePolicy | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": self.target,
            "labels": dict(self.labels),
            "opaque": self.opaque,
            "endpoints": [e.to_json() for e in self.endpoints],
        }
        if self.policy is not None:
            out["policy"] = self.policy.to_json()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Destination:
        labels = data.get("labels") or {}
        if not isinstance(labels, Mapping):
            raise ValueError("destination.labels must be a mapping")
        eps = data.get("endpoints") or []
        if not isinstance(eps, list):
            raise ValueError("destination.endpoints must be a list")
        return cls(
            target=str(data["target"]),
            endpoints=tuple(Endpoint.from_json(e) for e in eps),
            labels=MappingProxyType({str(k): str(v) for k, v in labels.items()}),
            opaque=bool(data.get("opaque", False)),
            policy=None if data.get("policy") is None else ServicePolicy.from_json(data["policy"]),
        )


Listener = Callable[["Destination | None"], None]


class Resolution:
    """A live view of one target: ``current`` plus change listeners.

    Sources call :meth:`set`; consumers read ``current`` and :meth:`subscribe` to changes.
    """

    __slots__ = ("_listeners", "current", "target")

    def __init__(self, target: str, current: Destination | None = None) -> None:
        self.target = target
        self.current = current
        self._listeners: list[Listener] = []

    def set(self, dest: Destination | None) -> None:
        """Replace the snapshot and tell every listener (synchronously, in order; one that
        raises is logged and the others are still told)."""
        if dest == self.current:
            return
        self.current = dest
        for listener in list(self._listeners):
            try:
                listener(dest)
            except Exception:
                # one listener's bug must not keep the snapshot from the others: the snapshot
                # is already current, so a listener skipped here would never hear of it again
                log.exception("a listener of %s failed on a new snapshot", self.target)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` on every change; returns a function that unsubscribes."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def __repr__(self) -> str:
        n = "unknown" if self.current is None else f"{len(self.current.endpoints)} endpoints"
        return f"<Resolution {self.target} {n} listeners={len(self._listeners)}>"


class Discovery(Protocol):
    """Where the proxy learns what a target resolves to."""

    async def resolve(self, target: str) -> Resolution:
        """Return the live resolution of ``target`` (``ip:port`` or ``name:port``).

        Waits for the source's first answer (bounded by the source's own timeout); an unknown
        target resolves with ``current = None``. Later changes arrive through the resolution.
        """
        ...

    async def close(self) -> None:
        """Stop watching and release resources."""
        ...


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _opt_port(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError(f"endpoint.proxy_port must be a port number, got {value!r}")
    return value
