"""What is installed on a cluster, read back for ``weft upgrade`` and ``weft check``.

The installed configuration (the ``weft-config`` ConfigMap: version and the values given) and
the certificates (trust roots, issuer, the injector's TLS), exactly as the cluster holds them
now: an issuer rotated since the install is the one an upgrade keeps.

Not for: deciding anything about them (the commands), nor writing (kubectl applies).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.resources.core_v1 import ConfigMap, Secret

from weft.install.certs import Certs
from weft.install.controlplane import CONFIG, INJECTOR_SECRET, ISSUER_SECRET, TRUST_ROOTS
from weft.install.values import NAMESPACE, load_file


class NotInstalled(LookupError):
    """Weft's control plane is not on this cluster (or not all of it)."""


@dataclass(frozen=True)
class Installed:
    version: str
    values: dict[str, Any]
    certs: Certs


async def _get(client: AsyncClient, kind: Any, name: str) -> Any:
    try:
        return await client.get(kind, name, namespace=NAMESPACE)
    except ApiError as exc:
        if exc.status.code == 404:
            raise NotInstalled(
                f"no {kind.__name__} {NAMESPACE}/{name}: Weft is not installed here "
                "(weft install | kubectl apply -f -)"
            ) from None
        raise


def _secret(secret: Any, key: str) -> bytes:
    data = secret.data or {}
    if key not in data:
        raise NotInstalled(f"the Secret {secret.metadata.name} has no {key}")
    return base64.b64decode(data[key])


async def read(client: AsyncClient) -> Installed:
    """The installation; NotInstalled naming what is missing, ApiError when the API fails."""
    config = await _get(client, ConfigMap, CONFIG)
    data = config.data or {}
    values = load_file(data.get("values.yaml", ""), f"ConfigMap {CONFIG}")
    roots = await _get(client, ConfigMap, TRUST_ROOTS)
    anchors = (roots.data or {}).get("ca-bundle.crt")
    if not anchors:
        raise NotInstalled(f"the ConfigMap {TRUST_ROOTS} has no ca-bundle.crt")
    issuer = await _get(client, Secret, ISSUER_SECRET)
    injector = await _get(client, Secret, INJECTOR_SECRET)
    certs = Certs(
        trust_anchors=anchors.encode(),
        issuer_cert=_secret(issuer, "tls.crt"),
        issuer_key=_secret(issuer, "tls.key"),
        injector_ca=_secret(injector, "ca.crt"),
        injector_cert=_secret(injector, "tls.crt"),
        injector_key=_secret(injector, "tls.key"),
    )
    return Installed(str(data.get("version", "")), values, certs)


def read_from(kubeconfig: str | None, context: str | None) -> Installed:
    """:func:`read` from the cluster of ``kubeconfig`` (its ``context``; None: ``$KUBECONFIG``
    or ``~/.kube/config``), for a command: blocking, its own connection."""
    import asyncio

    from weft.control.kube.client import connect

    async def one() -> Installed:
        client = connect(kubeconfig, context=context)
        try:
            return await read(client)
        finally:
            await client.close()

    return asyncio.run(one())


__all__ = ["Installed", "NotInstalled", "read", "read_from"]
