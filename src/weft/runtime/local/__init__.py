"""The local runtime: pods as network namespaces on this machine.

- :mod:`~weft.runtime.local.net`: the node namespace and bridge, pod namespaces, veth pairs, pod
  address allocation, routes, host blackhole routes, per-pod iptables (as Linkerd's proxy-init),
  hosts files; command plans and their runners; sockets inside a namespace for probes.
- :mod:`~weft.runtime.local.pod`: one pod's processes (sidecar first, then the app), supervision
  with restart backoff, readiness, job completion, draining on termination, log files.
- :mod:`~weft.runtime.local.agent`: the ``weft node`` agent: Deployments to Pods (rolling
  updates), pod lifecycle, Pod status reports, hosts files for Services.
- :mod:`~weft.runtime.local.cleanup`: finds and removes everything Weft created, also after a crash.
- :mod:`~weft.runtime.local.mesh`: ``weft up/down/check/exec/logs`` (the :class:`Runtime` seam).
- :mod:`~weft.runtime.local.state`: the state directory's layout and the process records.

Not for: the control plane or the proxy (they run here, but live in :mod:`weft.control` and
:mod:`weft.proxy`).
"""
