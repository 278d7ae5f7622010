"""The proxy's certificate client: its workload's identity as TLS contexts, kept current.

:class:`ProxyIdentity` has an ECDSA P-256 key and a CSR made by a short-lived child process
(:mod:`weft.identity.keygen`, so that ``cryptography`` and its ~8.5 MB never load in the proxy);
the key comes back through a pipe and stays in memory (never written to disk: the ``ssl`` module
loads it from an anonymous ``memfd``, closed right after). It sends the CSR with the pod's token
(``--identity-token-file``) to the control plane's ``POST /api/v1/identity/certify`` and builds
from the answer three ``ssl.SSLContext`` objects, TLS 1.3 only, each presenting leaf + issuer
and trusting the anchors:

- ``server_context`` (``PROTOCOL_TLS_SERVER``, client certificate optional: a client without one
  is TLS but unauthenticated, and policy decides; ALPN ``h2`` and ``http/1.1``);
- ``client_context`` (``PROTOCOL_TLS_CLIENT``, certificate required, ``check_hostname``: the
  caller passes the expected server identity as ``server_hostname``; ALPN ``http/1.1``);
- ``h2_client_context``: the same for HTTP/2 connections (ALPN ``h2``): ``ssl`` sets ALPN per
  context, not per connection.

Every answer is checked with the ``ssl`` module only: OpenSSL refuses a certificate that is not
for the key, and the new server and client contexts then handshake with each other in memory
(the client expecting this proxy's identity), which proves what peers will check: the chain
verifies to the anchors, the leaf is valid now and names this identity, and it works as client
and as server. Its times are the ``notBefore``/``notAfter`` of the answer (checked against the
certificate).

Every renewal uses a new key (a key is made when a certification is due and kept until one
succeeds, so a retry does not start another child). All contexts are replaced (new objects,
never mutated) on every change, then ``on_change`` callbacks run. In the background it renews at
70% of the validity the certificate had left when it arrived (not counting the 20 s a leaf starts
in the past for clock skew), retries with backoff while serving with the current certificate,
and follows ``GET /api/v1/identity/trust?watch=1`` (a :class:`weft.control.follow.Follower`,
reconnecting forever): new anchors rebuild the contexts; a new issuer
fingerprint renews at once (with up to 1 s of jitter, so a mesh of proxies does not renew in one
burst).

Metrics (through ``ProxyMetrics.extra``): ``identity_cert_expiration_timestamp_seconds`` and
``identity_cert_refresh_count``, as Linkerd's proxy. :meth:`ProxyIdentity.view` is the admin
``/identity`` JSON: PEM and times, no parsed descriptions (the control plane and the CLI describe
the certificates with ``cryptography`` on their side).

Not for: TLS in the data path (the proxy's listeners use these contexts), or authorization.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import random
import re
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weft.control.client import ApiError, ControlClient
from weft.control.follow import ControlStreams, Follower
from weft.core.backoff import ExponentialBackoff
from weft.identity.keygen import KeyAndCsr, KeygenError, generate
from weft.identity.names import DEFAULT_TRUST_DOMAIN, dns_identity, peer_identity, spiffe_id
from weft.metrics import ProxyMetrics, render_family
from weft.tasks import cancel_and_wait

if TYPE_CHECKING:
    from cryptography import x509

    from weft.identity.ca import PrivateKey, TrustBundle


_Contexts = tuple[ssl.SSLContext, ssl.SSLContext, ssl.SSLContext]  # server, client, h2 client
MESH_SERVER_ALPN = ("h2", "http/1.1")
log = logging.getLogger("weft.proxy.identity")

CERTIFY_PATH = "/api/v1/identity/certify"
TRUST_WATCH_PATH = "/api/v1/identity/trust?watch=1"
RENEW_FRACTION = 0.7
MIN_RENEW_DELAY = 0.5
ISSUER_JITTER = 1.0
MAX_TOKEN_BYTES = 8192
MAX_PEM_BYTES = 64 * 1024
TIME_TOLERANCE = 1.0  # certificates hold whole seconds
# what a failed certification or trust update raises (ControlUnavailable is an OSError, as is
# ssl.SSLError)
_FAILURES = (ApiError, OSError, ValueError, KeygenError)
_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+?-----END CERTIFICATE-----"
)


# -- PEM and contexts, with the ssl module only ------------------------------------------------


def split_certs(pem: bytes, what: str) -> list[bytes]:
    """Each certificate of a PEM text (at least one), as PEM; ValueError naming ``what``."""
    if len(pem) > MAX_PEM_BYTES:
        raise ValueError(f"{what}: larger than {MAX_PEM_BYTES} bytes")
    certs = [m.group(0) + b"\n" for m in _PEM_CERT.finditer(pem)]
    if not certs:
        raise ValueError(f"{what}: no PEM certificate found")
    for cert in certs:
        fingerprint_pem(cert, what)
    return certs


def fingerprint_pem(cert: bytes, what: str = "certificate") -> str:
    """SHA-256 of a PEM certificate's DER encoding, lowercase hex (as the control plane's)."""
    try:
        der = ssl.PEM_cert_to_DER_cert(cert.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{what}: not a PEM certificate") from None
    return hashlib.sha256(der).hexdigest()


def pem_tls_contexts(
    chain_pem: bytes,
    key_pem: bytes,
    anchors_pem: bytes,
    alpn: Sequence[str] = (),
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """``(server, client)`` contexts presenting ``chain_pem`` (leaf first) with ``key_pem`` and
    trusting ``anchors_pem``: TLS 1.3 only, strict X.509 checks, every anchor a trust anchor; the
    server asks for a client certificate but does not require one; the client requires the
    server's and checks its name. The key goes through a ``memfd`` that is closed at once.
    ssl.SSLError when OpenSSL refuses them (``KEY_VALUES_MISMATCH``: the key is not the leaf's)."""
    server, client = _contexts(chain_pem, key_pem, anchors_pem, (alpn, alpn))
    return server, client


def mesh_tls_contexts(
    chain_pem: bytes, key_pem: bytes, anchors_pem: bytes
) -> tuple[ssl.SSLContext, ssl.SSLContext, ssl.SSLContext]:
    """The proxy's contexts, as :func:`pem_tls_contexts` makes them, with ALPN: ``(server,
    client, h2_client)``. The server offers ``h2`` and ``http/1.1``; HTTP/1 connections to
    another proxy use ``client`` (``http/1.1``), HTTP/2 ones ``h2_client`` (``h2``)."""
    server, client, h2_client = _contexts(
        chain_pem, key_pem, anchors_pem, (MESH_SERVER_ALPN, ("http/1.1",), ("h2",))
    )
    return server, client, h2_client


def _contexts(
    chain_pem: bytes, key_pem: bytes, anchors_pem: bytes, alpns: Sequence[Sequence[str]]
) -> list[ssl.SSLContext]:
    """A server context (ALPN ``alpns[0]``), then a client context per further ``alpns``."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.verify_mode = ssl.CERT_OPTIONAL
    server.num_tickets = 0  # proxies keep their connections: tickets would only cost
    contexts = [server]
    for _ in alpns[1:]:
        contexts.append(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))  # CERT_REQUIRED, check_hostname
    anchors = anchors_pem.decode("ascii", errors="replace")
    fd = os.memfd_create("weft-identity", os.MFD_CLOEXEC)
    try:
        data = memoryview(chain_pem + b"\n" + key_pem)
        while data:
            data = data[os.write(fd, data) :]
        for ctx, alpn in zip(contexts, alpns, strict=True):
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
            ctx.load_verify_locations(cadata=anchors)
            if alpn:
                ctx.set_alpn_protocols(list(alpn))
    finally:
        os.close(fd)
    return contexts


def tls_contexts(
    certs: Sequence[x509.Certificate],
    key: PrivateKey,
    bundle: TrustBundle,
    alpn: Sequence[str] = (),
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """:func:`pem_tls_contexts` for holders of ``cryptography`` objects (tests, tools; never
    the proxy, which would then load ``cryptography``)."""
    from weft.identity.ca import certs_pem, key_pem

    return pem_tls_contexts(certs_pem(certs), key_pem(key), bundle.to_pem(), alpn)


def self_handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, name: str, rounds: int = 8
) -> dict[str, Any]:
    """Handshake ``client`` (expecting ``name``) with ``server`` in memory, both presenting
    their certificate; the server's certificate as ``getpeercert()`` shows it. ssl.SSLError
    (``SSLCertVerificationError`` for a certificate either side refuses) otherwise."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    ends = [
        client.wrap_bio(c_in, c_out, server_hostname=name),
        server.wrap_bio(s_in, s_out, server_side=True),
    ]
    done = [False, False]
    for _ in range(rounds):
        for i, end in enumerate(ends):
            if not done[i]:
                with contextlib.suppress(ssl.SSLWantReadError):
                    end.do_handshake()
                    done[i] = True
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done):
            break
    else:
        raise ssl.SSLError("the in-memory handshake did not complete")
    if ends[1].getpeercert() is None:
        raise ssl.SSLError("the server side did not see the client certificate")
    return ends[0].getpeercert() or {}


def _ssl_reason(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return str(exc.verify_message)
    return str(exc.reason or exc)


# -- the certificate client ----------------------------------------------------------------


class IdentityError(Exception):
    """No certificate could be obtained in time; the message gives the last reason."""


@dataclass(frozen=True, slots=True)
class _Certified:
    """What one certification installed (PEM, never parsed by ``cryptography`` here)."""

    keys: KeyAndCsr
    chain_pem: bytes  # leaf first, then its issuer(s)
    issuer_fp: str
    anchors_pem: bytes
    anchor_fps: tuple[str, ...]
    not_before: float
    not_after: float


class ProxyIdentity:
    """One proxy's identity (see the module docstring)."""

    def __init__(
        self,
        control: str | ControlClient,
        *,
        namespace: str,
        service_account: str,
        token_file: str,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        metrics: ProxyMetrics | None = None,
        clock: Callable[[], float] = time.time,
        backoff: ExponentialBackoff | None = None,
        timeout: float = 10.0,
        streams: ControlStreams | None = None,
    ) -> None:
        self.trust_domain = trust_domain
        self.name = dns_identity(namespace, service_account, trust_domain)
        self.spiffe = spiffe_id(namespace, service_account, trust_domain)
        self.token_file = token_file
        self._client = (
            control
            if isinstance(control, ControlClient)
            else ControlClient(control, timeout=timeout)
        )
        self._clock = clock
        self._backoff = backoff or ExponentialBackoff(base=0.5, maximum=30.0)
        self._pending: KeyAndCsr | None = None  # a key awaiting its certificate
        self._cert: _Certified | None = None
        self._server: ssl.SSLContext | None = None
        self._client_ctx: ssl.SSLContext | None = None
        self._h2_client: ssl.SSLContext | None = None
        self._renew_at = 0.0
        self._waiting_on = "the control plane"
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._trust = Follower(
            "identity_trust",
            self.name,
            lambda: self._client.stream(TRUST_WATCH_PATH),
            self._on_trust_item,
            registry=streams,
        )
        self.on_change: list[Callable[[], None]] = []
        self.refresh_count = 0
        self.last_error: str | None = None
        if metrics is not None:
            metrics.extra.append(self.render_metrics)

    def __repr__(self) -> str:
        return f"<ProxyIdentity {self.name} ready={self.ready}>"

    # -- what the proxy uses -----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether a certificate is held (possibly an expired one, while renewal fails)."""
        return self._cert is not None

    @property
    def server_context(self) -> ssl.SSLContext | None:
        """The current server context; None until the first certificate."""
        return self._server

    @property
    def client_context(self) -> ssl.SSLContext | None:
        """The current client context; None until the first certificate."""
        return self._client_ctx

    @property
    def h2_client_context(self) -> ssl.SSLContext | None:
        """The current client context for HTTP/2 (ALPN ``h2``); None until the first
        certificate."""
        return self._h2_client

    @property
    def next_renewal(self) -> float | None:
        return self._renew_at if self.ready else None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, first_timeout: float) -> None:
        """Get the first certificate (retrying with backoff; IdentityError after
        ``first_timeout`` seconds), then renew and watch the trust bundle in the background."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + first_timeout
        attempt = 0
        while True:
            remaining = deadline - loop.time()
            try:
                await asyncio.wait_for(self._certify(), max(remaining, 0.0))
                break
            except TimeoutError:
                self.last_error = self.last_error or f"{self._waiting_on} did not answer"
            except _FAILURES as exc:
                self._failed(exc)
            delay = self._backoff.delay(attempt)
            attempt += 1
            if loop.time() + delay >= deadline:
                raise IdentityError(
                    f"no certificate for {self.name} within {first_timeout:g}s: {self.last_error}"
                )
            await asyncio.sleep(delay)
        self._tasks = [loop.create_task(self._renew_loop(), name=f"identity-renew {self.name}")]
        self._trust.start()

    async def close(self) -> None:
        """Stop renewing and watching."""
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(tasks)
        await self._trust.close()

    def renew_soon(self, within: float = 0.0) -> None:
        """Renew within ``within`` seconds (a random point in it), unless due earlier."""
        self._renew_at = min(self._renew_at, self._clock() + random.uniform(0.0, within))
        self._wake.set()

    # -- certification -----------------------------------------------------------------------

    def _read_token(self) -> str:
        path = Path(self.token_file)
        with path.open("rb") as f:
            data = f.read(MAX_TOKEN_BYTES + 1)
        if len(data) > MAX_TOKEN_BYTES:
            raise ValueError(f"token file {path} is larger than {MAX_TOKEN_BYTES} bytes")
        token = data.decode("ascii", errors="replace").strip()
        if not token:
            raise ValueError(f"token file {path} is empty")
        return token

    async def _certify(self) -> None:
        token = self._read_token()
        if self._pending is None:
            self._waiting_on = "the key generator"
            self._pending = await generate(self.name, self.spiffe)
        keys = self._pending
        self._waiting_on = "the control plane"
        answer = await self._client.call(
            "POST", CERTIFY_PATH, {"token": token, "csr": keys.csr_pem}
        )
        cert, contexts = self._accept(answer, keys)
        self._install(cert, contexts)
        self._pending = None  # the next renewal makes a new key
        self.refresh_count += 1
        self.last_error = None
        received = self._clock()
        start = max(cert.not_before, received)
        delay = max(MIN_RENEW_DELAY, RENEW_FRACTION * (cert.not_after - start))
        self._renew_at = start + delay
        log.info(
            "identity %s certified until %s; renewing in %.0fs",
            self.name,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cert.not_after)),
            self._renew_at - received,
        )

    def _accept(self, answer: Any, keys: KeyAndCsr) -> tuple[_Certified, _Contexts]:
        """The certificate of a certify answer and its contexts; ValueError when not usable."""
        if not isinstance(answer, dict):
            raise ValueError("certify answer is not a JSON object")
        try:
            leaf = str(answer["certificate"]).encode()
            chain, anchors = answer["chain"], str(answer["trustAnchors"]).encode()
            times = answer["notBefore"], answer["notAfter"]
        except KeyError as exc:
            raise ValueError(f"certify answer lacks {exc}") from None
        if not isinstance(chain, list) or not chain:
            raise ValueError("certify answer's chain is not a list of PEM certificates")
        if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in times) or not (
            math.isfinite(times[0]) and math.isfinite(times[1]) and times[0] < times[1]
        ):
            raise ValueError("certify answer's notBefore/notAfter are not a time span")
        leaves = split_certs(leaf, "certificate")
        if len(leaves) != 1:
            raise ValueError("certify answer's certificate is not one PEM certificate")
        issuers = [c for p in chain for c in split_certs(str(p).encode(), "chain")]
        anchor_fps = tuple(fingerprint_pem(a) for a in split_certs(anchors, "trust anchors"))
        chain_pem = b"".join([*leaves, *issuers])
        try:
            contexts = mesh_tls_contexts(chain_pem, keys.key_pem, anchors)
            server, client, _ = contexts
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise ValueError("the control plane certified another key") from None
            raise ValueError(f"unusable certificate: {_ssl_reason(exc)}") from None
        try:
            peer = self_handshake(server, client, self.name)
        except ssl.SSLError as exc:
            raise ValueError(
                f"the certificate is not a valid {self.name} under the trust anchors: "
                f"{_ssl_reason(exc)}"
            ) from None
        if peer_identity(peer, self.trust_domain) != self.name:
            raise ValueError(f"the certificate is not for {self.name}")
        for field, stated in zip(("notBefore", "notAfter"), times, strict=True):
            actual = ssl.cert_time_to_seconds(str(peer.get(field)))
            if abs(actual - stated) > TIME_TOLERANCE:
                raise ValueError(f"certify answer's {field} is not the certificate's")
        cert = _Certified(
            keys=keys,
            chain_pem=chain_pem,
            issuer_fp=fingerprint_pem(issuers[0]),
            anchors_pem=anchors,
            anchor_fps=anchor_fps,
            not_before=float(times[0]),
            not_after=float(times[1]),
        )
        return cert, contexts

    def _install(self, cert: _Certified, contexts: _Contexts) -> None:
        self._cert = cert
        self._server, self._client_ctx, self._h2_client = contexts
        tls = self._client.tls
        if tls is not None:  # the control plane's API: verified with the mesh's current anchors
            try:
                tls.set_anchors(cert.anchors_pem)
            except ValueError as exc:
                log.warning("identity %s: keeping the control plane's anchors: %s", self.name, exc)
        for callback in list(self.on_change):
            try:
                callback()
            except Exception:
                log.exception("identity change callback failed")

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, ApiError):
            self.last_error = f"control plane answered {exc.status}: {exc.message}"
        else:
            self.last_error = str(exc) or type(exc).__name__

    # -- background --------------------------------------------------------------------------

    async def _renew_loop(self) -> None:
        attempt = 0
        while True:
            while True:
                self._wake.clear()
                delay = self._renew_at - self._clock()
                if delay <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            try:
                await self._certify()
                attempt = 0
            except Exception as exc:  # a dead renewal task would be an outage a day later
                if not isinstance(exc, _FAILURES):
                    log.exception("identity %s: renewal failed unexpectedly", self.name)
                self._failed(exc)
                delay = self._backoff.delay(attempt)
                attempt += 1
                self._renew_at = self._clock() + delay
                log.warning(
                    "identity %s: renewal failed (%s); serving with the current certificate, "
                    "retrying in %.1fs",
                    self.name,
                    self.last_error,
                    delay,
                )

    def _on_trust_item(self, item: Any) -> bool:
        if isinstance(item, dict) and "trustAnchors" in item:
            self._on_trust(item)
            return True
        return False

    def _on_trust(self, item: dict[str, Any]) -> None:
        """New anchors rebuild the contexts; a new issuer means renewing now."""
        try:
            anchors = str(item["trustAnchors"]).encode()
            fps = tuple(fingerprint_pem(a) for a in split_certs(anchors, "trust anchors"))
            issuer = str(item["issuer"]["fingerprint"]).replace(":", "").lower()
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("identity %s: ignoring a malformed trust update: %s", self.name, exc)
            return
        cert = self._cert
        if cert is None:
            return
        if fps != cert.anchor_fps:
            try:
                contexts = mesh_tls_contexts(cert.chain_pem, cert.keys.key_pem, anchors)
                server, client, _ = contexts
            except ssl.SSLError as exc:
                log.warning(
                    "identity %s: cannot use the new trust anchors: %s", self.name, _ssl_reason(exc)
                )
                return
            new = _Certified(
                cert.keys, cert.chain_pem, cert.issuer_fp, anchors, fps, cert.not_before,
                cert.not_after,
            )  # fmt: skip
            self._install(new, contexts)
            log.info("identity %s: trust anchors now %d", self.name, len(fps))
            try:
                self_handshake(server, client, self.name)
            except ssl.SSLError:
                self.renew_soon()  # our own chain lost its anchor: a new leaf is overdue
        if cert.issuer_fp != issuer:
            self.renew_soon(ISSUER_JITTER)

    # -- views -------------------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """The admin ``/identity`` view: PEM and times, never the key. ``pem`` is the chain
        (leaf first), ``trustAnchorsPem`` the anchors; ``notBefore``/``notAfter`` the leaf's
        (epoch seconds)."""
        cert = self._cert
        return {
            "identity": self.name,
            "spiffe": self.spiffe,
            "ready": self.ready,
            "pem": cert.chain_pem.decode() if cert else "",
            "trustAnchorsPem": cert.anchors_pem.decode() if cert else "",
            "notBefore": cert.not_before if cert else None,
            "notAfter": cert.not_after if cert else None,
            "refreshCount": self.refresh_count,
            "lastError": self.last_error,
            "nextRenewal": self.next_renewal,
        }

    def render_metrics(self) -> str:
        out = []
        if self._cert is not None:
            out.append(
                render_family(
                    "identity_cert_expiration_timestamp_seconds",
                    "gauge",
                    "Time when this proxy's current mTLS identity certificate expires "
                    "(seconds since the UNIX epoch).",
                    # whole seconds, as Linkerd (round: the old ":.0f" formatting's rounding)
                    [((), round(self._cert.not_after))],
                )
            )
        out.append(
            render_family(
                "identity_cert_refresh_count",
                "counter",
                "How many times this proxy's mTLS identity certificate has been obtained "
                "from the control plane.",
                [((), self.refresh_count)],
            )
        )
        return "".join(out)
