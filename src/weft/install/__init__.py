"""Weft on a Kubernetes cluster: the manifests ``weft install`` prints for ``kubectl apply -f -``.

So far the CRDs (:mod:`weft.install.crds`); :func:`render` writes manifests as multi-document
YAML, deterministically (the same input prints the same bytes, so a diff shows only what
changed).

Not for: applying anything (kubectl does), nor the local mesh (:mod:`weft.runtime.local`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import yaml


def render(docs: Iterable[Mapping[str, Any]], *, header: str = "") -> str:
    """``docs`` as YAML documents separated by ``---``, keys in the order they were built."""
    out = [f"# {line}".rstrip() + "\n" for line in header.splitlines()]
    for doc in docs:
        out.append("---\n")
        out.append(yaml.safe_dump(dict(doc), sort_keys=False, default_flow_style=False, width=100))
    return "".join(out)


__all__ = ["render"]
