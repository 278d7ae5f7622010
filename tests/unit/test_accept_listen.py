"""Unit tests for the accept path's per-connection helpers (weft.proxy.accept.listen, .conn):
the socket uvloop is given, the listener's connection counts, the address keys."""

from __future__ import annotations

import socket

from hypothesis import given
from hypothesis import strategies as st

from weft.addr import format_addr
from weft.proxy.accept.listen import TRIM_AFTER_CLOSES, AcceptedFd, ConnCounts
from weft.proxy.accept.mesh import addr_key


def test_accepted_fd_is_read_as_a_stream_socket_of_its_family() -> None:
    fd = AcceptedFd(7, int(socket.AF_INET6))
    # what uvloop's connect_accepted_socket reads: plain integers, a descriptor, a close
    assert (fd.fileno(), fd.family, fd.type) == (7, socket.AF_INET6, socket.SOCK_STREAM)
    assert type(fd.family) is int and type(fd.type) is int
    fd.close()  # a no-op: libuv closed the descriptor already when uvloop calls it


def test_a_burst_of_closes_asks_for_one_trim_until_trimmed() -> None:
    bursts: list[int] = []
    counts = ConnCounts(lambda: bursts.append(counts.closes))
    counts.acquire("svc:80")
    counts.acquire("svc:80")
    assert counts.users == {"svc:80": 2}
    counts.release("svc:80")
    assert counts.users == {"svc:80": 1} and "svc:80" in counts.last_used
    for _ in range(3 * TRIM_AFTER_CLOSES):
        counts.closed_one()
    assert bursts == [TRIM_AFTER_CLOSES]  # once, not once per close while the trim is pending
    counts.trimmed()
    for _ in range(TRIM_AFTER_CLOSES):
        counts.closed_one()
    assert bursts == [TRIM_AFTER_CLOSES, TRIM_AFTER_CLOSES]


@given(
    st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)),
    st.integers(0, 65535),
)
def test_addr_key_is_format_addr_of_any_socket_address(host: str, port: int) -> None:
    assert addr_key((host, port)) == format_addr((host, port))
    assert addr_key((host, port, 0, 0)) == format_addr((host, port))  # IPv6 sockaddr
