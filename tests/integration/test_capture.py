"""weft.testing.capture: frame parsing and stream helpers (no privileges), and real captures
(root) in network namespaces the tests create: plaintext is seen on the wire, TLS is not.

The namespaces are named ``captest-*`` (not ``weft-*``, which is the local runtime's to clean up)
and deleted in every case.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import shutil
import socket
import ssl
import struct
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from weft.runtime.local import netrun
from weft.testing.capture import (
    Capture,
    CaptureError,
    Segment,
    capture,
    capturing,
    looks_like_tls,
    parse_frame,
    parse_ip,
)

# -- parsing (no privileges) ----------------------------------------------------------------


def tcp_header(sport: int, dport: int, seq: int, flags: int = 0x18, options: bytes = b"") -> bytes:
    offset = (20 + len(options)) // 4
    return (
        struct.pack("!HHIIBBHHH", sport, dport, seq, 0, offset << 4, flags, 65535, 0, 0) + options
    )


def ipv4(src: str, dst: str, payload: bytes, *, proto: int = 6, frag: int = 0) -> bytes:
    total = 20 + len(payload)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        total,
        1,
        frag,
        64,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return header + payload


def ipv6(src: str, dst: str, payload: bytes, *, next_header: int = 6) -> bytes:
    return (
        struct.pack("!IHBB", 6 << 28, len(payload), next_header, 64)
        + socket.inet_pton(socket.AF_INET6, src)
        + socket.inet_pton(socket.AF_INET6, dst)
        + payload
    )


def ether(packet: bytes, ethertype: int = 0x0800, *, vlan: bool = False) -> bytes:
    macs = b"\x02" * 6 + b"\x04" * 6
    if vlan:
        return macs + struct.pack("!HHH", 0x8100, 7, ethertype) + packet
    return macs + struct.pack("!H", ethertype) + packet


def test_parses_ipv4_tcp_in_ethernet_and_ignores_padding() -> None:
    tcp = tcp_header(40000, 443, 7, options=b"\x01\x01\x01\x01") + b"hello"
    frame = ether(ipv4("10.0.0.1", "10.0.0.2", tcp)) + b"\x00" * 20  # padded frame
    assert parse_frame(frame) == Segment("10.0.0.1", 40000, "10.0.0.2", 443, 7, 0x18, b"hello")
    assert parse_frame(ether(ipv4("10.0.0.1", "10.0.0.2", tcp), vlan=True)) is not None
    assert parse_frame(ipv4("10.0.0.1", "10.0.0.2", tcp), ethernet=False) is not None


def test_parses_ipv6_tcp() -> None:
    tcp = tcp_header(1234, 80, 99, flags=0x02)
    seg = parse_frame(ether(ipv6("fd00::1", "fd00::2", tcp + b"x"), 0x86DD))
    assert seg is not None and seg.flow == ("fd00::1", 1234, "fd00::2", 80)
    assert seg.syn and seg.payload == b"x"


def test_skips_what_is_not_a_tcp_segment() -> None:
    tcp = tcp_header(1, 2, 3) + b"data"
    assert parse_frame(ether(ipv4("10.0.0.1", "10.0.0.2", tcp, proto=17))) is None  # UDP
    assert parse_frame(ether(ipv4("10.0.0.1", "10.0.0.2", tcp, frag=0x2000))) is None  # MF
    assert parse_frame(ether(ipv4("10.0.0.1", "10.0.0.2", tcp, frag=5))) is None  # later part
    assert parse_frame(ether(ipv6("::1", "::1", tcp, next_header=0), 0x86DD)) is None
    assert parse_frame(ether(b"\x00" * 28, 0x0806)) is None  # ARP
    assert parse_frame(b"\x00" * 10) is None
    assert parse_ip(b"") is None
    bad_offset = bytearray(tcp_header(1, 2, 3))
    bad_offset[12] = 0xF0  # data offset 60 > segment length
    assert parse_frame(ether(ipv4("10.0.0.1", "10.0.0.2", bytes(bad_offset)))) is None


@given(st.binary(max_size=200), st.booleans())
def test_parsing_any_bytes_never_fails(frame: bytes, ethernet: bool) -> None:
    seg = parse_frame(frame, ethernet=ethernet)
    assert seg is None or isinstance(seg, Segment)


def tls_record(content_type: int, body: bytes, version: bytes = b"\x03\x03") -> bytes:
    return bytes([content_type]) + version + len(body).to_bytes(2, "big") + body


@given(
    st.lists(
        st.tuples(st.integers(0x14, 0x17), st.binary(min_size=1, max_size=300)),
        min_size=1,
        max_size=8,
    ),
    st.integers(0, 4),
)
def test_record_sequences_look_like_tls_even_cut_short(
    records: list[tuple[int, bytes]], cut: int
) -> None:
    data = b"".join(tls_record(t, body) for t, body in records)
    assert looks_like_tls(data)
    assert looks_like_tls(data[: max(5, len(data) - cut)])


def test_what_does_not_look_like_tls() -> None:
    client_hello = tls_record(0x16, b"\x01" * 40, version=b"\x03\x01")
    assert looks_like_tls(client_hello + tls_record(0x17, b"x"))
    assert not looks_like_tls(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
    assert not looks_like_tls(b"\x16\x03")  # too short to tell
    assert not looks_like_tls(tls_record(0x18, b"x"))  # unknown content type
    assert not looks_like_tls(tls_record(0x17, b"x", version=b"\x03\x01") * 2)  # 0x0301 later
    assert not looks_like_tls(tls_record(0x17, b"x") + b"GET / HTTP/1.1\r\n")
    assert not looks_like_tls(b"\x17\x03\x03\x00\x00")  # empty record
    assert not looks_like_tls(b"\x17\x03\x03\xff\xff" + b"x" * 100)  # longer than a record


@given(st.binary(max_size=100))
def test_looks_like_tls_accepts_any_bytes(data: bytes) -> None:
    assert looks_like_tls(data) in (True, False)


def seg(
    src: str, sport: int, dst: str, dport: int, seq: int, data: bytes, flags: int = 0x18
) -> Segment:
    return Segment(src, sport, dst, dport, seq, flags, data)


def test_streams_payload_and_contains() -> None:
    server = ("10.0.0.2", 443)
    segments = (
        seg("10.0.0.1", 5000, "10.0.0.2", 443, 0, b"", flags=0x02),  # SYN
        seg("10.0.0.1", 5000, "10.0.0.2", 443, 1, b"secret-pa"),
        seg("10.0.0.2", 443, "10.0.0.1", 5000, 1, b"reply"),
        seg("10.0.0.1", 5000, "10.0.0.2", 443, 1, b"secret-pa"),  # retransmitted
        seg("10.0.0.1", 5000, "10.0.0.2", 443, 10, b"ssword"),
        seg("10.0.0.3", 6000, "10.0.0.2", 80, 5, b"older connection"),  # no SYN seen
    )
    cap = Capture("eth0", segments)
    assert cap.streams(server) == {
        ("10.0.0.1", 5000, "10.0.0.2", 443): b"secret-password",
        ("10.0.0.2", 443, "10.0.0.1", 5000): b"reply",
    }
    assert cap.contains(b"secret-password")  # split across segments
    assert not cap.contains(b"passwordreply")  # directions are not mixed
    assert cap.payload(("10.0.0.2", 80)) == b"older connection"
    assert cap.payload() == b"secret-pareplysecret-passwordolder connection"
    assert ("10.0.0.3", 6000, "10.0.0.2", 80) not in cap.streams(opened_only=True)
    with pytest.raises(ValueError, match="needle"):
        cap.contains(b"")


def test_bad_arguments_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="seconds"):
        capture(None, "lo", seconds=0, max_bytes=10)
    with pytest.raises(ValueError, match="max_bytes"):
        capture(None, "lo", seconds=1, max_bytes=0)
    with pytest.raises(ValueError, match="seconds"):
        capturing(None, "lo", max_bytes=10, seconds=float("inf"))
    with pytest.raises(CaptureError):
        capture("captest-does-not-exist", "lo", seconds=0.1, max_bytes=10)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_a_missing_interface_is_named() -> None:
    with pytest.raises(CaptureError, match="'nope0'"):
        capture(None, "nope0", seconds=0.1, max_bytes=10)


async def test_result_is_only_there_after_the_block() -> None:
    cap = capturing(None, "lo", max_bytes=10)
    with pytest.raises(RuntimeError, match="not finished"):
        _ = cap.result


# -- real captures (root) -------------------------------------------------------------------

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"
)


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def delete_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


@dataclass(frozen=True)
class Link:
    """Where a client connects to a server: the namespaces, the address, the captured link."""

    client_ns: str
    server_ns: str
    family: int
    server_ip: str
    capture_ns: str
    interface: str


@pytest.fixture
def loopback() -> Iterator[str]:
    name = f"captest-{uuid.uuid4().hex[:8]}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        delete_netns(name)


@pytest.fixture
def veth() -> Iterator[Link]:
    """Two namespaces joined by a veth pair: a client at 10.254.0.1, a server at 10.254.0.2."""
    tag = uuid.uuid4().hex[:8]
    client, server = f"captest-{tag}-c", f"captest-{tag}-s"
    try:
        sh("ip", "netns", "add", client)
        sh("ip", "netns", "add", server)
        sh("ip", "-n", client, "link", "add", "capc", "type", "veth", "peer", "name", "caps",
           "netns", server)  # fmt: skip
        for ns, dev, addr in ((client, "capc", "10.254.0.1/30"), (server, "caps", "10.254.0.2/30")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield Link(client, server, socket.AF_INET, "10.254.0.2", client, "capc")
    finally:
        delete_netns(client)
        delete_netns(server)


@dataclass(frozen=True)
class Tls:
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A throwaway self-signed certificate for ``captest.local``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "captest.local")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("captest.local")]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    d: Path = tmp_path_factory.mktemp("captest-tls")
    cert_pem = d / "cert.pem"
    key_pem = d / "key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_pem, key_pem)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cert_pem)
    return Tls(server, client)


async def exchange(link: Link, message: bytes, tls: Tls | None) -> tuple[str, int]:
    """Connect from the client namespace to an echo server in the server namespace, send
    ``message``, read it back; returns the server's endpoint."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(await reader.readexactly(len(message)))
            await writer.drain()
        finally:
            writer.close()

    listener = netrun.netns_socket(link.server_ns, link.family)
    listener.bind((link.server_ip, 0))
    listener.listen()
    port = listener.getsockname()[1]
    server = await asyncio.start_server(echo, sock=listener, ssl=tls.server if tls else None)
    try:
        sock = netrun.netns_socket(link.client_ns, link.family)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(sock, (link.server_ip, port)), 5.0
            )
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(
            sock=sock,
            ssl=tls.client if tls else None,
            server_hostname="captest.local" if tls else None,
        )
        try:
            writer.write(message)
            await writer.drain()
            assert await asyncio.wait_for(reader.readexactly(len(message)), 5.0) == message
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    return (link.server_ip, port)


def plaintext_needle() -> bytes:
    return b"weft-plaintext-" + uuid.uuid4().hex.encode() + b"-" + b"x" * 2000


def loopback_link(netns: str, family: int) -> Link:
    ip = "127.0.0.1" if family == socket.AF_INET else "::1"
    return Link(netns, netns, family, ip, netns, "lo")


FAMILIES = [
    pytest.param(socket.AF_INET, id="ipv4"),
    pytest.param(
        socket.AF_INET6,
        id="ipv6",
        marks=pytest.mark.skipif(not Path("/proc/sys/net/ipv6").exists(), reason="no IPv6"),
    ),
]


@needs_root
@pytest.mark.parametrize("family", FAMILIES)
async def test_plaintext_is_seen_on_loopback_and_tls_is_not(
    loopback: str, family: int, tls: Tls
) -> None:
    link = loopback_link(loopback, family)
    needle = plaintext_needle()
    async with capturing(link.capture_ns, link.interface, max_bytes=1 << 20) as plain:
        server = await exchange(link, needle, None)
    assert plain.result.contains(needle)
    # sent once, echoed once: loopback's two copies of each packet are not both kept
    assert plain.result.payload(server).count(needle) == 2
    assert not any(looks_like_tls(s) for s in plain.result.streams(server).values())

    async with capturing(link.capture_ns, link.interface, max_bytes=1 << 20) as encrypted:
        server = await exchange(link, needle, tls)
    cap = encrypted.result
    assert not cap.contains(needle) and needle not in cap.payload()
    streams = cap.streams(server, opened_only=True)
    assert len(streams) == 2  # both directions
    assert all(looks_like_tls(s) for s in streams.values())


@needs_root
async def test_over_a_veth_pair_between_namespaces(veth: Link, tls: Tls) -> None:
    needle = plaintext_needle()
    async with capturing(veth.capture_ns, veth.interface, max_bytes=1 << 20) as plain:
        await exchange(veth, needle, None)
    async with capturing(veth.capture_ns, veth.interface, max_bytes=1 << 20) as encrypted:
        server = await exchange(veth, needle, tls)
    assert plain.result.contains(needle)
    assert not encrypted.result.contains(needle)
    streams = encrypted.result.streams(server, opened_only=True)
    assert len(streams) == 2 and all(looks_like_tls(s) for s in streams.values())


@needs_root
async def test_blocking_capture_and_its_byte_bound(loopback: str) -> None:
    link = loopback_link(loopback, socket.AF_INET)
    needle = plaintext_needle()

    async def traffic() -> None:
        for _ in range(3):  # one exchange seen is enough, whenever the capture got going
            await asyncio.sleep(0.3)
            await exchange(link, needle, None)

    cap, _ = await asyncio.gather(
        asyncio.to_thread(capture, loopback, "lo", seconds=2.0, max_bytes=1 << 20), traffic()
    )
    assert cap.contains(needle) and not cap.truncated

    async with capturing(loopback, "lo", max_bytes=100) as small:
        await exchange(link, needle, None)
    assert small.result.truncated
    assert len(small.result.payload()) <= 100
