"""The control plane's identity service: certifies proxies, serves the trust bundle, rotates CAs.

:class:`IdentityService` keeps the mesh's CA material (:class:`weft.identity.ca.Material`) in its
directory (``<state dir>/identity``, mode 0700: ``ca.json`` 0600 and the per-pod token key
``token.key`` 0600), generated at first start or imported from the user's files, and serves the
API group ``/api/v1/identity/`` (reference with examples in docs/identity.md):

- ``POST certify`` ``{"token", "csr"}``: the token reviewed by the ``TokenReviewer``
  (:mod:`weft.control.tokenreview`: TokenReview on a cluster, the local mesh's own tokens
  otherwise), then a leaf for exactly the identity the review proves, signed by the issuer; 401
  bad token, 400 bad CSR, 403 a CSR naming another identity, 503 the review unavailable;
- ``GET trust[?watch=1]``: the anchors and the issuer's fingerprint; as NDJSON, again on every
  change, heartbeat ``{}``;
- ``GET status``: anchors, issuer, and warnings for CAs expiring within 60 days or expired;
- ``POST issuer`` (new issuer from the newest anchor whose key is held, or a supplied one),
  ``POST anchors`` (generate or add), ``DELETE anchors/<fingerprint>``: rotations;
- ``GET pods/<ns>/<name>``: that pod's proxy's ``/identity`` admin view, fetched from its admin
  port (only in the allowed networks: the pod range and loopback, as metrics scraping), with its
  PEM described here (:func:`describe_view`: the proxy does not load ``cryptography``).

Every change is saved before it takes effect, so a restarted control plane keeps its CA.

Not for: CA mechanics (:mod:`weft.identity.ca`), token format (:mod:`weft.identity.tokens`), or
the rest of the API (:mod:`weft.control.api`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weft.addr import parse_hostport
from weft.control.httpserver import HttpError, Request, Response, Streaming, StreamWriter
from weft.control.metrics import fetch
from weft.control.state import ClusterState
from weft.control.tokenreview import LocalTokenReviewer, ReviewUnavailable, TokenReviewer
from weft.identity.ca import (
    LEAF_LIFETIME,
    Authority,
    CaError,
    CsrIdentityMismatch,
    InvalidCsr,
    Material,
    TrustBundle,
    cert_pem,
    check_issuer,
    describe,
    fingerprint,
    import_digest,
    load_certs_pem,
    load_material,
    normalize_fingerprint,
    not_after,
    not_before,
    save_material,
)
from weft.identity.names import (
    DEFAULT_TRUST_DOMAIN,
    check_trust_domain,
    dns_identity,
    spiffe_id,
)
from weft.identity.tokens import InvalidToken, TokenKey
from weft.resources import pods

log = logging.getLogger("weft.control.identity")

TOKEN_KEY_FILE = "token.key"
DEFAULT_ADMIN_PORT = 4191
EXPIRY_WARNING = 60 * 86400.0
HEARTBEAT = 5.0
MIN_FINGERPRINT_PREFIX = 8
VIEW_TIMEOUT = 3.0
MAX_VIEW_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class IdentitySettings:
    """``weft control``'s identity flags: trust domain, leaf lifetime, and the user's own CA
    files (all three or none)."""

    trust_domain: str = DEFAULT_TRUST_DOMAIN
    leaf_lifetime: float = LEAF_LIFETIME
    trust_anchors: str | None = None
    issuer_cert: str | None = None
    issuer_key: str | None = None

    def __post_init__(self) -> None:
        check_trust_domain(self.trust_domain)
        if not (math.isfinite(self.leaf_lifetime) and self.leaf_lifetime > 0):
            raise ValueError(f"leaf-lifetime must be positive, got {self.leaf_lifetime!r}")
        files = (self.trust_anchors, self.issuer_cert, self.issuer_key)
        if any(f is not None for f in files) and not all(files):
            raise ValueError(
                "trust-anchors, issuer-cert and issuer-key go together: give all three or none"
            )

    @property
    def imports(self) -> bool:
        return self.trust_anchors is not None


class IdentityService:
    """The identity service (see the module docstring); ``handle`` is its API SubHandler."""

    def __init__(
        self,
        directory: Path,
        state: ClusterState,
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        leaf_lifetime: float = LEAF_LIFETIME,
        clock: Callable[[], float] = time.time,
        admin_port: int = DEFAULT_ADMIN_PORT,
        heartbeat: float = HEARTBEAT,
        allowed_networks: Sequence[str] = ("10.244.0.0/16", "127.0.0.0/8"),
        reviewer: TokenReviewer | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.state = state
        # who a token proves to be: TokenReview on a cluster; the local mesh's own tokens else
        self.reviewer: TokenReviewer = reviewer or LocalTokenReviewer(
            lambda: self.token_key, state, clock=clock
        )
        self.trust_domain = check_trust_domain(trust_domain)
        if not (math.isfinite(leaf_lifetime) and leaf_lifetime > 0):
            raise ValueError(f"leaf lifetime must be positive, got {leaf_lifetime!r}")
        self.leaf_lifetime = leaf_lifetime
        self.clock = clock
        self.admin_port = admin_port
        self.heartbeat = heartbeat
        self.networks = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]
        self._material: Material | None = None
        self._token_key: TokenKey | None = None
        self._watchers: set[asyncio.Event] = set()

    def __repr__(self) -> str:
        return f"<IdentityService {self.directory} trust domain {self.trust_domain}>"

    # -- material ----------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """Whether the CA material is loaded (certificates can be issued)."""
        return self._material is not None

    @property
    def material(self) -> Material:
        if self._material is None:
            raise HttpError(503, "the identity service has not loaded its CA yet")
        return self._material

    @property
    def token_key(self) -> TokenKey:
        if self._token_key is None:
            raise HttpError(503, "the identity service has not loaded its token key yet")
        return self._token_key

    def load_or_init(self) -> None:
        """Load the material and token key from the directory, generating what is missing
        (first start). CaError when saved material is unusable (never silently replaced)."""
        if self._material is None:
            material = load_material(self.directory)
            if material is None:
                material = Material.generate(self.trust_domain, now=self.clock())
                save_material(self.directory, material)
                log.info(
                    "generated a trust anchor and an issuer for %s in %s",
                    self.trust_domain,
                    self.directory,
                )
            self._material = material
        self._token_key = TokenKey.load_or_create(self.directory / TOKEN_KEY_FILE)
        issuer = self._material.issuer.cert
        log.info(
            "identity: %d trust anchor(s), issuer %s valid until %s",
            len(self._material.bundle),
            fingerprint(issuer)[:16],
            describe(issuer)["notAfter"],
        )

    def import_material(
        self, anchors_pem: bytes, issuer_cert_pem: bytes, issuer_key_pem: bytes
    ) -> bool:
        """Use the user's anchors and issuer (validated: the issuer is a CA that chains to one
        of the anchors, holds the matching key, and is valid now; CaError saying what is wrong).

        The same material imported again keeps what was saved since (rotations through the
        API), so restarting with the same files changes nothing: returns False then, True when
        the material was installed."""
        bundle = TrustBundle.from_pem(anchors_pem)
        issuer = Authority.from_pem(issuer_cert_pem, issuer_key_pem)
        check_issuer(issuer, bundle, now=self.clock())
        digest = import_digest(bundle, issuer.cert)
        current = self._material or load_material(self.directory)
        if current is not None and current.imported == digest:
            self._material = current
            return False
        keys = {}
        if current is not None:
            keys = {fp: k for fp, k in current.anchor_keys.items() if bundle.find(fp)}
        self._install(Material(bundle, issuer, keys, digest))
        log.info("imported %d trust anchor(s) and an issuer", len(bundle))
        return True

    def import_files(self, trust_anchors: str, issuer_cert: str, issuer_key: str) -> bool:
        """:meth:`import_material` from files; CaError naming a file that cannot be read."""
        data: list[bytes] = []
        for path in (trust_anchors, issuer_cert, issuer_key):
            try:
                data.append(Path(path).read_bytes())
            except OSError as exc:
                raise CaError(f"cannot read {path}: {exc.strerror or exc}") from None
        return self.import_material(*data)

    def _install(self, material: Material) -> None:
        """Save, then use, then tell the trust watchers."""
        save_material(self.directory, material)
        self._material = material
        for event in self._watchers:
            event.set()

    def _save_or_500(self, material: Material) -> None:
        try:
            self._install(material)
        except OSError as exc:
            log.error("cannot save the CA material in %s: %s", self.directory, exc)
            raise HttpError(500, f"cannot save the CA material: {exc.strerror or exc}") from None

    # -- certification -----------------------------------------------------------------------

    async def certify(self, token: str, csr_pem: bytes) -> dict[str, Any]:
        """A leaf for the identity the token's review proves; HttpError 401/400/403/503
        otherwise."""
        try:
            claims = await self.reviewer.review(token)
            identity = dns_identity(claims.namespace, claims.service_account, self.trust_domain)
            spiffe = spiffe_id(claims.namespace, claims.service_account, self.trust_domain)
        except (InvalidToken, ValueError) as exc:
            raise HttpError(401, f"invalid token: {exc}") from None
        except ReviewUnavailable as exc:
            raise HttpError(503, f"cannot review the token now: {exc}") from None
        material = self.material
        try:
            leaf = material.issuer.sign_leaf(
                csr_pem, identity, spiffe, now=self.clock(), lifetime=self.leaf_lifetime
            )
        except CsrIdentityMismatch as exc:
            raise HttpError(403, str(exc)) from None
        except InvalidCsr as exc:
            raise HttpError(400, f"invalid CSR: {exc}") from None
        except CaError as exc:
            raise HttpError(503, str(exc)) from None
        log.debug("certified %s/%s as %s", claims.namespace, claims.pod, identity)
        return {
            "identity": identity,
            "spiffe": spiffe,
            "certificate": cert_pem(leaf).decode(),
            "chain": [cert_pem(material.issuer.cert).decode()],
            "trustAnchors": material.bundle.to_pem().decode(),
            "notBefore": not_before(leaf),
            "notAfter": not_after(leaf),
        }

    # -- views -------------------------------------------------------------------------------

    def trust(self) -> dict[str, Any]:
        material = self.material
        return {
            "trustAnchors": material.bundle.to_pem().decode(),
            "issuer": {
                "fingerprint": fingerprint(material.issuer.cert),
                "notAfter": not_after(material.issuer.cert),
            },
        }

    def status(self) -> dict[str, Any]:
        material = self.material
        now = self.clock()
        anchors = [
            {**describe(a), "hasKey": fp in material.anchor_keys}
            for a, fp in zip(material.bundle.anchors, material.bundle.fingerprints(), strict=True)
        ]
        issuer = {
            **describe(material.issuer.cert),
            "anchor": check_issuer(material.issuer, material.bundle),
        }
        warnings = []
        for kind, info in [*(("trust anchor", a) for a in anchors), ("issuer", issuer)]:
            warning = _expiry_warning(kind, info, now)
            if warning is not None:
                warnings.append(warning)
        return {
            "trustDomain": self.trust_domain,
            "leafLifetime": self.leaf_lifetime,
            "anchors": anchors,
            "issuer": issuer,
            "warnings": warnings,
        }

    # -- rotations ---------------------------------------------------------------------------

    def rotate_issuer(self, body: dict[str, Any]) -> dict[str, Any]:
        """``{}``: a new issuer from the newest anchor whose key is held (409 when none);
        ``{"certificate", "key"}``: the supplied issuer (400 when unusable)."""
        material = self.material
        now = self.clock()
        if not body:
            held = [a for a in material.bundle.anchors if fingerprint(a) in material.anchor_keys]
            if not held:
                raise HttpError(
                    409,
                    "this control plane holds no trust anchor's key: supply an issuer "
                    '({"certificate": PEM, "key": PEM}) or generate an anchor first',
                )
            # newest by start time; among equals, the one added last
            _, newest = max(enumerate(held), key=lambda p: (not_before(p[1]), p[0]))
            anchor = Authority(newest, material.anchor_keys[fingerprint(newest)])
            try:
                issuer = anchor.new_issuer(self.trust_domain, now=now)
            except CaError as exc:
                raise HttpError(409, str(exc)) from None
        else:
            cert, key = _pem_fields(body, "certificate", "key")
            try:
                issuer = Authority.from_pem(cert, key)
                check_issuer(issuer, material.bundle, now=now)
            except CaError as exc:
                raise HttpError(400, f"unusable issuer: {exc}") from None
        self._save_or_500(dataclasses.replace(material, issuer=issuer))
        log.info("issuer rotated: now %s", fingerprint(issuer.cert)[:16])
        return {"issuer": describe(issuer.cert)}

    def add_anchor(self, body: dict[str, Any]) -> dict[str, Any]:
        """``{"generate": true}``: a new anchor, key kept; ``{"certificate": PEM}``: the
        supplied one (no key). Adding an anchor already in the bundle changes nothing."""
        material = self.material
        keys = dict(material.anchor_keys)
        if body.get("generate") is True and set(body) == {"generate"}:
            anchor = Authority.new_anchor(self.trust_domain, now=self.clock())
            cert = anchor.cert
            keys[fingerprint(cert)] = anchor.key
        elif set(body) == {"certificate"}:
            (pem,) = _pem_fields(body, "certificate")
            try:
                certs = load_certs_pem(pem, "certificate")
                if len(certs) != 1:
                    raise CaError(f"expected one certificate, got {len(certs)}")
                cert = certs[0]
            except CaError as exc:
                raise HttpError(400, f"unusable trust anchor: {exc}") from None
        else:
            raise HttpError(400, 'request body must be {"generate": true} or {"certificate": PEM}')
        fp = fingerprint(cert)
        try:
            bundle = material.bundle.with_anchor(cert)
        except CaError as exc:  # not a CA
            raise HttpError(400, f"unusable trust anchor: {exc}") from None
        added = bundle is not material.bundle
        if added:
            self._save_or_500(dataclasses.replace(material, bundle=bundle, anchor_keys=keys))
            log.info("trust anchor %s added", fp[:16])
        return {"fingerprint": fp, "added": added, "anchor": describe(cert)}

    def remove_anchor(self, fp_text: str) -> dict[str, Any]:
        """Remove an anchor by fingerprint (or a unique prefix of at least 8 hex digits); 409
        while the issuer chains to it."""
        material = self.material
        want = normalize_fingerprint(fp_text)
        matches = [fp for fp in material.bundle.fingerprints() if fp.startswith(want)]
        if len(want) < MIN_FINGERPRINT_PREFIX or not matches:
            raise HttpError(404, f"no trust anchor with fingerprint {fp_text!r}")
        if len(matches) > 1:
            raise HttpError(400, f"fingerprint prefix {fp_text!r} matches several anchors")
        (fp,) = matches
        if check_issuer(material.issuer, material.bundle) == fp:
            raise HttpError(
                409,
                f"the issuer chains to anchor {fp[:16]}: rotate the issuer to one signed by "
                "another anchor first",
            )
        keys = {k: v for k, v in material.anchor_keys.items() if k != fp}
        bundle = material.bundle.without(fp)
        self._save_or_500(dataclasses.replace(material, bundle=bundle, anchor_keys=keys))
        log.info("trust anchor %s removed", fp[:16])
        return {"fingerprint": fp, "removed": True}

    # -- the pods' admin views ---------------------------------------------------------------

    def _admin_address(self, pod: Mapping[str, Any], ref: str) -> tuple[str, int]:
        admin = pods.proxy_admin(pod)
        try:
            if admin:
                host, port = parse_hostport(admin)
            else:
                addresses = pods.ips(pod)
                if not addresses:
                    raise HttpError(502, f"pod {ref} has no IP address yet")
                host, port = addresses[0], self.admin_port
            addr = ipaddress.ip_address(host)
        except ValueError:
            raise HttpError(
                502, f"pod {ref} has an invalid proxy admin address {admin!r}"
            ) from None
        if not any(addr in net for net in self.networks):
            raise HttpError(
                502, f"not contacting the proxy of {ref} at {host}: outside the pod network"
            )
        return host, port

    async def pod_view(self, namespace: str, name: str) -> dict[str, Any]:
        ref = f"{namespace}/{name}"
        pod = self.state.get("Pod", namespace, name)
        if pod is None:
            raise HttpError(404, f"Pod {ref} not found")
        host, port = self._admin_address(pod, ref)
        try:
            status, body = await fetch(host, port, "/identity", VIEW_TIMEOUT, MAX_VIEW_BYTES)
        except (OSError, TimeoutError, ValueError) as exc:
            reason = "no answer" if isinstance(exc, TimeoutError) else str(exc)
            raise HttpError(502, f"proxy of pod {ref} at {host}:{port}: {reason}") from None
        if status == 404:
            raise HttpError(502, f"proxy of pod {ref} at {host}:{port} has no identity")
        if status != 200:
            raise HttpError(502, f"proxy of pod {ref} at {host}:{port} answered HTTP {status}")
        try:
            view = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise HttpError(502, f"proxy of pod {ref} answered invalid JSON") from None
        try:
            view = describe_view(view)
        except CaError as exc:
            raise HttpError(502, f"proxy of pod {ref} answered unreadable PEM: {exc}") from None
        return {"pod": ref, "admin": f"{host}:{port}", "proxy": view}

    # -- HTTP ---------------------------------------------------------------------------------

    async def handle(self, request: Request, rest: list[str]) -> Response | Streaming:
        """``/api/v1/identity/<rest...>`` (see the module docstring)."""
        method = request.method
        match rest:
            case ["certify"]:
                _method(method, "POST")
                body = _object(request)
                token, csr = body.get("token"), body.get("csr")
                if not isinstance(token, str) or not isinstance(csr, str):
                    raise HttpError(400, 'request body must be {"token": str, "csr": PEM}')
                return Response.json(200, await self.certify(token, csr.encode()))
            case ["trust"]:
                _method(method, "GET")
                if request.query.get("watch", "") in ("1", "true"):
                    self.trust()  # 503 now, rather than a stream that ends at once
                    return Streaming(self._pump_trust)
                return Response.json(200, self.trust())
            case ["status"]:
                _method(method, "GET")
                return Response.json(200, self.status())
            case ["issuer"]:
                _method(method, "POST")
                return Response.json(200, self.rotate_issuer(_object(request)))
            case ["anchors"]:
                _method(method, "POST")
                return Response.json(200, self.add_anchor(_object(request)))
            case ["anchors", fp]:
                _method(method, "DELETE")
                return Response.json(200, self.remove_anchor(fp))
            case ["pods", namespace, name]:
                _method(method, "GET")
                return Response.json(200, await self.pod_view(namespace, name))
        raise HttpError(404, f"no such endpoint: {request.path}")

    async def _pump_trust(self, writer: StreamWriter) -> None:
        wake = asyncio.Event()
        self._watchers.add(wake)
        try:
            await writer.send(_line(self.trust()))
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self.heartbeat)
                if wake.is_set():
                    wake.clear()
                    await writer.send(_line(self.trust()))
                else:
                    await writer.send(b"{}\n")
        finally:
            self._watchers.discard(wake)


def describe_view(view: Any) -> Any:
    """A proxy's ``/identity`` view with its PEM described (the proxy has no ``cryptography``):
    ``chain`` from ``pem`` and ``trustAnchors`` from ``trustAnchorsPem``, each a list of
    :func:`weft.identity.ca.describe`; other views unchanged. CaError for unreadable PEM."""
    if not isinstance(view, dict):
        return view
    out = dict(view)
    for pem_field, field in (("pem", "chain"), ("trustAnchorsPem", "trustAnchors")):
        pem = view.get(pem_field)
        if isinstance(pem, str):
            certs = load_certs_pem(pem.encode(), pem_field) if pem.strip() else []
            out[field] = [describe(c) for c in certs]
    return out


def _expiry_warning(kind: str, info: dict[str, Any], now: float) -> dict[str, Any] | None:
    left = info["notAfterEpoch"] - now
    if left > EXPIRY_WARNING:
        return None
    expired = left <= 0
    what = f"{kind} {info['subject']} ({info['fingerprint'][:16]})"
    message = (
        f"{what} expired at {info['notAfter']}"
        if expired
        else f"{what} expires at {info['notAfter']}, in {left / 86400:.0f} days"
    )
    return {
        "kind": kind,
        "fingerprint": info["fingerprint"],
        "notAfter": info["notAfter"],
        "expired": expired,
        "message": message,
    }


def _method(method: str, allowed: str) -> None:
    if method != allowed:
        raise HttpError(405, f"method {method} not allowed here; use {allowed}")


def _object(request: Request) -> dict[str, Any]:
    body = request.json()
    if not isinstance(body, dict):
        raise HttpError(400, "request body must be a JSON object")
    return body


def _pem_fields(body: dict[str, Any], *names: str) -> list[bytes]:
    if set(body) != set(names) or not all(isinstance(body[n], str) for n in names):
        fields = ", ".join(f'"{n}": PEM' for n in names)
        raise HttpError(400, f"request body must be {{{fields}}}")
    return [str(body[n]).encode() for n in names]


def _line(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"
