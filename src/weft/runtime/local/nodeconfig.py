"""What ``weft node`` runs with: :class:`NodeConfig`, validated on construction.

Not for: running anything (:mod:`weft.runtime.local.agent`).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

from weft.identity.names import DEFAULT_TRUST_DOMAIN, check_trust_domain
from weft.runtime.local import net
from weft.runtime.local.kubeport import DEFAULT_LISTEN

NODE_NAME = "local"  # the local mesh's one node


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything ``weft node`` needs, validated."""

    state_dir: Path
    network: net.MeshNetwork
    iptables: str
    control_endpoint: str
    python: str = sys.executable
    drain_delay: float = 1.5
    shutdown_timeout: float = 10.0
    resync_interval: float = 1.0
    proxy_log_level: str = "info"
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    # where this machine's kubectl reaches the local mesh's Kubernetes API (None: nowhere)
    kube_listen: tuple[str, int] | None = DEFAULT_LISTEN
    # a real cluster's API instead (weft.runtime.local.clusternode): this node's name, and
    # the API server's URL (from the kubeconfig)
    kubeconfig: str | None = None
    kube_context: str | None = None
    node_name: str = NODE_NAME
    api_server: str = ""

    def __post_init__(self) -> None:
        if not self.state_dir.is_absolute():
            raise ValueError(f"state_dir must be absolute, got {self.state_dir}")
        check_trust_domain(self.trust_domain)
        for name in ("drain_delay", "shutdown_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (math.isfinite(self.resync_interval) and self.resync_interval > 0):
            raise ValueError(f"resync_interval must be positive, got {self.resync_interval!r}")
        if not self.iptables.startswith("iptables"):
            raise ValueError(f"iptables must name an iptables binary, got {self.iptables!r}")
        if not self.control_endpoint and not self.kubeconfig:
            raise ValueError("control_endpoint must not be empty")


__all__ = ["NODE_NAME", "NodeConfig"]
