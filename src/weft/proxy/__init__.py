"""The data plane: a transparent sidecar proxy.

- :mod:`~weft.proxy.config`: the proxy's frozen, validated configuration.
- :mod:`~weft.proxy.server`: listeners, accept and detection, lifecycle and graceful shutdown.
- :mod:`~weft.proxy.outbound`: target -> balancer -> endpoint connection pools.
- :mod:`~weft.proxy.protocol.http1`: HTTP/1.1 per request (client side, upstream side).
- :mod:`~weft.proxy.protocol.tcp`: opaque TCP relay with half-close, backpressure and byte counts.
- :mod:`~weft.proxy.admin`: ``/metrics``, ``/ready``, ``/live``, ``POST /shutdown``.
- :mod:`~weft.proxy.static_discovery`: discovery from a watched YAML file.
"""
