"""The control plane's view of a Kubernetes API server: a client, informers over it.

Not for: deciding what cluster state means for proxies (the controllers in
:mod:`weft.control`).
"""
