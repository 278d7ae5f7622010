"""The control plane: the resource store, the destination service, metrics aggregation, the API.

- :mod:`~weft.control.store`: resources with a global resourceVersion and bounded watches
  (sans-I/O); :mod:`~weft.control.persist` saves it; :mod:`~weft.control.ipam` gives Services
  their virtual IPs.
- :mod:`~weft.control.destinations`: targets -> :class:`weft.discovery.Destination` snapshots,
  with the policy :mod:`~weft.control.policies` builds from Service annotations and HTTPRoutes.
- :mod:`~weft.control.routestatus`: HTTPRoute status (Accepted / ResolvedRefs per parent).
- :mod:`~weft.control.metrics`: scraping proxies and window queries (SUCCESS, RPS, latencies;
  per route for ``weft routes``).
- :mod:`~weft.control.httpserver` (HTTP/1.1 shell), :mod:`~weft.control.api` (routes),
  :mod:`~weft.control.server` (the ``weft control`` process).
- :mod:`~weft.control.client`: the asyncio client every other process uses;
  :mod:`~weft.control.follow`: the one loop that follows a stream from the control plane forever
  (reconnecting, supervised, its state on view).

Not for: running pods (that is :mod:`weft.runtime`) nor the proxy.
"""
