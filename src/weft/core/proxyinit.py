"""The proxy's port numbers and the iptables rules that mesh a pod, for every runtime.

:func:`proxy_init_rules` is the ``iptables-restore --noflush`` input that redirects a pod's TCP
traffic through its proxy, as Linkerd's proxy-init does. The local runtime applies it when it
sets up a pod's network namespace (:mod:`weft.runtime.local.net`); on a cluster the injected
``weft-init`` container applies the same rules (``weft proxy-init``). Sans-I/O.

Not for: running iptables (the callers), nor the proxy itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PROXY_UID = 2102
PROXY_OUTBOUND_PORT = 4140
PROXY_INBOUND_PORT = 4143
PROXY_ADMIN_PORT = 4191
PROXY_CONTROL_PORT = 4190
# Linkerd's default skip ports (both directions): traffic that bypasses the proxy entirely.
DEFAULT_SKIP_PORTS = "4567,4568"
ANNOTATION_SKIP_INBOUND = "config.weft.io/skip-inbound-ports"
ANNOTATION_SKIP_OUTBOUND = "config.weft.io/skip-outbound-ports"


@dataclass(frozen=True, slots=True, order=True)
class PortRange:
    first: int
    last: int

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.last < 65536:
            raise ValueError(f"invalid port range {self.first}-{self.last}")

    def iptables(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}:{self.last}"


def parse_ports(text: str, field_name: str) -> tuple[PortRange, ...]:
    """``"4567,4568,5000-5010"`` -> port ranges. Raises ValueError naming ``field_name``."""
    out: list[PortRange] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        first_s, dash, last_s = part.partition("-")
        try:
            first = int(first_s)
            last = int(last_s) if dash else first
            out.append(PortRange(first, last))
        except ValueError:
            raise ValueError(
                f"{field_name}: invalid port or range {part!r} in {text!r} "
                "(expected e.g. 4567,5000-5010)"
            ) from None
    return tuple(sorted(set(out)))


CHAIN_INBOUND = "WEFT_INBOUND"
CHAIN_OUTBOUND = "WEFT_OUTBOUND"
_MULTIPORT_MAX = 15  # the multiport match takes at most 15 ports (a range counts as two)


def proxy_init_rules(
    *,
    skip_inbound: Iterable[PortRange] = (),
    skip_outbound: Iterable[PortRange] = (),
    proxy_uid: int = PROXY_UID,
    inbound_port: int = PROXY_INBOUND_PORT,
    outbound_port: int = PROXY_OUTBOUND_PORT,
) -> str:
    """The ``iptables-restore --noflush`` input that meshes a pod, as Linkerd's proxy-init does.

    Inbound: every TCP connection to the pod, except to the proxy's own inbound (mesh
    connections from other proxies), admin and control ports and the skip ports, goes to the
    proxy's inbound port. Outbound: every TCP connection the pod makes,
    except the proxy's own (by uid), over loopback, or to skip ports, goes to the proxy's outbound
    port. The original destination stays readable with ``SO_ORIGINAL_DST``.
    """
    inbound_skips = sorted(
        {PortRange(PROXY_CONTROL_PORT, PROXY_CONTROL_PORT)}
        | {PortRange(PROXY_ADMIN_PORT, PROXY_ADMIN_PORT)}
        # other proxies' mesh connections: the proxy must see them as not redirected
        | {PortRange(inbound_port, inbound_port)}
        | set(skip_inbound)
    )
    lines = [
        "*nat",
        f":{CHAIN_INBOUND} - [0:0]",
        f":{CHAIN_OUTBOUND} - [0:0]",
        f'-A PREROUTING -m comment --comment "weft/proxy-init inbound" -j {CHAIN_INBOUND}',
    ]
    for ports in _multiport_groups(inbound_skips):
        lines.append(
            f"-A {CHAIN_INBOUND} -p tcp -m multiport --dports {ports} "
            f'-m comment --comment "weft/proxy-init skip inbound" -j RETURN'
        )
    lines += [
        f"-A {CHAIN_INBOUND} -p tcp -m comment --comment "
        f'"weft/proxy-init redirect to the proxy inbound" -j REDIRECT --to-ports {inbound_port}',
        f'-A OUTPUT -m comment --comment "weft/proxy-init outbound" -j {CHAIN_OUTBOUND}',
        f"-A {CHAIN_OUTBOUND} -m owner --uid-owner {proxy_uid} "
        f'-m comment --comment "weft/proxy-init skip the proxy" -j RETURN',
        f'-A {CHAIN_OUTBOUND} -o lo -m comment --comment "weft/proxy-init skip loopback" -j RETURN',
    ]
    for ports in _multiport_groups(sorted(set(skip_outbound))):
        lines.append(
            f"-A {CHAIN_OUTBOUND} -p tcp -m multiport --dports {ports} "
            f'-m comment --comment "weft/proxy-init skip outbound" -j RETURN'
        )
    lines += [
        f"-A {CHAIN_OUTBOUND} -p tcp -m comment --comment "
        f'"weft/proxy-init redirect to the proxy outbound" -j REDIRECT --to-ports {outbound_port}',
        "COMMIT",
        "",
    ]
    return "\n".join(lines)


def _multiport_groups(ranges: Sequence[PortRange]) -> list[str]:
    groups: list[str] = []
    current: list[str] = []
    weight = 0
    for r in ranges:
        w = 1 if r.first == r.last else 2
        if weight + w > _MULTIPORT_MAX:
            groups.append(",".join(current))
            current, weight = [], 0
        current.append(r.iptables())
        weight += w
    if current:
        groups.append(",".join(current))
    return groups


__all__ = [
    "ANNOTATION_SKIP_INBOUND",
    "ANNOTATION_SKIP_OUTBOUND",
    "CHAIN_INBOUND",
    "CHAIN_OUTBOUND",
    "DEFAULT_SKIP_PORTS",
    "PROXY_ADMIN_PORT",
    "PROXY_CONTROL_PORT",
    "PROXY_INBOUND_PORT",
    "PROXY_OUTBOUND_PORT",
    "PROXY_UID",
    "PortRange",
    "parse_ports",
    "proxy_init_rules",
]
