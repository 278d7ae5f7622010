"""Workload identity: names, the mesh's CA, and per-pod tokens.

- :mod:`weft.identity.names`: ``<sa>.<ns>.serviceaccount.identity.<td>`` and SPIFFE IDs;
- :mod:`weft.identity.ca`: trust anchors, the issuer, leaf certificates, trust bundles;
- :mod:`weft.identity.tokens`: the per-pod tokens a proxy proves its workload with.

Pure code over ``cryptography``; the control plane's service is :mod:`weft.control.identity`
and the proxy's certificate client :mod:`weft.proxy.identity`. See docs/identity.md.
"""

from weft.identity.names import (
    DEFAULT_TRUST_DOMAIN,
    dns_identity,
    parse_dns_identity,
    peer_identity,
    spiffe_id,
    spiffe_to_dns,
)

__all__ = [
    "DEFAULT_TRUST_DOMAIN",
    "dns_identity",
    "parse_dns_identity",
    "peer_identity",
    "spiffe_id",
    "spiffe_to_dns",
]
