"""Sans-I/O mechanisms of the proxy: load balancing, protocol detection, backoff.

Plain classes and functions with no awaits and no sockets; clocks and RNGs are injected so that
tests and simulations are deterministic. The asyncio shell in :mod:`weft.proxy` drives them.

Not for: I/O, configuration parsing or metrics (see :mod:`weft.proxy` and :mod:`weft.metrics`).
"""
