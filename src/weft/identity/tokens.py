"""Per-pod tokens: the local runtime's stand-in for Kubernetes service-account tokens.

The control plane issues one token per meshed pod (namespace, pod name, the Pod object's uid, its
service account) on the node agent's TokenRequest (:mod:`weft.control.kubeapi.authn`), and the
agent makes it readable only inside that pod; the pod's proxy presents it to the control plane
with its CSR. The control plane checks the signature here, then (a TokenReview)
that the store still holds that pod with that uid and service account, so a token dies with its
pod.

Format: ``v1.<b64url(JSON claims)>.<b64url(HMAC-SHA256(key, "v1.<claims part>"))>``, no padding.
The key is 32 random bytes in ``<state dir>/identity/token.key`` (0600), the control plane's,
created at its first start (:meth:`TokenKey.load_or_create` is safe if two race). Verification
checks the size, then the MAC (constant time) before it parses anything, then every field
strictly.

Not for: deciding whether the pod still exists (:mod:`weft.control.identity`), or writing tokens
into pods (the runtime).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import math
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weft.identity.ca import ensure_private_dir

KEY_BYTES = 32
MAX_TOKEN_BYTES = 4096
MAX_FIELD = 253
VERSION = "v1"
_B64 = re.compile(r"[A-Za-z0-9_-]+")
_FIELDS = {
    "namespace": "namespace",
    "pod": "pod",
    "uid": "uid",
    "serviceAccount": "service_account",
    "issuedAt": "issued_at",
}


class InvalidToken(Exception):
    """A token that does not verify; the message says why."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    namespace: str
    pod: str
    uid: str
    service_account: str
    issued_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "pod": self.pod,
            "uid": self.uid,
            "serviceAccount": self.service_account,
            "issuedAt": self.issued_at,
        }


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    if not _B64.fullmatch(text):
        raise InvalidToken(f"token {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken(f"token {what} is not base64url") from None


def _claims(raw: bytes) -> TokenClaims:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidToken("token claims are not JSON") from None
    if not isinstance(data, dict):
        raise InvalidToken("token claims are not a JSON object")
    if set(data) != set(_FIELDS):
        missing = sorted(set(_FIELDS) - set(data))
        extra = sorted(set(data) - set(_FIELDS))
        raise InvalidToken(f"token claims: missing fields {missing}, unknown fields {extra}")
    values: dict[str, Any] = {}
    for name, attr in _FIELDS.items():
        value = data[name]
        if name == "issuedAt":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidToken("token claim issuedAt must be a number")
            if not math.isfinite(value) or value < 0:
                raise InvalidToken("token claim issuedAt must be a finite time >= 0")
            values[attr] = float(value)
        elif not isinstance(value, str) or not 0 < len(value) <= MAX_FIELD:
            raise InvalidToken(f"token claim {name} must be a string of 1..{MAX_FIELD} chars")
        else:
            values[attr] = value
    return TokenClaims(**values)


class TokenKey:
    """The HMAC key that signs and verifies tokens."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a token key is {KEY_BYTES} bytes, got {len(key)}")
        self._key = bytes(key)

    def __repr__(self) -> str:
        return "<TokenKey>"

    @classmethod
    def generate(cls) -> TokenKey:
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def load_or_create(cls, path: Path) -> TokenKey:
        """The key in ``path``, created (32 random bytes, mode 0600, parent directory 0700)
        when absent. Processes racing to create it all end with the same key: the file appears
        complete or not at all (written aside, then hard-linked into place, which fails when
        another process got there first). ValueError when the file is not a key."""
        path = Path(path)
        try:
            return cls._read(path)
        except FileNotFoundError:
            pass
        ensure_private_dir(path.parent)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
            os.close(fd)
            fd = -1
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return cls._read(path)

    @classmethod
    def _read(cls, path: Path) -> TokenKey:
        data = path.read_bytes()
        if len(data) != KEY_BYTES:
            raise ValueError(
                f"token key file {path} holds {len(data)} bytes, not {KEY_BYTES}: remove it to "
                "make a new key (every pod's token then changes)"
            )
        return cls(data)

    def _mac(self, signed: bytes) -> bytes:
        return hmac.new(self._key, signed, hashlib.sha256).digest()

    def issue(self, claims: TokenClaims) -> str:
        """A token carrying ``claims``."""
        body = json.dumps(claims.to_json(), separators=(",", ":"), sort_keys=True).encode()
        signed = f"{VERSION}.{_b64encode(body)}"
        token = f"{signed}.{_b64encode(self._mac(signed.encode('ascii')))}"
        if len(token) > MAX_TOKEN_BYTES:
            raise ValueError(f"token claims too long: token over {MAX_TOKEN_BYTES} bytes")
        return token

    def verify(self, token: str) -> TokenClaims:
        """The claims of a token this key issued; :class:`InvalidToken` saying why not."""
        if not isinstance(token, str):
            raise InvalidToken("token must be a string")
        token = token.strip()
        if not token:
            raise InvalidToken("token is empty")
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidToken(f"token longer than {MAX_TOKEN_BYTES} bytes")
        if not token.isascii():
            raise InvalidToken("not a weft token: non-ASCII characters")
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != VERSION:
            raise InvalidToken("not a weft token: expected v1.<claims>.<signature>")
        signed = f"{parts[0]}.{parts[1]}".encode("ascii")
        mac = _b64decode(parts[2], "signature")
        if not hmac.compare_digest(mac, self._mac(signed)):
            raise InvalidToken(
                "token signature does not match: altered, truncated, or signed by another "
                "control plane's key"
            )
        return _claims(_b64decode(parts[1], "claims"))
