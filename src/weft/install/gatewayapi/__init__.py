"""Gateway API's HTTPRoute and GRPCRoute CRDs, for ``weft install --crds --gateway-api``.

The Gateway API project's own standard-channel CRDs, unchanged (gzipped; the version is in
``VERSION``, their Apache 2.0 licence in ``LICENSE``), copied from the project's Go module by
``scripts/vendor-gateway-api``. Weft reads ``gateway.networking.k8s.io/v1`` routes, which every
maintained release serves, so a cluster that already has any of them needs none of these: they
are printed only when asked for, never owned by Weft's install otherwise.

Not for: Weft's own CRDs (:mod:`weft.install.crds`).
"""

from __future__ import annotations

import gzip
from importlib import resources
from typing import Any

import yaml

KINDS = ("httproutes", "grpcroutes")


def version() -> str:
    return (resources.files(__name__) / "VERSION").read_text().strip()


def gateway_crds() -> list[dict[str, Any]]:
    """The CRDs as the project ships them, in a fixed order."""
    out = []
    for kind in KINDS:
        data = gzip.decompress((resources.files(__name__) / f"{kind}.yaml.gz").read_bytes())
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        out.append(yaml.load(data, Loader=loader))
    return out


__all__ = ["KINDS", "gateway_crds", "version"]
