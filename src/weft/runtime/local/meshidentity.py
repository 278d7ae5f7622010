"""The local mesh's identity settings: the user's own CA files (``weft up --trust-anchors ...``)
and the record of what the mesh was started with, so a restart keeps them.

Not for: the CA itself (:mod:`weft.identity.ca`, :mod:`weft.control.identity`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weft.identity.names import DEFAULT_TRUST_DOMAIN, check_trust_domain
from weft.inbound import DEFAULT_POLICIES, DEFAULT_POLICY

# a PEM file's header is near its start; reading this much is enough to recognise one
_PEM_PEEK = 64 * 1024


@dataclass(frozen=True, slots=True)
class IssuerFiles:
    """CA material the user supplies instead of the one the control plane generates: the trust
    anchors (PEM bundle), and the issuer's certificate and private key (PEM). Absolute paths:
    the control plane runs from ``/``."""

    trust_anchors: Path
    issuer_cert: Path
    issuer_key: Path

    def __post_init__(self) -> None:
        for flag, path in self.flags():
            if not path.is_absolute():
                raise ValueError(f"{flag} must be an absolute path, got {path}")

    def flags(self) -> list[tuple[str, Path]]:
        return [
            ("--trust-anchors", self.trust_anchors),
            ("--issuer-cert", self.issuer_cert),
            ("--issuer-key", self.issuer_key),
        ]

    @classmethod
    def from_flags(
        cls, trust_anchors: str | None, issuer_cert: str | None, issuer_key: str | None
    ) -> IssuerFiles | None:
        """The three flags' files (made absolute), or None when none is given. ValueError when
        only some are given, or a file cannot be read or is not PEM."""
        given = {
            "--trust-anchors": trust_anchors,
            "--issuer-cert": issuer_cert,
            "--issuer-key": issuer_key,
        }
        missing = [flag for flag, value in given.items() if not value]
        if len(missing) == len(given):
            return None
        if missing:
            raise ValueError(
                "--trust-anchors, --issuer-cert and --issuer-key go together (or none, and the "
                f"control plane makes its own CA): missing {', '.join(missing)}"
            )
        paths = {flag: Path(os.path.abspath(str(value))) for flag, value in given.items()}
        for flag, path in paths.items():
            _check_pem(flag, path)
        return cls(paths["--trust-anchors"], paths["--issuer-cert"], paths["--issuer-key"])


def _check_pem(flag: str, path: Path) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(_PEM_PEEK)
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot read it: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in head:
        raise ValueError(f"{flag} {path}: not a PEM file (no '-----BEGIN ' line)")


@dataclass(frozen=True, slots=True)
class MeshIdentity:
    """A mesh's identity and inbound-policy settings (see the module docstring)."""

    trust_domain: str = DEFAULT_TRUST_DOMAIN
    issuer: IssuerFiles | None = None
    default_inbound_policy: str = DEFAULT_POLICY

    def __post_init__(self) -> None:
        check_trust_domain(self.trust_domain)
        if self.default_inbound_policy not in DEFAULT_POLICIES:
            raise ValueError(
                f"default inbound policy must be one of {', '.join(DEFAULT_POLICIES)}, "
                f"got {self.default_inbound_policy!r}"
            )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "trustDomain": self.trust_domain,
            "defaultInboundPolicy": self.default_inbound_policy,
        }
        if self.issuer is not None:
            out["trustAnchors"] = str(self.issuer.trust_anchors)
            out["issuerCert"] = str(self.issuer.issuer_cert)
            out["issuerKey"] = str(self.issuer.issuer_key)
        return out

    @classmethod
    def from_json(cls, data: Any) -> MeshIdentity:
        """The recorded settings; ValueError naming what is wrong. The CA files are not read
        again: the control plane imported them when the mesh came up."""
        if not isinstance(data, dict):
            raise ValueError(f"identity record must be an object, got {type(data).__name__}")
        files = [data.get(k) for k in ("trustAnchors", "issuerCert", "issuerKey")]
        issuer: IssuerFiles | None = None
        if any(files):
            if not all(isinstance(f, str) and f for f in files):
                raise ValueError("identity record: trustAnchors, issuerCert, issuerKey go together")
            issuer = IssuerFiles(*(Path(str(f)) for f in files))
        return cls(
            trust_domain=str(data.get("trustDomain", DEFAULT_TRUST_DOMAIN)),
            issuer=issuer,
            default_inbound_policy=str(data.get("defaultInboundPolicy", DEFAULT_POLICY)),
        )
