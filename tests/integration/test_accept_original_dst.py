"""``OriginalDst``: the original destination of an accepted descriptor, read with no socket object.

Redirected connections, and plain ones where conntrack answers with the listener's own address,
are in ``test_proxy_intercept.py`` (iptables in a namespace); here the cases where the kernel
has nothing to answer: a plain connection without NAT, descriptors that are not TCP sockets.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from weft.proxy.accept.listen import OriginalDst, original_dst


@pytest.fixture(params=[socket.AF_INET, socket.AF_INET6])
def accepted(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, int, int]]:
    family = request.param
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.bind((host, 0))
    except OSError:
        listener.close()
        pytest.skip("no IPv6 loopback here")
    listener.listen()
    client = socket.create_connection(listener.getsockname()[:2])
    conn, _ = listener.accept()
    yield conn, family, listener.getsockname()[1]
    for s in (conn, client, listener):
        s.close()


def test_a_connection_that_was_not_redirected_has_none(
    accepted: tuple[socket.socket, int, int],
) -> None:
    conn, family, port = accepted
    assert OriginalDst().read(conn.fileno(), family, port) is None
    # the same answer as the socket-object reading (used where a transport exists already)
    assert original_dst(conn, port, family) is None


def test_descriptors_that_are_not_tcp_sockets_have_none() -> None:
    reader = OriginalDst()
    r, w = os.pipe()
    try:
        assert reader.read(r, socket.AF_INET, 4140) is None  # ENOTSOCK: no exception
    finally:
        os.close(r)
        os.close(w)
    a, b = socket.socketpair()
    try:
        assert reader.read(a.fileno(), socket.AF_UNIX, 4140) is None
        assert reader.read(a.fileno(), socket.AF_INET, 4140) is None
    finally:
        a.close()
        b.close()
    assert reader.read(-1, socket.AF_INET, 4140) is None  # EBADF
