"""The proxy's configuration: one frozen, validated dataclass built from flags or environment.

Defaults follow Linkerd's proxy where one exists (ports, opaque ports, connect timeouts, detect
timeout, fail-fast timeouts); see docs/architecture.md for where Weft differs and why.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from weft.addr import Address

DEFAULT_OPAQUE_PORTS: frozenset[int] = frozenset({25, 587, 3306, 4444, 5432, 6379, 9300, 11211})


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Everything a ``weft proxy`` process needs; immutable after start."""

    outbound: Address = ("127.0.0.1", 4140)
    inbound: Address | None = ("0.0.0.0", 4143)
    admin: Address | None = ("0.0.0.0", 4191)
    outbound_target: Address | None = None
    inbound_target: Address | None = None
    discovery_file: str | None = None
    control: str | None = None
    opaque_ports: frozenset[int] = DEFAULT_OPAQUE_PORTS
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    connect_timeout_outbound: float = 1.0
    connect_timeout_inbound: float = 1.0
    detect_timeout: float = 10.0
    fail_fast_outbound: float = 3.0
    fail_fast_inbound: float = 1.0
    response_timeout: float | None = None
    header_timeout: float = 10.0
    idle_timeout: float = 300.0
    pool_idle_timeout: float = 60.0
    # idle keep-alive connections kept per endpoint: at least the requests a busy client side
    # has in flight, or each answer closes a connection the next request dials again (128 at
    # 1,000 client connections was ~3,700 upstream dials a second and 2/3 of the throughput)
    pool_max_idle: int = 1024
    max_header_bytes: int = 65536
    buffer_high: int = 256 * 1024
    shutdown_grace: float = 30.0
    log_level: str = "info"
    log_format: str = "text"
    access_log: str | None = None
    # identity: a per-pod token certified by the control plane, or files (--identity-*)
    identity_token_file: str | None = None
    trust_domain: str = "cluster.local"
    identity_cert: str | None = None
    identity_key: str | None = None
    trust_anchors: str | None = None
    # an https:// control plane: the identity its certificate must name, and the anchors to
    # verify it with (PEM text, as the injector puts it in the environment, or a file)
    control_identity: str | None = None
    control_trust_anchors: str | None = None
    # inbound policy before the control plane's first answer, or without a control plane
    default_inbound_policy: str = "all-unauthenticated"
    cluster_networks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("connect_timeout_outbound", "connect_timeout_inbound", "detect_timeout",
                     "fail_fast_outbound", "fail_fast_inbound", "header_timeout",
                     "idle_timeout", "pool_idle_timeout", "shutdown_grace"):  # fmt: skip
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if self.response_timeout is not None and not self.response_timeout > 0:
            raise ValueError(f"response_timeout must be positive, got {self.response_timeout!r}")
        if self.max_header_bytes < 1024:
            raise ValueError(f"max_header_bytes must be at least 1024, got {self.max_header_bytes}")
        if self.buffer_high < 4096:
            raise ValueError(f"buffer_high must be at least 4096, got {self.buffer_high}")
        if self.pool_max_idle < 0:
            raise ValueError(f"pool_max_idle must be >= 0, got {self.pool_max_idle}")
        for port in self.opaque_ports:
            if not 0 < port < 65536:
                raise ValueError(f"opaque_ports: {port} is not a port")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json, got {self.log_format!r}")
        if self.discovery_file and self.control:
            raise ValueError("discovery_file and control are exclusive: choose one source")
        if self.identity_token_file and not self.control:
            raise ValueError("identity_token_file needs a control plane (--control)")
        if self.control and self.control.startswith("https://"):
            if not (self.control_identity and self.control_trust_anchors):
                raise ValueError("an https:// control plane is verified: give --control-identity "
                                 "and --control-trust-anchors")  # fmt: skip
        elif self.control_identity or self.control_trust_anchors:
            raise ValueError("--control-identity and --control-trust-anchors are for an "
                             "https:// control plane")  # fmt: skip
        files = (self.identity_cert, self.identity_key, self.trust_anchors)
        if any(files) and not all(files):
            raise ValueError("identity files: give --identity-cert, --identity-key and "
                             "--trust-anchors together")  # fmt: skip
        if all(files) and self.identity_token_file:
            raise ValueError("identity: a token file or identity files, not both")
        from weft.inbound import DEFAULT_POLICIES

        if self.default_inbound_policy not in DEFAULT_POLICIES:
            raise ValueError(
                f"default_inbound_policy must be one of {', '.join(DEFAULT_POLICIES)}, "
                f"got {self.default_inbound_policy!r}"
            )
        for cidr in self.cluster_networks:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"cluster_networks: {cidr!r} is not a CIDR") from None
        if not isinstance(self.labels, MappingProxyType):
            object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))
