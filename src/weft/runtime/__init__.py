"""Where pods run: the :class:`~weft.runtime.base.Runtime` seam and its implementations.

- :mod:`~weft.runtime.base`: the seam the CLI uses (bring a mesh up and down, check it, exec into a
  pod, read its logs), as a :class:`typing.Protocol` a Kubernetes runtime can implement later.
- :mod:`~weft.runtime.local`: pods as network namespaces on this machine, each with a ``weft proxy``
  sidecar, run by the ``weft node`` agent.

Not for: the store, discovery or metrics (that is :mod:`weft.control`), nor the proxy itself.
"""
