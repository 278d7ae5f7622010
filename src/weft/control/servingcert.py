"""The control plane's own certificate for its HTTPS API: the mesh identity of its service account.

On a cluster the proxies reach the control plane's API over the pod network, and a proxy's first
call carries its pod's service-account token. :class:`ServingCert` makes that API HTTPS with a
leaf the control plane issues to itself from the mesh issuer, for the identity of the service
account it runs as (``weft-control.weft-system.serviceaccount.identity.cluster.local``), as
Linkerd's identity and destination services present theirs. A proxy verifies it against the
trust anchors the injector put in its spec, expecting exactly that name, so a token goes only to
a control plane holding a key the mesh's issuer certified.

The leaf has a new key each time (made here: the control plane has ``cryptography`` loaded
anyway), is valid for the issuer's leaf lifetime, and is issued again at 70% of it or at once when
the issuer changes (a rotation). The certificate is loaded into the same ``ssl.SSLContext`` the
listener holds (through a ``memfd``: the key never touches a disk), so new connections get the new
certificate and open ones keep theirs. TLS 1.2 at least: the kubelet's HTTPS probes and the API
server's service proxy connect too (they do not verify it).

Not for: issuing proxies' certificates (:mod:`weft.control.identity`), or TLS for the data path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Callable

from weft.control.identity import IdentityService
from weft.identity.ca import (
    cert_pem,
    fingerprint,
    key_pem,
    make_csr,
    new_key,
    not_after,
    not_before,
)
from weft.identity.names import dns_identity, spiffe_id

log = logging.getLogger("weft.control.tls")

RENEW_AT = 0.7  # of the leaf's validity
RETRY_S = 10.0  # after a failure to issue (the CA not loaded yet, expired issuer)


class ServingCert:
    """A server TLS context presenting ``namespace/service_account``'s mesh identity."""

    def __init__(
        self,
        identity: IdentityService,
        namespace: str,
        service_account: str,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.identity = identity
        self.name = dns_identity(namespace, service_account, identity.trust_domain)
        self.spiffe = spiffe_id(namespace, service_account, identity.trust_domain)
        self.clock = clock or identity.clock
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.not_after = 0.0
        self.renew_at = 0.0
        self.issuer_fp = ""
        self.issued = 0
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<ServingCert {self.name} until {self.not_after:.0f}>"

    def due(self) -> bool:
        """Whether a leaf must be issued now: none yet, 70% of it gone, or a new issuer."""
        if not self.issued or self.clock() >= self.renew_at:
            return True
        return self.identity.loaded and fingerprint(self.identity.material.issuer.cert) != (
            self.issuer_fp
        )

    def refresh(self) -> bool:
        """Issue and load a new leaf when :meth:`due`; True when it did. Raises the CA's error
        (HttpError 503 before the CA is loaded, CaError for an expired issuer)."""
        if not self.due():
            return False
        material = self.identity.material
        key = new_key()
        now = self.clock()
        leaf = material.issuer.sign_leaf(
            make_csr(key, self.name, self.spiffe),
            self.name,
            self.spiffe,
            now=now,
            lifetime=self.identity.leaf_lifetime,
        )
        fd = os.memfd_create("weft-control-tls", os.MFD_CLOEXEC)
        try:
            data = memoryview(cert_pem(leaf) + cert_pem(material.issuer.cert) + key_pem(key))
            while data:
                data = data[os.write(fd, data) :]
            self.context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        start, end = not_before(leaf), not_after(leaf)
        self.not_after = end
        self.renew_at = start + RENEW_AT * (end - start)
        self.issuer_fp = fingerprint(material.issuer.cert)
        self.issued += 1
        log.info("serving the API as %s until %.0f", self.name, end)
        return True

    def start(self, check_every: float = 5.0) -> None:
        """Keep the leaf current in the background (checked every ``check_every`` seconds)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(check_every))

    async def _loop(self, check_every: float) -> None:
        while True:
            try:
                self.refresh()
                await asyncio.sleep(check_every)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep serving the current leaf, and retry
                log.warning("cannot issue the API's certificate for %s: %s", self.name, exc)
                await asyncio.sleep(RETRY_S)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
