"""Fakes and helpers as product code: used by Weft's own tests and usable by others.

The facade: :class:`FakeClock` (``clock``), :class:`FakeDiscovery` (``discovery``: a feed tests
push updates into), :class:`Relay` (``relay``: a fault-injecting TCP relay), :func:`running_proxy`
and :func:`wait_until` (``proxy``). Test servers (``servers``), the throwaway PKI (``pki``) and
packet capture (``capture``) are imported from their modules: they pull in ``httptools`` and
``cryptography``, which this package must not load by itself.

Not for: production code paths (nothing in the proxy or control plane imports this package).
"""

from weft.testing.clock import FakeClock
from weft.testing.discovery import FakeDiscovery, endpoint
from weft.testing.proxy import WaitTimeout, running_proxy, wait_until
from weft.testing.relay import Relay
from weft.testing.relay_conn import RelayConnection

__all__ = [
    "FakeClock",
    "FakeDiscovery",
    "Relay",
    "RelayConnection",
    "WaitTimeout",
    "endpoint",
    "running_proxy",
    "wait_until",
]
