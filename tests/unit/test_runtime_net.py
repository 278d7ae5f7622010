"""Unit tests for weft.runtime.local.net: ranges, IPAM, names, proxy-init rules, hosts files,
command plans; and, as root, that the rules load and netns sockets land in their namespace."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.runtime.local import net, netrun

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (network namespaces)")


# -- ranges ---------------------------------------------------------------------------------


def test_default_ranges_and_gateway() -> None:
    n = net.MeshNetwork.parse()
    assert str(n.pod_cidr) == "10.244.0.0/16"
    assert str(n.service_cidr) == "10.96.0.0/16"
    assert str(n.gateway) == "10.244.0.1"


@pytest.mark.parametrize(
    ("pod", "svc", "message"),
    [
        ("8.8.8.0/24", "10.96.0.0/16", "pod_cidr 8.8.8.0/24 must be a private range"),
        ("10.244.0.0/16", "1.1.1.0/24", "service_cidr 1.1.1.0/24 must be a private range"),
        ("127.0.0.0/16", "10.96.0.0/16", "must be a private range"),
        ("10.0.0.0/8", "10.96.0.0/16", "overlap"),
        ("10.244.0.0/29", "10.96.0.0/16", "too small"),
        ("10.244.0.1/16", "10.96.0.0/16", "pod_cidr: invalid network"),
        ("fd00::/64", "10.96.0.0/16", "not an IPv4 network"),
    ],
)
def test_invalid_ranges_name_the_field(pod: str, svc: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        net.MeshNetwork.parse(pod, svc)


# -- ipam -----------------------------------------------------------------------------------


def test_ipam_skips_network_gateway_broadcast_and_is_next_fit() -> None:
    ipam = net.Ipam(ipaddress.IPv4Network("10.1.0.0/29"))  # hosts .2 .. .6
    assert ipam.capacity == 5
    got = [str(ipam.allocate(f"p{i}")) for i in range(3)]
    assert got == ["10.1.0.2", "10.1.0.3", "10.1.0.4"]
    ipam.release(ipaddress.IPv4Address("10.1.0.2"))
    # a released address is reused only after the rest of the range
    assert str(ipam.allocate("p3")) == "10.1.0.5"
    assert str(ipam.allocate("p4")) == "10.1.0.6"
    assert str(ipam.allocate("p5")) == "10.1.0.2"
    with pytest.raises(net.IpamExhausted, match=r"10\.1\.0\.0/29"):
        ipam.allocate("p6")
    assert repr(ipam) == "<Ipam 10.1.0.0/29 used=5/5>"


def test_ipam_reserve_conflicts() -> None:
    ipam = net.Ipam(ipaddress.IPv4Network("10.1.0.0/24"))
    ipam.reserve(ipaddress.IPv4Address("10.1.0.9"), "a")
    ipam.reserve(ipaddress.IPv4Address("10.1.0.9"), "a")  # idempotent for the same owner
    with pytest.raises(ValueError, match="already used by a"):
        ipam.reserve(ipaddress.IPv4Address("10.1.0.9"), "b")
    with pytest.raises(ValueError, match="not a pod address"):
        ipam.reserve(ipaddress.IPv4Address("10.1.0.1"), "gateway")
    assert ipam.owner(ipaddress.IPv4Address("10.1.0.9")) == "a"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.just("alloc"), st.integers(0, 40)), max_size=120))
def test_ipam_never_hands_out_an_address_twice(ops: list[str | int]) -> None:
    network = ipaddress.IPv4Network("10.9.0.0/27")
    ipam = net.Ipam(network)
    held: list[ipaddress.IPv4Address] = []
    for op in ops:
        if op == "alloc":
            if len(held) == ipam.capacity:
                with pytest.raises(net.IpamExhausted):
                    ipam.allocate("x")
                continue
            ip = ipam.allocate("x")
            assert ip not in held
            assert ip in network and ip not in (network.network_address, net_gw(network))
            assert ip != network.broadcast_address
            held.append(ip)
        elif held:
            ipam.release(held.pop(int(op) % len(held)))
        assert len(ipam) == len(held)


def net_gw(network: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    return network.network_address + 1


# -- names and ports ------------------------------------------------------------------------


def test_pod_netns_names() -> None:
    assert net.pod_netns_name("shop", "web-abc") == "weft-shop-web-abc"
    long = net.pod_netns_name("a" * 63, "b" * 200)
    assert len(long) <= 100 and long.startswith("weft-")
    assert long != net.pod_netns_name("a" * 63, "b" * 199 + "c")
    assert net.is_weft_netns(long) and not net.is_weft_netns("other")


def test_veth_names_fit_the_kernel_limit_and_are_unique() -> None:
    network = ipaddress.IPv4Network("10.0.0.0/8")
    names = {net.veth_name(network, network.network_address + i) for i in (2, 3, 2**24 - 2)}
    assert len(names) == 3
    assert all(len(n) <= 15 and n.startswith("wv") for n in names)


def test_parse_ports() -> None:
    assert net.parse_ports("4568, 4567,5000-5002", "f") == (
        net.PortRange(4567, 4567),
        net.PortRange(4568, 4568),
        net.PortRange(5000, 5002),
    )
    assert net.parse_ports("", "f") == ()
    with pytest.raises(ValueError, match=r"skip-inbound-ports: invalid port or range 'x'"):
        net.parse_ports("80,x", "skip-inbound-ports")
    with pytest.raises(ValueError, match="invalid port or range '9-3'"):
        net.parse_ports("9-3", "f")
    with pytest.raises(ValueError, match="70000"):
        net.parse_ports("70000", "f")


# -- proxy-init rules -----------------------------------------------------------------------


def test_proxy_init_rules_redirect_and_skip() -> None:
    rules = net.proxy_init_rules(
        skip_inbound=net.parse_ports("4567,4568", "i"),
        skip_outbound=net.parse_ports("5432,6000-6010", "o"),
    )
    lines = rules.splitlines()
    assert lines[0] == "*nat" and lines[-1] == "COMMIT"
    # the inbound port itself is left alone: other proxies connect to it directly
    skips = "--dports 4143,4190,4191,4567,4568"
    assert any(skips in line and "-j RETURN" in line for line in lines)
    assert any(line.endswith("-j REDIRECT --to-ports 4143") for line in lines)
    assert any("--uid-owner 2102" in line and "-j RETURN" in line for line in lines)
    assert any("-o lo " in line and "-j RETURN" in line for line in lines)
    assert any("--dports 5432,6000:6010" in line and "-j RETURN" in line for line in lines)
    assert lines[-2].endswith("-j REDIRECT --to-ports 4140")
    # skip rules come before the catch-all redirect of their chain
    out_redirect = lines.index(lines[-2])
    assert all(
        i < out_redirect
        for i, line in enumerate(lines)
        if "WEFT_OUTBOUND" in line and "RETURN" in line
    )


def test_proxy_init_rules_split_long_port_lists() -> None:
    ports = tuple(net.PortRange(p, p) for p in range(1000, 1030))
    rules = net.proxy_init_rules(skip_outbound=ports)
    groups = [line for line in rules.splitlines() if "WEFT_OUTBOUND -p tcp -m multiport" in line]
    assert len(groups) == 2
    for line in groups:
        listed = line.split("--dports ")[1].split()[0].split(",")
        assert len(listed) <= 15


@needs_root
def test_proxy_init_rules_load_into_iptables() -> None:
    binary = netrun.detect_iptables()
    name = f"weft--unit-{uuid.uuid4().hex[:8]}"
    netrun.run_plan([net.Cmd(("ip", "netns", "add", name))])
    try:
        rules = net.proxy_init_rules(skip_inbound=net.parse_ports("4567,9000-9010", "i"))
        netrun.run_cmd(
            net.Cmd(("ip", "netns", "exec", name, f"{binary}-restore", "--noflush"), rules)
        )
        listing = netrun.run_cmd(net.Cmd(("ip", "netns", "exec", name, binary, "-t", "nat", "-S")))
        assert "--to-ports 4143" in listing and "--to-ports 4140" in listing
        assert "--uid-owner 2102" in listing
    finally:
        netrun.run_plan(net.netns_delete_plan(name))


# -- hosts files ----------------------------------------------------------------------------


def test_hosts_file_short_names_only_for_the_pods_namespace() -> None:
    text = net.hosts_file(
        pod="web-1",
        pod_ip="10.244.0.7",
        namespace="shop",
        services=[
            net.ServiceName("shop", "books", "10.96.0.10"),
            net.ServiceName("other", "emoji", "10.96.0.11"),
        ],
    )
    lines = text.splitlines()
    assert "10.244.0.7\tweb-1" in lines
    assert "10.96.0.10\tbooks books.shop.svc.cluster.local books.shop.svc books.shop" in lines
    assert "10.96.0.11\temoji.other.svc.cluster.local emoji.other.svc emoji.other" in lines
    assert text.endswith("\n")


def test_write_in_place_keeps_the_inode(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    net.write_in_place(path, "a much longer first version\n")
    inode = path.stat().st_ino
    net.write_in_place(path, "short\n")
    assert path.read_text() == "short\n"
    assert path.stat().st_ino == inode


def test_pod_etc_files(tmp_path: Path) -> None:
    d = net.write_pod_etc("weft-a-b", "hosts\n", etc_netns=tmp_path)
    assert (d / "hosts").read_text() == "hosts\n"
    assert "nameserver 127.0.0.1" in (d / "resolv.conf").read_text()
    net.remove_pod_etc("weft-a-b", etc_netns=tmp_path)
    assert not d.exists()
    with pytest.raises(ValueError, match="not a Weft namespace"):
        net.remove_pod_etc("../etc", etc_netns=tmp_path)


# -- plans ----------------------------------------------------------------------------------


def _all_text(plan: list[net.Cmd]) -> str:
    return "\n".join(" ".join(c.argv) + "\n" + (c.stdin or "") for c in plan)


def test_pod_plan_routes_only_the_mesh_ranges() -> None:
    network = net.MeshNetwork.parse("10.50.0.0/16", "10.60.0.0/16")
    ip = ipaddress.IPv4Address("10.50.0.9")
    pod = net.PodNet("weft-ns-p", ip, net.veth_name(network.pod_cidr, ip))
    text = _all_text(net.pod_up_plan(pod, network, iptables="iptables-nft"))
    assert "addr add 10.50.0.9/16 dev eth0" in text
    assert "route add 10.60.0.0/16 via 10.50.0.1 dev eth0" in text
    assert "default" not in text
    assert "iptables-nft-restore --noflush" in text
    unmeshed = net.PodNet("weft-ns-p", ip, "wv1", meshed=False)
    assert "iptables" not in _all_text(net.pod_up_plan(unmeshed, network, iptables="iptables"))


def test_node_and_host_plans() -> None:
    network = net.MeshNetwork.parse()
    node = _all_text(net.node_up_plan(network))
    assert "link add weft0 type bridge" in node
    assert "addr add 10.244.0.1/16 dev weft0" in node
    assert "route add unreachable 10.96.0.0/16" in node
    host = [c.argv for c in net.host_routes_plan(network)]
    assert host == [
        ("ip", "route", "add", "blackhole", "10.244.0.0/16", "proto", "247"),
        ("ip", "route", "add", "blackhole", "10.96.0.0/16", "proto", "247"),
    ]
    assert all("File exists" in c.ok_if for c in net.host_routes_plan(network))


def test_run_cmd_reports_the_failing_command() -> None:
    with pytest.raises(
        net.NetError, match=r"`sh -c echo nope >&2; exit 3` failed \(exit 3\): nope"
    ):
        netrun.run_cmd(net.Cmd(("sh", "-c", "echo nope >&2; exit 3")))
    assert netrun.run_cmd(net.Cmd(("sh", "-c", "echo x >&2; exit 1"), ok_if=("x",))) == ""
    assert netrun.run_cmd(net.Cmd(("sh", "-c", "exit 1"), optional=True)) == ""
    with pytest.raises(net.NetError, match="not installed"):
        netrun.run_cmd(net.Cmd(("weft-no-such-binary",)))


async def test_run_cmd_async_feeds_stdin() -> None:
    assert await netrun.run_cmd_async(net.Cmd(("cat",), stdin="hello")) == "hello"
    with pytest.raises(net.NetError, match="exit 4"):
        await netrun.run_cmd_async(net.Cmd(("sh", "-c", "exit 4")))


# -- sockets in namespaces ------------------------------------------------------------------


@needs_root
async def test_netns_socket_lives_in_its_namespace() -> None:
    name = f"weft--unit-{uuid.uuid4().hex[:8]}"
    netrun.run_plan(
        [
            net.Cmd(("ip", "netns", "add", name)),
            net.Cmd(("ip", "-n", name, "link", "set", "lo", "up")),
            net.Cmd(("ip", "-n", name, "addr", "add", "10.123.0.1/32", "dev", "lo")),
        ]
    )
    own = os.readlink("/proc/thread-self/ns/net")
    try:
        # the address exists only inside the namespace: binding proves where the socket is
        sock = netrun.netns_socket(name)
        sock.bind(("10.123.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(OSError):
            socket.socket().bind(("10.123.0.1", 0))
        assert await netrun.tcp_probe(name, "10.123.0.1", port)
        assert not await netrun.tcp_probe(None, "127.0.0.1", _closed_port())
        sock.close()
        # the calling thread never moved
        assert os.readlink("/proc/thread-self/ns/net") == own
    finally:
        netrun.run_plan(net.netns_delete_plan(name))


def test_netns_socket_missing_namespace() -> None:
    with pytest.raises(OSError, match="does not exist"):
        netrun.netns_socket("weft--no-such-namespace")


async def test_http_probe_status_classes() -> None:
    import asyncio

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        status = "200 OK" if b"/ok" in line else "503 Unavailable"
        writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await netrun.http_probe(None, "127.0.0.1", port, "/ok")
        assert not await netrun.http_probe(None, "127.0.0.1", port, "/bad")
        assert not await netrun.http_probe(None, "127.0.0.1", _closed_port(), "/ok")
    finally:
        server.close()
        await server.wait_closed()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


@needs_root
def test_detect_iptables_names_a_working_binary() -> None:
    binary = netrun.detect_iptables()
    assert binary in netrun.IPTABLES_CANDIDATES
    assert not any(n.startswith("weft--probe") for n in netrun.list_netns())
    subprocess.run([binary, "--version"], check=True, capture_output=True)


def test_pod_namespaces_are_told_apart_from_node_and_probes() -> None:
    assert net.is_weft_pod_netns("weft-shop-web-1")
    assert not net.is_weft_pod_netns(net.NODE_NETNS)
    assert not net.is_weft_pod_netns("weft--probe-123")
    assert not net.is_weft_pod_netns("other-ns")
    assert net.is_weft_netns("weft--probe-123")
