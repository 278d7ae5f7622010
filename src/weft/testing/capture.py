"""A packet capture for tests: which TCP bytes cross a link, to show that traffic is encrypted.

:func:`capture` (blocking, for ``seconds``) and :class:`capturing` (an async context manager that
captures while its body runs) read every frame of one interface, in a network namespace or in
this process's, through a raw ``AF_PACKET`` socket (so no tcpdump and no new dependency; it needs
root, or ``CAP_NET_RAW``). The socket is made inside the namespace by
:func:`weft.runtime.local.netrun.netns_socket`, so the calling thread never changes namespace.

Frames are parsed down to TCP (Ethernet with an optional VLAN tag, or raw IP; IPv4 without
fragments, IPv6 without extension headers) into :class:`Segment` values; everything else is
skipped. :class:`Capture` holds the segments and answers the questions tests ask: the payload
seen to or from an address (:meth:`~Capture.payload`), each direction of each connection as one
byte stream (:meth:`~Capture.streams`), whether some plaintext crossed the link
(:meth:`~Capture.contains`), and :func:`looks_like_tls` says whether a stream is TLS records.

On a loopback interface the kernel shows each packet twice (sent, then received): only the
received copy is kept. Captured payload is bounded by ``max_bytes`` (then the capture stops and
says it was truncated).

Not for: production use, or traffic other than TCP (and no reassembly beyond dropping exact
retransmissions: links inside one machine do not reorder).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import time
from dataclasses import dataclass
from types import TracebackType

from weft.runtime.local import netrun

ETH_P_ALL = 0x0003
_ETH_P_IP = 0x0800
_ETH_P_IPV6 = 0x86DD
_ETH_P_8021Q = 0x8100
_PACKET_OUTGOING = 4
_ARPHRD_ETHER = 1
_ARPHRD_LOOPBACK = 772
_ARPHRD_NONE = 65534  # tun devices: frames are IP packets
_TCP = 6
_SYN = 0x02
# GSO lets local links carry packets of up to 64 KiB, plus headers
_FRAME_BUFFER = 256 * 1024
_POLL = 0.05
# a TLS record's body is at most 2^14 bytes plus the expansion a cipher may add
_MAX_TLS_RECORD = 2**14 + 256

Endpoint = tuple[str, int]
Flow = tuple[str, int, str, int]  # (source, source port, destination, destination port)


class CaptureError(Exception):
    """The capture could not start (no privilege, no such namespace or interface)."""


@dataclass(frozen=True, slots=True)
class Segment:
    """One TCP segment seen on the link."""

    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    flags: int
    payload: bytes

    @property
    def flow(self) -> Flow:
        return (self.src, self.sport, self.dst, self.dport)

    @property
    def syn(self) -> bool:
        return bool(self.flags & _SYN)

    def touches(self, endpoint: Endpoint) -> bool:
        return endpoint in ((self.src, self.sport), (self.dst, self.dport))


def parse_ip(packet: bytes) -> Segment | None:
    """The TCP segment in an IPv4 or IPv6 packet, or None (not TCP, a fragment, malformed)."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20 or len(packet) < ihl:
            return None
        total = int.from_bytes(packet[2:4], "big")
        fragment = int.from_bytes(packet[6:8], "big")
        if packet[9] != _TCP or fragment & 0x3FFF or total < ihl:
            return None  # not TCP, or a fragment (more fragments, or not the first)
        src = str(ipaddress.IPv4Address(packet[12:16]))
        dst = str(ipaddress.IPv4Address(packet[16:20]))
        # the frame may be padded past the packet (Ethernet minimum size)
        return _parse_tcp(src, dst, packet[ihl : min(total, len(packet))])
    if version == 6:
        if len(packet) < 40 or packet[6] != _TCP:
            return None
        length = int.from_bytes(packet[4:6], "big")
        src = str(ipaddress.IPv6Address(packet[8:24]))
        dst = str(ipaddress.IPv6Address(packet[24:40]))
        return _parse_tcp(src, dst, packet[40 : 40 + length])
    return None


def _parse_tcp(src: str, dst: str, tcp: bytes) -> Segment | None:
    if len(tcp) < 20:
        return None
    offset = (tcp[12] >> 4) * 4
    if offset < 20 or offset > len(tcp):
        return None
    return Segment(
        src=src,
        sport=int.from_bytes(tcp[0:2], "big"),
        dst=dst,
        dport=int.from_bytes(tcp[2:4], "big"),
        seq=int.from_bytes(tcp[4:8], "big"),
        flags=tcp[13],
        payload=bytes(tcp[offset:]),
    )


def parse_frame(frame: bytes, *, ethernet: bool = True) -> Segment | None:
    """The TCP segment in a link-layer frame (Ethernet, one optional VLAN tag; or, with
    ``ethernet=False``, a bare IP packet), or None."""
    if not ethernet:
        return parse_ip(frame)
    if len(frame) < 14:
        return None
    ethertype = int.from_bytes(frame[12:14], "big")
    start = 14
    if ethertype == _ETH_P_8021Q:
        if len(frame) < 18:
            return None
        ethertype = int.from_bytes(frame[16:18], "big")
        start = 18
    if ethertype not in (_ETH_P_IP, _ETH_P_IPV6):
        return None
    return parse_ip(frame[start:])


def looks_like_tls(payload: bytes) -> bool:
    """Whether ``payload`` (one direction of a connection, from its first byte) is a sequence of
    TLS records: content type 0x14-0x17 (change_cipher_spec, alert, handshake, application
    data), version 0x0303 (the first record may say 0x0301, as a ClientHello's does), a length
    no record can exceed. The last record may be cut short (the capture ended)."""
    if len(payload) < 5:
        return False
    pos = 0
    while pos + 5 <= len(payload):
        content_type = payload[pos]
        version = payload[pos + 1 : pos + 3]
        length = int.from_bytes(payload[pos + 3 : pos + 5], "big")
        if not 0x14 <= content_type <= 0x17:
            return False
        if version != b"\x03\x03" and not (pos == 0 and version == b"\x03\x01"):
            return False
        if not 0 < length <= _MAX_TLS_RECORD:
            return False
        pos += 5 + length
    return True


@dataclass(frozen=True, slots=True)
class Capture:
    """What a capture saw: the TCP segments, in order (see the module docstring)."""

    interface: str
    segments: tuple[Segment, ...]
    truncated: bool = False

    def _of(self, between: Endpoint | None) -> list[Segment]:
        return [s for s in self.segments if between is None or s.touches(between)]

    def payload(self, between: Endpoint | None = None) -> bytes:
        """Every payload byte seen (to or from ``between`` = ``(ip, port)`` when given), both
        directions, in capture order."""
        return b"".join(s.payload for s in self._of(between))

    def streams(
        self, between: Endpoint | None = None, *, opened_only: bool = False
    ) -> dict[Flow, bytes]:
        """Each direction of each connection (to or from ``between`` when given) as one byte
        stream, exact retransmissions dropped. ``opened_only``: only connections whose opening
        (SYN) the capture saw, so that each stream starts at its first byte (connections
        opened before the capture started are left out)."""
        opened = {s.flow for s in self.segments if s.syn}
        out: dict[Flow, list[bytes]] = {}
        seen: set[tuple[Flow, int, int]] = set()
        for s in self._of(between):
            flow = s.flow
            if not s.payload or (opened_only and flow not in opened):
                continue
            key = (flow, s.seq, len(s.payload))
            if key in seen:
                continue
            seen.add(key)
            out.setdefault(flow, []).append(s.payload)
        return {flow: b"".join(parts) for flow, parts in out.items()}

    def contains(self, needle: bytes) -> bool:
        """Whether ``needle`` crossed the link in clear (also split across segments)."""
        if not needle:
            raise ValueError("needle must not be empty")
        return any(needle in stream for stream in self.streams().values())


class _Sniffer:
    """One open packet socket, bound to an interface, and what it has read so far."""

    def __init__(self, netns: str | None, interface: str, max_bytes: int) -> None:
        if not interface:
            raise ValueError("interface must not be empty")
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes!r}")
        where = f"network namespace {netns!r}" if netns else "this network namespace"
        try:
            sock = netrun.netns_socket(netns, socket.AF_PACKET, socket.SOCK_RAW)
        except PermissionError:
            raise CaptureError("packet capture needs root (CAP_NET_RAW)") from None
        except OSError as exc:
            raise CaptureError(f"cannot open a packet socket in {where}: {exc}") from None
        try:
            sock.bind((interface, ETH_P_ALL))
        except OSError as exc:
            sock.close()
            raise CaptureError(f"cannot capture on {interface!r} in {where}: {exc}") from None
        self.interface = interface
        self.max_bytes = max_bytes
        self._sock = sock
        self._segments: list[Segment] = []
        self._bytes = 0
        self._truncated = False

    def run(self, deadline: float, stop: threading.Event) -> Capture:
        """Read frames until ``stop`` is set or ``deadline`` (monotonic) passes, then what is
        still queued; closes the socket."""
        try:
            self._sock.settimeout(_POLL)
            while not stop.is_set() and time.monotonic() < deadline and not self._truncated:
                try:
                    frame, address = self._sock.recvfrom(_FRAME_BUFFER)
                except TimeoutError:
                    continue
                self._take(frame, address)
            self._sock.setblocking(False)
            while not self._truncated:
                try:
                    frame, address = self._sock.recvfrom(_FRAME_BUFFER)
                except BlockingIOError:
                    break
                self._take(frame, address)
        finally:
            self._sock.close()
        return Capture(self.interface, tuple(self._segments), self._truncated)

    def _take(self, frame: bytes, address: tuple[str, int, int, int, bytes]) -> None:
        _, _, pkttype, hatype, _ = address
        if hatype == _ARPHRD_LOOPBACK and pkttype == _PACKET_OUTGOING:
            return  # the received copy of the same packet follows
        if hatype not in (_ARPHRD_ETHER, _ARPHRD_LOOPBACK, _ARPHRD_NONE):
            return
        segment = parse_frame(frame, ethernet=hatype != _ARPHRD_NONE)
        if segment is None:
            return
        if self._bytes + len(segment.payload) > self.max_bytes:
            self._truncated = True
            return
        self._bytes += len(segment.payload)
        self._segments.append(segment)


def _check_seconds(seconds: float) -> None:
    if not 0 < seconds < float("inf"):
        raise ValueError(f"seconds must be a positive finite number, got {seconds!r}")


def capture(netns: str | None, interface: str, *, seconds: float, max_bytes: int) -> Capture:
    """Capture the TCP segments on ``interface`` of network namespace ``netns`` (None: this
    process's) for ``seconds``, or until ``max_bytes`` of payload were seen. Blocks; run it in a
    thread while the traffic happens, or use :class:`capturing`. Raises CaptureError when the
    capture cannot start, ValueError for bad arguments."""
    _check_seconds(seconds)
    sniffer = _Sniffer(netns, interface, max_bytes)
    return sniffer.run(time.monotonic() + seconds, threading.Event())


class capturing:  # named like a function: ``async with capturing(...) as cap``
    """Capture while the body of ``async with`` runs (at most ``seconds``, a safety bound);
    :attr:`result` holds the :class:`Capture` afterwards. Frames are being read by the time the
    body starts."""

    def __init__(
        self, netns: str | None, interface: str, *, max_bytes: int, seconds: float = 60.0
    ) -> None:
        _check_seconds(seconds)
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes!r}")
        self.netns = netns
        self.interface = interface
        self.max_bytes = max_bytes
        self.seconds = seconds
        self._stop = threading.Event()
        self._task: asyncio.Future[Capture] | None = None
        self._result: Capture | None = None

    def __repr__(self) -> str:
        state = "done" if self._result else "running" if self._task else "not started"
        return f"<capturing {self.netns or '-'}/{self.interface} {state}>"

    @property
    def result(self) -> Capture:
        if self._result is None:
            raise RuntimeError("the capture has not finished: read result after the block")
        return self._result

    async def __aenter__(self) -> capturing:
        if self._task is not None:
            raise RuntimeError("a capturing object runs once")
        sniffer = await asyncio.to_thread(_Sniffer, self.netns, self.interface, self.max_bytes)
        deadline = time.monotonic() + self.seconds
        self._task = asyncio.ensure_future(asyncio.to_thread(sniffer.run, deadline, self._stop))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._task is not None
        self._stop.set()
        self._result = await self._task
