"""A proxy identity from files: a certificate chain, its key and the trust anchors, as given.

For a proxy that runs outside a Weft control plane (with ``--discovery-file``, the benchmark's
meshed pair, or another CA such as cert-manager renewing files in place): ``weft proxy
--identity-cert chain.pem --identity-key key.pem --trust-anchors anchors.pem``. The identity is
the certificate's DNS name (or the ``name`` given, which the certificate must carry); the files
are read again when :meth:`StaticIdentity.reload` is called (``SIGHUP``), and the contexts are
swapped for new connections only.

Checks, with the ``ssl`` module only (``cryptography`` stays out of the proxy process): the chain
and anchors are PEM certificates, the key is an unencrypted ECDSA key and is the leaf's (OpenSSL
refuses a mismatch), and the leaf names an identity of the trust domain. The leaf's names are
read with CPython's ``ssl._ssl._test_decode_cert`` (what ``ssl``'s own tests use); on a Python
without it, pass ``name``.

In the mesh, :class:`weft.proxy.identity.ProxyIdentity` is used instead: its key never leaves
the process and the control plane certifies it.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import ssl
from collections.abc import Callable
from typing import Any

from weft.identity.names import DEFAULT_TRUST_DOMAIN, parse_dns_identity
from weft.proxy.identity import MAX_PEM_BYTES, mesh_tls_contexts, split_certs

# the DER of the OID id-ecPublicKey (1.2.840.10045.2.1), in a PKCS#8 key's algorithm
_EC_OID = bytes.fromhex("06072a8648ce3d0201")
_PEM_KEY = re.compile(rb"-----BEGIN ([A-Z ]*PRIVATE KEY)-----\r?\n([A-Za-z0-9+/=\r\n]+?)-----END")


def _decoder() -> Callable[[str], dict[str, Any]] | None:
    decode: Callable[[str], dict[str, Any]] | None = getattr(ssl._ssl, "_test_decode_cert", None)  # type: ignore[attr-defined]
    return decode


def _check_key(data: bytes, key_file: str) -> None:
    """ValueError unless ``data`` is one unencrypted PEM ECDSA private key."""
    if len(data) > MAX_PEM_BYTES:
        raise ValueError(f"{key_file}: larger than {MAX_PEM_BYTES} bytes")
    m = _PEM_KEY.search(data)
    if m is None:
        raise ValueError(f"{key_file}: no PEM private key found")
    label = m.group(1).decode()
    if label == "EC PRIVATE KEY":
        return
    if label != "PRIVATE KEY":
        raise ValueError(f"{key_file}: must be an unencrypted ECDSA key, got {label}")
    try:
        der = base64.b64decode(m.group(2))
    except binascii.Error:
        raise ValueError(f"{key_file}: not a PEM private key") from None
    if _EC_OID not in der[:32]:  # version, then the algorithm: within the first bytes
        raise ValueError(f"{key_file}: must be an ECDSA key")


def _sans_of_leaf(leaf: bytes, chain_file: str) -> list[str] | None:
    """The leaf's DNS names; None when this Python cannot decode certificates."""
    decode = _decoder()
    if decode is None:
        return None
    fd = os.memfd_create("weft-leaf", os.MFD_CLOEXEC)
    try:
        os.write(fd, leaf)
        decoded = decode(f"/proc/self/fd/{fd}")
    except ssl.SSLError as exc:
        raise ValueError(f"{chain_file}: cannot read the certificate: {exc}") from None
    finally:
        os.close(fd)
    return [v for k, v in decoded.get("subjectAltName", ()) if k == "DNS"]


def _name_of(leaf: bytes, chain_file: str, trust_domain: str, wanted: str | None) -> str:
    sans = _sans_of_leaf(leaf, chain_file)
    if wanted is not None:
        if parse_dns_identity(wanted, trust_domain) is None:
            raise ValueError(
                f"identity {wanted!r} is not of the form "
                f"<sa>.<ns>.serviceaccount.identity.{trust_domain}"
            )
        if sans is not None and wanted not in sans:
            raise ValueError(f"{chain_file}: the certificate does not name {wanted}")
        return wanted
    if sans is None:
        raise ValueError(
            "this Python cannot read certificate names without cryptography: give the "
            "identity name explicitly"
        )
    if not sans:
        raise ValueError(f"{chain_file}: the certificate has no DNS subjectAltName")
    for san in sans:
        if parse_dns_identity(san, trust_domain) is not None:
            return san
    raise ValueError(
        f"{chain_file}: no DNS name of the form <sa>.<ns>.serviceaccount.identity.{trust_domain}"
    )


class StaticIdentity:
    """The :class:`~weft.proxy.inbound.tls.TlsSource` of a proxy whose certificate comes from
    files."""

    def __init__(
        self,
        *,
        chain_file: str,
        key_file: str,
        anchors_file: str,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        name: str | None = None,
    ) -> None:
        self.chain_file = chain_file
        self.key_file = key_file
        self.anchors_file = anchors_file
        self.trust_domain = trust_domain
        self._wanted = name
        self.name = ""
        self.server_context: ssl.SSLContext | None = None
        self.client_context: ssl.SSLContext | None = None
        self.h2_client_context: ssl.SSLContext | None = None
        self.reload()

    def reload(self) -> None:
        """Read the files again (ValueError or OSError naming the problem; nothing changes)."""
        with open(self.chain_file, "rb") as f:
            certs = split_certs(f.read(), self.chain_file)
        with open(self.key_file, "rb") as f:
            key = f.read()
        with open(self.anchors_file, "rb") as f:
            anchors = b"".join(split_certs(f.read(), self.anchors_file))
        _check_key(key, self.key_file)
        name = _name_of(certs[0], self.chain_file, self.trust_domain, self._wanted)
        try:
            server, client, h2_client = mesh_tls_contexts(b"".join(certs), key, anchors)
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise ValueError(f"{self.key_file} is not the key of {self.chain_file}") from None
            raise ValueError(f"cannot use the identity files: {exc}") from None
        self.name, self.server_context, self.client_context = name, server, client
        self.h2_client_context = h2_client

    def view(self) -> dict[str, object]:
        return {
            "identity": self.name,
            "source": "files",
            "files": {
                "chain": self.chain_file,
                "key": self.key_file,
                "anchors": self.anchors_file,
            },
        }


__all__ = ["StaticIdentity"]
