"""Service virtual IP allocation from the service range (default ``10.96.0.0/16``).

The network address, the broadcast address and the first host (Kubernetes keeps it for its API
service) are never handed out; the lowest free address is allocated. Addresses restored from the
persisted store are reserved again with :meth:`ServiceIPAllocator.reserve` so they stay stable.

Not for: pod addresses (the local runtime allocates those from the pod range).
"""

from __future__ import annotations

import ipaddress

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class RangeFull(Exception):
    """Every address of the service range is in use."""


class ServiceIPAllocator:
    """Which addresses of ``cidr`` are taken; allocation is the lowest free address."""

    def __init__(self, cidr: str) -> None:
        try:
            self.network: IPNetwork = ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            raise ValueError(f"invalid service CIDR {cidr!r}: {exc}") from None
        if self.network.num_addresses < 4:
            raise ValueError(f"service CIDR {cidr!r} is too small: it needs at least 4 addresses")
        self._first = int(self.network.network_address) + 2
        self._last = int(self.network.broadcast_address) - 1
        self._taken: set[int] = set()
        self._cursor = self._first

    @property
    def cidr(self) -> str:
        return str(self.network)

    @property
    def capacity(self) -> int:
        return self._last - self._first + 1

    def __len__(self) -> int:
        return len(self._taken)

    def __repr__(self) -> str:
        return f"<ServiceIPAllocator {self.network} used={len(self._taken)}/{self.capacity}>"

    def usable(self, ip: str) -> bool:
        """``ip`` is an address this range may hand out (in range, not reserved)."""
        try:
            n = int(ipaddress.ip_address(ip))
        except ValueError:
            return False
        if ipaddress.ip_address(ip).version != self.network.version:
            return False
        return self._first <= n <= self._last

    def taken(self, ip: str) -> bool:
        try:
            return int(ipaddress.ip_address(ip)) in self._taken
        except ValueError:
            return False

    def reserve(self, ip: str) -> bool:
        """Mark ``ip`` used; False (and nothing recorded) when it is outside the usable range."""
        if not self.usable(ip):
            return False
        self._taken.add(int(ipaddress.ip_address(ip)))
        return True

    def release(self, ip: str) -> None:
        try:
            n = int(ipaddress.ip_address(ip))
        except ValueError:
            return
        self._taken.discard(n)
        # the next allocation may reuse the lowest free address again
        self._cursor = min(self._cursor, n) if self._first <= n <= self._last else self._cursor

    def next_free(self, also_taken: set[str] | frozenset[str] = frozenset()) -> str:
        """The address :meth:`allocate` would return, treating ``also_taken`` as used too.

        Does not reserve it. Raises RangeFull.
        """
        extra = {int(ipaddress.ip_address(ip)) for ip in also_taken}
        n = self._cursor
        while n <= self._last:
            if n not in self._taken and n not in extra:
                return str(ipaddress.ip_address(n))
            n += 1
        raise RangeFull(f"no free address left in the service range {self.network}")

    def allocate(self) -> str:
        ip = self.next_free()
        self._taken.add(int(ipaddress.ip_address(ip)))
        self._cursor = int(ipaddress.ip_address(ip)) + 1
        return ip
