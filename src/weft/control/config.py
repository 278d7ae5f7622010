"""What ``weft control`` runs with: :class:`ControlConfig`, validated on construction.

Shared by both control planes (:class:`weft.control.server.ControlPlane`, the local mesh's, and
:class:`weft.control.incluster.ClusterControlPlane`, a cluster's) and the command line.

Not for: running anything.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from weft.addr import Address
from weft.control.client import DEFAULT_STATE_DIR, SOCKET_NAME
from weft.control.identity import IdentitySettings
from weft.inbound import DEFAULT_POLICIES, DEFAULT_POLICY

STATE_FILE = "store.db"


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """Everything ``weft control`` needs; validated on construction."""

    state_dir: str = DEFAULT_STATE_DIR
    service_cidr: str = "10.96.0.0/16"
    pod_cidr: str = "10.244.0.0/16"
    scrape_interval: float = 2.0
    scrape_timeout: float = 1.5
    retention: float = 3900.0
    http_listen: Address | None = None
    heartbeat: float = 5.0
    # how often a quiet Kubernetes API watch gets a bookmark (the API server: about a minute)
    watch_bookmark_s: float = 60.0
    # a cluster to read instead of a store of its own (a kubeconfig file, or "in-cluster"):
    # weft.control.incluster.ClusterControlPlane
    kubeconfig: str | None = None
    kube_context: str | None = None
    # on a cluster: only the replica holding the Lease writes statuses (weft.control.kube.leader)
    leader_elect: bool = False
    # on a cluster: serve http_listen over TLS as the mesh identity of this service account
    # (weft.control.servingcert), which the proxies verify against their trust anchors
    http_tls: bool = False
    tls_namespace: str = "weft-system"
    tls_service_account: str = "weft-control"
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    # inbound policy: the mesh-wide default, and the networks cluster-* policies trust (the
    # pod network when empty)
    default_inbound_policy: str = DEFAULT_POLICY
    cluster_networks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("service_cidr", "pod_cidr"):
            value = getattr(self, name)
            try:
                net = ipaddress.ip_network(value, strict=True)
            except ValueError as exc:
                raise ValueError(
                    f"{name.replace('_', '-')} {value!r} is not a network: {exc}"
                ) from None
            if net.num_addresses < 4:
                raise ValueError(f"{name.replace('_', '-')} {value!r} is too small")
        for name in ("scrape_interval", "scrape_timeout", "retention", "heartbeat"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name.replace('_', '-')} must be positive, got {value!r}")
        if not self.state_dir:
            raise ValueError("state-dir must not be empty")
        if self.leader_elect and not self.kubeconfig:
            raise ValueError("leader-elect is for replicas on a cluster: give --kubeconfig")
        if self.http_tls and not (self.kubeconfig and self.http_listen):
            raise ValueError(
                "http-tls serves a cluster's proxies: give --kubeconfig and --http-listen"
            )
        if self.default_inbound_policy not in DEFAULT_POLICIES:
            raise ValueError(
                f"default-inbound-policy must be one of {', '.join(DEFAULT_POLICIES)}, "
                f"got {self.default_inbound_policy!r}"
            )
        for cidr in self.cluster_networks:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"cluster-networks: {cidr!r} is not a network") from None

    @property
    def socket_path(self) -> str:
        return os.path.join(self.state_dir, SOCKET_NAME)

    @property
    def state_file(self) -> str:
        return os.path.join(self.state_dir, STATE_FILE)


__all__ = ["STATE_FILE", "ControlConfig"]
