"""Fakes and helpers as product code: used by Weft's own tests and usable by others.

Not for: production code paths (nothing in the proxy or control plane imports this package).
"""

from weft.testing.clock import FakeClock

__all__ = ["FakeClock"]
