"""Weft: a light, fast service mesh.

Layers, one package each:

- ``weft.core``: sans-I/O mechanisms (balancer, detection, backoff, ...): plain classes, no awaits,
  an injected clock. Where the logic lives and is tested exhaustively.
- ``weft.metrics``: the proxy's Prometheus metrics, Linkerd-compatible names and labels.
- ``weft.proxy``: the data plane: listeners, inbound and outbound paths, HTTP/1 and TCP, admin.
- ``weft.resources``: Kubernetes-shaped resource models and their validation.
- ``weft.control``: the control plane: store, destination, metrics aggregation, API.
- ``weft.runtime``: where pods run: the local (network namespace) runtime now, Kubernetes later.
- ``weft.cli``: the ``weft`` command.
- ``weft.testing``: fakes that are product code: a fake clock, a fault-injecting TCP relay.
"""

__version__ = "0.1.0"
