"""The accept path's decision (weft.core.accept): every verdict, and properties over any events."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from weft.core.accept import (
    MAX_EARLY_DIALS,
    UNREACHABLE_GRACE,
    Detection,
    DialGate,
    Verdict,
)

GET = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _hello(name: str) -> bytes:
    """A minimal TLS 1.2 ClientHello record with SNI ``name``."""
    host = name.encode()
    sni = b"\x00" + len(host).to_bytes(2, "big") + host
    sni_list = len(sni).to_bytes(2, "big") + sni
    ext = b"\x00\x00" + len(sni_list).to_bytes(2, "big") + sni_list
    body = (
        b"\x03\x03"
        + b"\x00" * 32
        + b"\x00"
        + b"\x00\x02\x13\x01"
        + b"\x01\x00"
        + len(ext).to_bytes(2, "big")
        + ext
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake


def test_client_protocols() -> None:
    det = Detection(10.0)
    assert det.step(0.0, GET) is Verdict.HTTP1
    assert det.step(0.0, PREFACE) is Verdict.HTTP2
    assert det.step(0.0, b"\x00\x01binary") is Verdict.OPAQUE
    assert det.step(0.0, b"GET / HT") is Verdict.WAIT  # incomplete request line


def test_opaque_detects_only_mesh_tls() -> None:
    assert Detection(10.0, opaque=True).step(0.0, GET) is Verdict.OPAQUE
    det = Detection(10.0, opaque=True, mesh_name="me.ns")
    assert det.step(0.0, _hello("me.ns")) is Verdict.MESH_TLS
    assert det.step(0.0, _hello("other.ns")) is Verdict.OPAQUE
    assert det.step(0.0, GET) is Verdict.OPAQUE


def test_an_incomplete_mesh_hello_holds_back_a_greeting_server() -> None:
    det = Detection(10.0, mesh_name="me.ns")
    partial = _hello("me.ns")[:20]
    assert det.step(0.0, partial, server=b"220 hi\r\n") is Verdict.WAIT
    assert det.step(0.0, b"", server=b"220 hi\r\n") is Verdict.SERVER_FIRST


def test_server_first_but_not_h2_settings() -> None:
    det = Detection(10.0)
    assert det.step(0.0, b"", server=b"220 ready\r\n") is Verdict.SERVER_FIRST
    assert det.step(0.0, b"", server=b"", server_eof=True) is Verdict.SERVER_FIRST
    assert det.step(0.0, b"", server=H2_SETTINGS) is Verdict.WAIT
    assert det.step(0.0, b"", server=b"") is Verdict.WAIT


def test_client_eof_and_loss() -> None:
    det = Detection(10.0)
    assert det.step(0.0, b"", client_lost=True) is Verdict.GONE
    assert det.step(0.0, b"GET", client_eof=True) is Verdict.OPAQUE
    assert det.step(0.0, b"", client_eof=True, server=b"") is Verdict.OPAQUE
    # closed without a byte, nothing dialed: nothing to relay
    assert det.step(0.0, b"", client_eof=True) is Verdict.EMPTY


def test_silent_at_the_deadline_is_closed_only_without_an_early_connection() -> None:
    det = Detection(10.0)
    assert det.step(9.9, b"") is Verdict.WAIT
    assert det.step(10.0, b"") is Verdict.SILENT
    assert det.step(10.0, b"", server=b"") is Verdict.OPAQUE  # dialed early: relay
    assert det.step(10.0, b"GET / HT") is Verdict.OPAQUE  # the client spoke


def test_failed_dials_then_unreachable() -> None:
    det = Detection(10.0)
    det.dials = 1
    assert det.step(0.0, b"", dial_failed=True) is Verdict.REDIAL
    assert det.step(0.0, GET, dial_failed=True) is Verdict.HTTP1
    while det.may_redial():
        det.redialed()
    assert det.dials == MAX_EARLY_DIALS
    det.give_up(2.0)
    assert det.deadline == 2.0 + UNREACHABLE_GRACE
    assert det.step(2.5, b"") is Verdict.WAIT
    assert det.step(det.deadline, b"") is Verdict.UNREACHABLE
    assert det.step(det.deadline, b"GET / HT") is Verdict.OPAQUE


_bytes = st.one_of(st.just(b""), st.just(GET), st.just(PREFACE), st.binary(max_size=64))


@given(
    client=_bytes,
    server=st.one_of(st.none(), st.binary(max_size=16)),
    client_eof=st.booleans(),
    client_lost=st.booleans(),
    server_eof=st.booleans(),
    dial_failed=st.booleans(),
    now=st.floats(0, 20),
    opaque=st.booleans(),
)
def test_properties(
    client: bytes,
    server: bytes | None,
    client_eof: bool,
    client_lost: bool,
    server_eof: bool,
    dial_failed: bool,
    now: float,
    opaque: bool,
) -> None:
    det = Detection(10.0, opaque=opaque)
    verdict = det.step(
        now,
        client,
        client_eof=client_eof,
        client_lost=client_lost,
        server=server,
        server_eof=server_eof,
        dial_failed=dial_failed,
    )
    # never closed silently when anyone spoke, or an early connection exists
    if verdict is Verdict.SILENT:
        assert not client and server is None and now >= 10.0
    # waiting only before the deadline, with nothing to decide on
    if verdict is Verdict.EMPTY:
        assert not client and server is None and client_eof
    if verdict is Verdict.WAIT:
        assert now < 10.0 and not client_lost and not client_eof
    # HTTP only when the client said so (and not on an opaque port)
    if verdict in (Verdict.HTTP1, Verdict.HTTP2):
        assert client and not opaque
    # a redial only for a client that has not spoken
    if verdict is Verdict.REDIAL:
        assert dial_failed and not client
    # a verdict is a function of its inputs
    assert (
        det.step(
            now,
            client,
            client_eof=client_eof,
            client_lost=client_lost,
            server=server,
            server_eof=server_eof,
            dial_failed=dial_failed,
        )
        is verdict
    )


def test_gate_runs_in_order_within_the_limit() -> None:
    gate = DialGate(2)
    started: list[int] = []
    tickets = [gate.acquire(lambda i=i: started.append(i)) for i in range(5)]
    assert started == [0, 1] and gate.active == 2
    DialGate.cancel(tickets[2])
    gate.release()
    assert started == [0, 1, 3]
    gate.release()
    gate.release()
    assert started == [0, 1, 3, 4] and gate.active == 1
    gate.release()
    assert gate.active == 0 and gate.peak == 2


@given(st.integers(1, 8), st.lists(st.sampled_from(["acquire", "release", "cancel"]), max_size=60))
def test_gate_never_exceeds_its_limit(limit: int, ops: list[str]) -> None:
    gate = DialGate(limit)
    running = 0
    started = 0
    tickets = []

    def start() -> None:
        nonlocal running, started
        running += 1
        started += 1

    for op in ops:
        if op == "acquire":
            tickets.append(gate.acquire(start))
        elif op == "release" and running:
            running -= 1
            gate.release()
        elif op == "cancel" and tickets:
            DialGate.cancel(tickets.pop(0))
        assert running == gate.active <= limit
        # nobody waits while a slot is free
        if gate.active < limit:
            assert all(t[0] is None for t in gate.waiting)
    assert gate.peak <= limit
