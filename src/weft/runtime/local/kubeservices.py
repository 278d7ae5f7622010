"""A cluster node's own plumbing, in the node namespace: Services' cluster IPs for connections the
proxies do not carry, and the way to the API server.

- :func:`service_rules` is what kube-proxy's iptables mode does, in small: every ClusterIP
  Service's TCP ports DNAT to its ready endpoints (from its EndpointSlices, spread at random), in
  the chain ``WEFT-SERVICES`` of the node namespace's ``nat`` table, which ``PREROUTING`` (the
  pods' connections) and ``OUTPUT`` (the node's own) jump to; connections DNATed to another pod
  are masqueraded, so the answer comes back the same way. Meshed apps never need it (their proxy
  resolves a cluster IP itself), but the proxy's own connections do: to the control plane's
  ``weft-control`` Service, and whatever a pod sends around its proxy (skip ports). A Service
  with no ready endpoint gets no rule, so its cluster IP stays unreachable (an ICMP error at
  once, not a timeout). :class:`ServiceRules` applies the rules again when they change.
- :class:`ApiRelay` lets processes in the node namespace reach an API server that listens on the
  host's loopback, at the same address (so one kubeconfig serves both): it listens on
  ``127.0.0.1:PORT`` inside the node namespace and relays each connection to the host's. The
  bytes are relayed as they are (TLS stays end to end).

Not for: meshed traffic (the proxies), nor pods' own namespaces (:mod:`weft.runtime.local.net`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterable, Mapping
from typing import Any

from weft.runtime.local import net, netrun

log = logging.getLogger("weft.node")

CHAIN = "WEFT-SERVICES"
SERVICE_LABEL = "kubernetes.io/service-name"


def hooks() -> str:
    """The rules that send connections through :data:`CHAIN` (installed once)."""
    return (
        f"*nat\n:{CHAIN} - [0:0]\n"
        f"-A PREROUTING -m comment --comment weft/services -j {CHAIN}\n"
        f"-A OUTPUT -m comment --comment weft/services -j {CHAIN}\n"
        "-A POSTROUTING -m comment --comment weft/services -m conntrack --ctstate DNAT "
        "-j MASQUERADE\n"
        "COMMIT\n"
    )


def endpoints(
    service: Mapping[str, Any], slices: Iterable[Mapping[str, Any]]
) -> dict[tuple[str, int], list[tuple[str, int]]]:
    """``(cluster IP, port) -> [(endpoint IP, port), ...]`` of one Service's TCP ports: the
    ready endpoints of its EndpointSlices, matched by port name as kube-proxy matches them."""
    spec = service.get("spec") or {}
    ip = spec.get("clusterIP")
    if not ip or ip == "None" or spec.get("type", "ClusterIP") == "ExternalName":
        return {}
    name = (service.get("metadata") or {}).get("name")
    out: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for port in spec.get("ports") or []:
        if (port.get("protocol") or "TCP") != "TCP" or not isinstance(port.get("port"), int):
            continue
        backends: list[tuple[str, int]] = []
        for s in slices:
            if ((s.get("metadata") or {}).get("labels") or {}).get(SERVICE_LABEL) != name:
                continue
            if s.get("addressType", "IPv4") != "IPv4":
                continue
            numbers = [p.get("port") for p in s.get("ports") or []
                       if (p.get("name") or "") == (port.get("name") or "")
                       and (p.get("protocol") or "TCP") == "TCP"]  # fmt: skip
            if not numbers or not isinstance(numbers[0], int):
                continue
            for e in s.get("endpoints") or []:
                if (e.get("conditions") or {}).get("ready") is False:
                    continue
                backends += [(str(a), numbers[0]) for a in (e.get("addresses") or [])[:1]]
        if backends:
            out[(str(ip), int(port["port"]))] = sorted(set(backends))
    return out


def service_rules(
    services: Iterable[Mapping[str, Any]], slices: Iterable[Mapping[str, Any]]
) -> str:
    """The ``iptables-restore --noflush`` input that makes :data:`CHAIN` what ``services``
    need (declaring the chain flushes it)."""
    slices = list(slices)
    by_ns: dict[str, list[Mapping[str, Any]]] = {}
    for s in slices:
        by_ns.setdefault(str((s.get("metadata") or {}).get("namespace")), []).append(s)
    lines = ["*nat", f":{CHAIN} - [0:0]"]
    for svc in sorted(services, key=lambda s: (s["metadata"].get("namespace", ""),
                                               s["metadata"]["name"])):  # fmt: skip
        ns = str(svc["metadata"].get("namespace") or "default")
        for (ip, port), backends in sorted(endpoints(svc, by_ns.get(ns, [])).items()):
            match = f"-A {CHAIN} -d {ip}/32 -p tcp -m tcp --dport {port}"
            comment = f'-m comment --comment "{ns}/{svc["metadata"]["name"]}:{port}"'
            for i, (addr, target) in enumerate(backends):
                left = len(backends) - i
                spread = (
                    f" -m statistic --mode random --probability {1 / left:.10f}" if left > 1 else ""
                )
                lines.append(f"{match} {comment}{spread} -j DNAT --to-destination {addr}:{target}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


class ServiceRules:
    """Keeps :data:`CHAIN` in the node namespace as the Services and EndpointSlices say."""

    def __init__(self, iptables: str, netns: str = net.NODE_NETNS) -> None:
        self.iptables = iptables
        self.netns = netns
        self._applied: str | None = None
        self._hooked = False

    async def apply(
        self, services: Iterable[Mapping[str, Any]], slices: Iterable[Mapping[str, Any]]
    ) -> bool:
        """Install the rules when they changed; True when it did. NetError when iptables
        refuses them (the old rules stay)."""
        rules = service_rules(services, slices)
        if rules == self._applied:
            return False
        restore = ("ip", "netns", "exec", self.netns, f"{self.iptables}-restore", "--noflush")
        if not self._hooked:
            await netrun.run_cmd_async(net.Cmd(restore, hooks()))
            self._hooked = True
        await netrun.run_cmd_async(net.Cmd(restore, rules))
        self._applied = rules
        log.info("service rules: %d", rules.count("-j DNAT"))
        return True


class ApiRelay:
    """Relays ``127.0.0.1:port`` in ``netns`` to ``host:port`` of this process's namespace."""

    def __init__(self, host: str, port: int, netns: str = net.NODE_NETNS) -> None:
        self.host = host
        self.port = port
        self.netns = netns
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        sock = netrun.netns_socket(self.netns)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            sock.listen(128)
            sock.setblocking(False)
            self._server = await asyncio.start_server(self._relay, sock=sock)
        except BaseException:
            sock.close()
            raise
        log.info("the API server at %s:%d is reachable from %s", self.host, self.port, self.netns)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            try:
                up_r, up_w = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), 10.0
                )
            except (OSError, TimeoutError) as exc:
                log.warning("API relay: cannot reach %s:%d: %s", self.host, self.port, exc)
                return
            try:
                await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))
            finally:
                up_w.close()
        finally:
            writer.close()
            if task is not None:
                self._conns.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._conns):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()
            else:
                writer.close()


__all__ = ["CHAIN", "ApiRelay", "ServiceRules", "endpoints", "hooks", "service_rules"]
