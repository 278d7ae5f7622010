"""Workload identity names: the DNS-style identity and the SPIFFE ID of a service account.

A workload's identity is its service account in its namespace, within a trust domain
(``cluster.local`` by default), written two ways, both carried by its leaf certificate:

- DNS form (Linkerd's): ``<sa>.<ns>.serviceaccount.identity.<trust-domain>``, a SAN that TLS
  hostname checks match, so a client proxy verifies "the server is this identity" with the
  ``ssl`` module's own ``check_hostname``;
- SPIFFE form: ``spiffe://<trust-domain>/ns/<ns>/sa/<sa>``.

Namespaces are DNS labels and service accounts DNS subdomains (as in Kubernetes), so the DNS form
parses back unambiguously: the namespace is the last label before ``.serviceaccount.identity.``.

Not for: certificates (:mod:`weft.identity.ca`) or authorization patterns such as ``*.ns...``
(the policy code).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

DEFAULT_TRUST_DOMAIN = "cluster.local"

_INFIX = "serviceaccount.identity"
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_SPIFFE = re.compile(r"spiffe://([^/?#]+)/ns/([^/?#]+)/sa/([^/?#]+)")
MAX_DNS_NAME = 253


def _is_subdomain(name: str) -> bool:
    return 0 < len(name) <= MAX_DNS_NAME and all(_LABEL.fullmatch(part) for part in name.split("."))


def check_trust_domain(trust_domain: str) -> str:
    """``trust_domain`` when it is a lowercase DNS name (``cluster.local``); ValueError else."""
    if not isinstance(trust_domain, str) or not _is_subdomain(trust_domain):
        raise ValueError(
            f"invalid trust domain {trust_domain!r}: expected a lowercase DNS name such as "
            f"{DEFAULT_TRUST_DOMAIN!r}"
        )
    return trust_domain


def _check_parts(namespace: str, service_account: str) -> None:
    if not isinstance(namespace, str) or not _LABEL.fullmatch(namespace):
        raise ValueError(f"invalid namespace {namespace!r}: expected a DNS label")
    if not isinstance(service_account, str) or not _is_subdomain(service_account):
        raise ValueError(f"invalid service account {service_account!r}: expected a DNS subdomain")


def dns_identity(
    namespace: str, service_account: str, trust_domain: str = DEFAULT_TRUST_DOMAIN
) -> str:
    """``<sa>.<ns>.serviceaccount.identity.<trust-domain>``; ValueError for invalid parts."""
    _check_parts(namespace, service_account)
    name = f"{service_account}.{namespace}.{_INFIX}.{check_trust_domain(trust_domain)}"
    if len(name) > MAX_DNS_NAME:
        raise ValueError(f"identity {name!r} is longer than {MAX_DNS_NAME} characters")
    return name


def spiffe_id(
    namespace: str, service_account: str, trust_domain: str = DEFAULT_TRUST_DOMAIN
) -> str:
    """``spiffe://<trust-domain>/ns/<ns>/sa/<sa>``; ValueError for invalid parts."""
    _check_parts(namespace, service_account)
    return f"spiffe://{check_trust_domain(trust_domain)}/ns/{namespace}/sa/{service_account}"


def parse_dns_identity(
    name: str, trust_domain: str = DEFAULT_TRUST_DOMAIN
) -> tuple[str, str] | None:
    """``(namespace, service_account)`` of a DNS identity of ``trust_domain``, else None."""
    suffix = f".{_INFIX}.{trust_domain}"
    if not isinstance(name, str) or not name.endswith(suffix) or len(name) > MAX_DNS_NAME:
        return None
    service_account, _, namespace = name[: -len(suffix)].rpartition(".")
    if not _LABEL.fullmatch(namespace) or not _is_subdomain(service_account):
        return None
    return namespace, service_account


def spiffe_to_dns(uri: str) -> str:
    """The DNS identity for a SPIFFE ID ``spiffe://<td>/ns/<ns>/sa/<sa>``; ValueError else."""
    m = _SPIFFE.fullmatch(uri) if isinstance(uri, str) else None
    if m is None:
        raise ValueError(
            f"invalid SPIFFE ID {uri!r}: expected spiffe://<trust-domain>/ns/<namespace>/sa/"
            "<serviceaccount>"
        )
    trust_domain, namespace, service_account = m.groups()
    try:
        return dns_identity(namespace, service_account, trust_domain)
    except ValueError as exc:
        raise ValueError(f"invalid SPIFFE ID {uri!r}: {exc}") from None


def peer_identity(
    peercert: Mapping[str, Any] | None, trust_domain: str = DEFAULT_TRUST_DOMAIN
) -> str | None:
    """The peer's identity from ``SSLObject.getpeercert()``: its DNS SAN that is an identity of
    ``trust_domain``, or None (no certificate, or none of its names is such an identity)."""
    if not peercert:
        return None
    sans = peercert.get("subjectAltName") or ()
    for entry in sans:
        if (
            isinstance(entry, tuple)
            and len(entry) == 2
            and entry[0] == "DNS"
            and parse_dns_identity(entry[1], trust_domain) is not None
        ):
            return str(entry[1])
    return None
