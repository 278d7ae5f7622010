"""The embedded Kubernetes API: the local mesh's store served as the Kubernetes REST API.

:class:`~weft.control.kubeapi.server.KubeApi` routes requests; ``discovery``, ``selectors``,
``patch``, ``tables``, ``watch`` and ``status`` each hold one part of the API's behaviour.

Not for: a real cluster (there, Weft is a client: :mod:`weft.control.kube`).
"""
