"""The certificates of the local mesh's Kubernetes API port: how kubectl and the port trust each
other.

Kubernetes clients send credentials only over TLS, so the node agent's loopback port for the
Kubernetes API (:mod:`weft.runtime.local.kubeport`) is TLS with client certificates, as k3s's
API server is: in ``<state dir>/kube/`` (0700, keys 0600) a CA, the port's serving certificate
(``127.0.0.1`` and ``localhost``) and an admin client certificate (``CN=weft-admin``,
``O=system:masters``) that ``weft kubeconfig`` embeds. Made at the first start, kept across
restarts, and made again when a certificate is within :data:`RENEW_BEFORE` of its end.

This CA is not the mesh's identity CA (:mod:`weft.identity.ca`): it only ever signs these two
certificates.

Not for: workload identity, nor the API itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from weft.identity.ca import (
    ensure_private_dir,
    load_certs_pem,
    load_key_pem,
    not_after,
    write_private,
)
from weft.identity.tlspki import CLIENT_AUTH, SERVER_AUTH, SelfSignedCa, name

LIFETIME = 365 * 86400.0
RENEW_BEFORE = 30 * 86400.0
ADMIN = "weft-admin"


@dataclass(frozen=True)
class KubePki:
    """Paths of the PKI's files (PEM)."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def admin_cert(self) -> Path:
        return self.directory / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.directory / "admin.key"


def _fresh(path: Path, now: float) -> bool:
    try:
        (cert,) = load_certs_pem(path.read_bytes(), str(path))[:1]
    except (OSError, ValueError):
        return False
    return not_after(cert) - now > RENEW_BEFORE


def ensure(directory: Path, *, now: float | None = None) -> KubePki:
    """The PKI in ``directory``, made (or made again, when near its end) as needed."""
    pki = KubePki(directory)
    now = time.time() if now is None else now
    if all(_fresh(p, now) for p in (pki.ca, pki.server_cert, pki.admin_cert)) and all(
        p.exists() for p in (pki.server_key, pki.admin_key)
    ):
        return pki
    ensure_private_dir(directory)
    ca = SelfSignedCa.new("weft-local-kubernetes-ca", now=now, lifetime=LIFETIME)
    server = ca.leaf(
        name("weft-local-kubernetes"),
        SERVER_AUTH,
        now=now,
        lifetime=LIFETIME,
        hosts=("127.0.0.1", "localhost"),
    )
    admin = ca.leaf(name(ADMIN, "system:masters"), CLIENT_AUTH, now=now, lifetime=LIFETIME)
    server_cert, server_key = server.cert, server.key
    admin_cert, admin_key = admin.cert, admin.key
    write_private(pki.server_key, server_key)
    write_private(pki.server_cert, server_cert)
    write_private(pki.admin_key, admin_key)
    write_private(pki.admin_cert, admin_cert)
    write_private(pki.ca, ca.pem)
    return pki


def check(pki: KubePki) -> None:
    """Raise ValueError when a file is unreadable (before serving with it)."""
    load_key_pem(pki.server_key.read_bytes(), str(pki.server_key))
    load_certs_pem(pki.server_cert.read_bytes(), str(pki.server_cert))


__all__ = ["ADMIN", "LIFETIME", "RENEW_BEFORE", "KubePki", "check", "ensure"]
