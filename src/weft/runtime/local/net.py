"""The local runtime's network: node namespace, bridge, pod namespaces, addresses, iptables, names.

Layout (see docs/local-runtime.md):

- the node namespace ``weft-node`` holds the bridge ``weft0`` with the first address of the pod
  range (the pods' gateway); it has no uplink, forwards only between pods and answers "unreachable"
  for the service range (so an unredirected connection to a service IP fails at once);
- each pod gets a namespace ``weft-<ns>-<pod>``, a veth pair into the bridge (``eth0`` inside), an
  address from the pod range (:class:`Ipam`, next-fit so a released address is not reused at once),
  and routes for the pod range and the service range only: no default route;
- the host namespace gets only ``blackhole`` routes for both ranges (tagged with protocol
  :data:`ROUTE_PROTO` so cleanup finds them), so those addresses can never leave the machine;
- inside a pod with a sidecar, iptables ``nat`` rules (:func:`proxy_init_rules`, as Linkerd's
  proxy-init) redirect inbound TCP to the proxy's inbound port and the app's outbound TCP to its
  outbound port, leaving out the proxy's own uid, loopback and skip ports;
- service names resolve through ``/etc/netns/<pod-netns>/hosts`` (:func:`hosts_file`), which
  ``ip netns exec`` bind-mounts over ``/etc/hosts``; updates are written in place
  (:func:`write_in_place`) because a bind mount pins the file's inode.

Everything that changes the system is a *plan* first: a list of :class:`Cmd` built by pure functions
(tested without root), then run by :mod:`weft.runtime.local.netrun` (blocking for the CLI, async
for the node agent), which also inspects namespaces and opens sockets inside them.

Not for: processes (:mod:`weft.runtime.local.pod`) or deciding which pods exist
(:mod:`weft.runtime.local.agent`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from weft.core.proxyinit import (
    ANNOTATION_SKIP_INBOUND as ANNOTATION_SKIP_INBOUND,
)
from weft.core.proxyinit import (
    ANNOTATION_SKIP_OUTBOUND as ANNOTATION_SKIP_OUTBOUND,
)
from weft.core.proxyinit import (
    CHAIN_INBOUND as CHAIN_INBOUND,
)
from weft.core.proxyinit import (
    CHAIN_OUTBOUND as CHAIN_OUTBOUND,
)
from weft.core.proxyinit import (
    DEFAULT_SKIP_PORTS as DEFAULT_SKIP_PORTS,
)
from weft.core.proxyinit import (
    PROXY_ADMIN_PORT as PROXY_ADMIN_PORT,
)
from weft.core.proxyinit import (
    PROXY_CONTROL_PORT as PROXY_CONTROL_PORT,
)
from weft.core.proxyinit import (
    PROXY_INBOUND_PORT as PROXY_INBOUND_PORT,
)
from weft.core.proxyinit import (
    PROXY_OUTBOUND_PORT as PROXY_OUTBOUND_PORT,
)
from weft.core.proxyinit import PROXY_UID as PROXY_UID
from weft.core.proxyinit import PortRange as PortRange
from weft.core.proxyinit import parse_ports as parse_ports
from weft.core.proxyinit import proxy_init_rules as proxy_init_rules

# -- names and numbers shared with the proxy and the control plane -----------------------------

NETNS_PREFIX = "weft-"
NODE_NETNS = "weft-node"
BRIDGE = "weft0"
VETH_PREFIX = "wv"
NETNS_DIR = Path("/run/netns")
ETC_NETNS_DIR = Path("/etc/netns")
# Host routes Weft adds carry this routing protocol number, so cleanup finds them even when the
# state directory is gone. 247 is not assigned in /etc/iproute2/rt_protos.
ROUTE_PROTO = 247


DEFAULT_POD_CIDR = "10.244.0.0/16"
DEFAULT_SERVICE_CIDR = "10.96.0.0/16"
CLUSTER_DOMAIN = "cluster.local"

_IFNAMSIZ = 15
# Longest pod namespace name before it is shortened with a hash (names live under /run/netns and
# /etc/netns; keep them readable in `ip netns` output).
_MAX_NETNS_NAME = 100


class NetError(Exception):
    """A network command failed; the message names the command and its error output."""


# -- configuration --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeshNetwork:
    """The two address ranges of a local mesh, validated so nothing can route off the machine.

    Both ranges must be private IPv4 networks (RFC 1918 and the like) and must not overlap; the pod
    range needs room for the gateway and at least a few pods.
    """

    pod_cidr: ipaddress.IPv4Network
    service_cidr: ipaddress.IPv4Network

    @classmethod
    def parse(
        cls, pod_cidr: str = DEFAULT_POD_CIDR, service_cidr: str = DEFAULT_SERVICE_CIDR
    ) -> MeshNetwork:
        return cls(
            pod_cidr=_parse_range("pod_cidr", pod_cidr),
            service_cidr=_parse_range("service_cidr", service_cidr),
        )

    def __post_init__(self) -> None:
        for name in ("pod_cidr", "service_cidr"):
            value = getattr(self, name)
            if not isinstance(value, ipaddress.IPv4Network):
                raise ValueError(f"{name} must be an IPv4 network, got {value!r}")
            _check_private(name, value)
        if self.pod_cidr.prefixlen > 28:
            raise ValueError(
                f"pod_cidr {self.pod_cidr} is too small: use a /28 or larger (e.g. /16)"
            )
        if self.pod_cidr.overlaps(self.service_cidr):
            raise ValueError(
                f"pod_cidr {self.pod_cidr} and service_cidr {self.service_cidr} overlap"
            )

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The bridge's address: the first host of the pod range."""
        return self.pod_cidr.network_address + 1

    @property
    def ranges(self) -> tuple[ipaddress.IPv4Network, ipaddress.IPv4Network]:
        return (self.pod_cidr, self.service_cidr)


def _parse_range(name: str, text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"{name}: invalid network {text!r}: {exc}") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise ValueError(f"{name}: {text!r} is not an IPv4 network (IPv6 is not supported yet)")
    return net


def _check_private(name: str, net: ipaddress.IPv4Network) -> None:
    # Blackholing a public range on the host would cut the host off from real addresses.
    if not net.is_private or net.is_loopback or net.is_link_local or net.is_multicast:
        raise ValueError(
            f"{name} {net} must be a private range (e.g. 10.0.0.0/8, 172.16.0.0/12, "
            "192.168.0.0/16) that is not loopback, link-local or multicast"
        )


# -- address allocation ---------------------------------------------------------------------


class IpamExhausted(Exception):
    """Every address of the pod range is in use."""


class Ipam:
    """Pod addresses from the pod range: next-fit, so a just-released address is reused last.

    The network address, the gateway (first host) and the broadcast address are never handed out.
    """

    __slots__ = ("_cursor", "_first", "_last", "_owners", "network")

    def __init__(self, network: ipaddress.IPv4Network) -> None:
        if network.num_addresses < 4:
            raise ValueError(f"pod range {network} is too small")
        self.network = network
        self._first = int(network.network_address) + 2
        self._last = int(network.broadcast_address) - 1
        self._owners: dict[int, str] = {}
        self._cursor = self._first

    @property
    def capacity(self) -> int:
        return self._last - self._first + 1

    def __len__(self) -> int:
        return len(self._owners)

    def owner(self, ip: ipaddress.IPv4Address) -> str | None:
        return self._owners.get(int(ip))

    def allocate(self, owner: str) -> ipaddress.IPv4Address:
        """The next free address after the last one handed out (wrapping around)."""
        if len(self._owners) >= self.capacity:
            raise IpamExhausted(f"no free address left in the pod range {self.network}")
        n = self._cursor
        while n in self._owners:
            n = self._first if n >= self._last else n + 1
        self._owners[n] = owner
        self._cursor = self._first if n >= self._last else n + 1
        return ipaddress.IPv4Address(n)

    def reserve(self, ip: ipaddress.IPv4Address, owner: str) -> None:
        """Mark ``ip`` used by ``owner`` (an address found in use at start-up)."""
        n = int(ip)
        if not self._first <= n <= self._last:
            raise ValueError(f"{ip} is not a pod address of {self.network}")
        current = self._owners.get(n)
        if current is not None and current != owner:
            raise ValueError(f"{ip} is already used by {current}")
        self._owners[n] = owner

    def release(self, ip: ipaddress.IPv4Address) -> None:
        self._owners.pop(int(ip), None)

    def __repr__(self) -> str:
        return f"<Ipam {self.network} used={len(self._owners)}/{self.capacity}>"


# -- names ----------------------------------------------------------------------------------


def pod_netns_name(namespace: str, pod: str) -> str:
    """``weft-<ns>-<pod>``; very long names are shortened with a hash to stay unique."""
    name = f"{NETNS_PREFIX}{namespace}-{pod}"
    if len(name) <= _MAX_NETNS_NAME:
        return name
    digest = hashlib.sha256(f"{namespace}/{pod}".encode()).hexdigest()[:10]
    return f"{NETNS_PREFIX}{namespace[:30]}-{pod[:50]}-{digest}"


def is_weft_netns(name: str) -> bool:
    """Any namespace Weft creates: the node's, pods', and short-lived probes (``weft--*``)."""
    return name.startswith(NETNS_PREFIX)


def is_weft_pod_netns(name: str) -> bool:
    """A pod's namespace (``weft-<ns>-<pod>``): not the node's, not a probe's."""
    return (
        name.startswith(NETNS_PREFIX)
        and name != NODE_NETNS
        and not name.startswith(NETNS_PREFIX + "-")
    )


def veth_name(network: ipaddress.IPv4Network, ip: ipaddress.IPv4Address) -> str:
    """The node-side veth of the pod with address ``ip``: ``wv`` + the address's offset in hex.

    Unique as long as addresses are, and within the kernel's 15-character limit.
    """
    offset = int(ip) - int(network.network_address)
    name = f"{VETH_PREFIX}{offset:08x}"
    assert len(name) <= _IFNAMSIZ
    return name


# -- ports ----------------------------------------------------------------------------------


# -- iptables (proxy-init) ------------------------------------------------------------------

# -- names inside pods ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class ServiceName:
    """A Service as pods see it: its name, namespace and virtual IP."""

    namespace: str
    name: str
    cluster_ip: str


def hosts_file(*, pod: str, pod_ip: str, namespace: str, services: Iterable[ServiceName]) -> str:
    """``/etc/hosts`` of a pod: itself, then every Service by ``svc.ns`` and
    ``svc.ns.svc.cluster.local``, and the pod's own namespace's Services also by bare ``svc``
    (what a Kubernetes pod's DNS search path gives)."""
    lines = [
        "# Written by weft node; rewritten when Services change. Do not edit.",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{pod_ip}\t{pod}",
    ]
    for svc in sorted(set(services)):
        names = [
            f"{svc.name}.{svc.namespace}.svc.{CLUSTER_DOMAIN}",
            f"{svc.name}.{svc.namespace}.svc",
            f"{svc.name}.{svc.namespace}",
        ]
        if svc.namespace == namespace:
            names.insert(0, svc.name)
        lines.append(f"{svc.cluster_ip}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"


# A pod has no DNS server: every name it may use is in its hosts file. Pointing the resolver at the
# pod's own loopback makes other lookups fail at once instead of waiting on an unreachable server.
RESOLV_CONF = (
    "# Written by weft node: names resolve from /etc/hosts only.\n"
    "nameserver 127.0.0.1\n"
    "options timeout:1 attempts:1\n"
)


def write_in_place(path: Path, text: str) -> None:
    """Replace a file's content without replacing its inode.

    ``ip netns exec`` bind-mounts ``/etc/netns/<ns>/hosts`` over ``/etc/hosts`` of every process
    it starts; a bind mount pins the inode, so a rename would go unseen. Writing the new content
    first and truncating after means a concurrent reader sees either complete new content, or new
    content followed by a stale tail, never an empty file.
    """
    data = text.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def write_pod_etc(netns: str, hosts: str, *, etc_netns: Path = ETC_NETNS_DIR) -> Path:
    """Create ``/etc/netns/<netns>/{hosts,resolv.conf}``; returns the directory."""
    directory = etc_netns / netns
    directory.mkdir(parents=True, exist_ok=True)
    write_in_place(directory / "hosts", hosts)
    write_in_place(directory / "resolv.conf", RESOLV_CONF)
    return directory


def remove_pod_etc(netns: str, *, etc_netns: Path = ETC_NETNS_DIR) -> None:
    if not is_weft_netns(netns) or "/" in netns:
        raise ValueError(f"refusing to remove /etc/netns entry {netns!r}: not a Weft namespace")
    shutil.rmtree(etc_netns / netns, ignore_errors=True)


def remove_etc_netns_if_empty(etc_netns: Path = ETC_NETNS_DIR) -> bool:
    """``/etc/netns`` exists only for pods' hosts files: an empty one is Weft's to remove;
    whether it did."""
    try:
        if etc_netns.is_dir() and not any(etc_netns.iterdir()):
            etc_netns.rmdir()
            return True
    except OSError:
        pass
    return False


# -- command plans --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cmd:
    """One command of a plan. ``ok_if`` lists error-output fragments that still mean success
    (e.g. ``"File exists"`` for an idempotent add); ``optional`` commands may fail."""

    argv: tuple[str, ...]
    stdin: str | None = None
    ok_if: tuple[str, ...] = ()
    optional: bool = False

    def __str__(self) -> str:
        text = " ".join(self.argv)
        if self.stdin is not None:
            first = self.stdin.strip().splitlines()[:1]
            text += f" <<< {first[0]!r}..." if first else ""
        return text


def _ip_batch(netns: str, lines: Sequence[str]) -> Cmd:
    return Cmd(("ip", "-n", netns, "-batch", "-"), stdin="\n".join(lines) + "\n")


_FORWARD_ON = "echo 1 > /proc/sys/net/ipv4/ip_forward"


def node_up_plan(net: MeshNetwork) -> list[Cmd]:
    """Create the node namespace and bridge (no uplink; forwarding only for ICMP errors)."""
    plen = net.pod_cidr.prefixlen
    return [
        Cmd(("ip", "netns", "add", NODE_NETNS)),
        _ip_batch(
            NODE_NETNS,
            [
                "link set lo up",
                f"link add {BRIDGE} type bridge",
                f"addr add {net.gateway}/{plen} dev {BRIDGE}",
                f"link set {BRIDGE} up",
                # Unredirected connections to a service IP fail at once (ICMP unreachable).
                f"route add unreachable {net.service_cidr}",
            ],
        ),
        Cmd(("ip", "-n", NODE_NETNS, "link", "set", BRIDGE, "addrgenmode", "none"), optional=True),
        # With forwarding off, the kernel drops packets for the unreachable route silently and
        # clients wait for a timeout; with it on, they get an ICMP error. There is no uplink, so
        # forwarding cannot take anything off the machine.
        Cmd(("ip", "netns", "exec", NODE_NETNS, "sh", "-c", _FORWARD_ON)),
    ]


def host_routes_plan(net: MeshNetwork) -> list[Cmd]:
    """Blackhole routes for both ranges in the host namespace (the only host change)."""
    return [
        Cmd(
            ("ip", "route", "add", "blackhole", str(cidr), "proto", str(ROUTE_PROTO)),
            ok_if=("File exists",),
        )
        for cidr in net.ranges
    ]


def host_routes_delete_plan(cidrs: Iterable[str]) -> list[Cmd]:
    return [
        Cmd(
            ("ip", "route", "del", "blackhole", cidr, "proto", str(ROUTE_PROTO)),
            ok_if=("No such process", "Cannot find"),
        )
        for cidr in cidrs
    ]


@dataclass(frozen=True, slots=True)
class PodNet:
    """The network identity of one pod."""

    netns: str
    ip: ipaddress.IPv4Address
    veth: str
    meshed: bool = True
    skip_inbound: tuple[PortRange, ...] = field(default=())
    skip_outbound: tuple[PortRange, ...] = field(default=())


def pod_up_plan(pod: PodNet, net: MeshNetwork, *, iptables: str) -> list[Cmd]:
    """Namespace, veth into the bridge, address, routes (pod and service ranges only) and, for a
    meshed pod, the proxy-init rules."""
    plen = net.pod_cidr.prefixlen
    plan = [
        Cmd(("ip", "netns", "add", pod.netns)),
        _ip_batch(
            NODE_NETNS,
            [
                f"link add {pod.veth} type veth peer name eth0 netns {pod.netns}",
                f"link set {pod.veth} master {BRIDGE}",
                f"link set {pod.veth} up",
            ],
        ),
        Cmd(
            ("ip", "-n", NODE_NETNS, "link", "set", pod.veth, "addrgenmode", "none"), optional=True
        ),
        # a pod may reach itself through a Service's cluster IP (DNATed back to its own port)
        Cmd(
            (
                "ip",
                "-n",
                NODE_NETNS,
                "link",
                "set",
                pod.veth,
                "type",
                "bridge_slave",
                "hairpin",
                "on",
            ),
            optional=True,
        ),
        # No IPv6 link-local address on eth0: pods talk IPv4 through the proxy only.
        Cmd(("ip", "-n", pod.netns, "link", "set", "eth0", "addrgenmode", "none"), optional=True),
        _ip_batch(
            pod.netns,
            [
                "link set lo up",
                f"addr add {pod.ip}/{plen} dev eth0",
                "link set eth0 up",
                f"route add {net.service_cidr} via {net.gateway} dev eth0",
            ],
        ),
    ]
    if pod.meshed:
        rules = proxy_init_rules(skip_inbound=pod.skip_inbound, skip_outbound=pod.skip_outbound)
        plan.append(
            Cmd(("ip", "netns", "exec", pod.netns, f"{iptables}-restore", "--noflush"), rules)
        )
    return plan


def netns_delete_plan(netns: str) -> list[Cmd]:
    """Deleting a namespace removes its links (the veth pair too), addresses and iptables rules."""
    return [Cmd(("ip", "netns", "del", netns), ok_if=("No such file",))]
