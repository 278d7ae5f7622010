"""Unit and property tests for weft.core.transport_header (the mesh transport header codec)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weft.core.transport_header import (
    MAGIC,
    MAX_HEADER,
    PROTOCOLS,
    TransportHeader,
    TransportHeaderError,
    decode,
    encode,
)

headers = st.builds(
    TransportHeader, port=st.integers(1, 65535), protocol=st.sampled_from(PROTOCOLS)
)


def test_the_wire_form_is_small_and_fixed() -> None:
    assert encode(TransportHeader(2525)) == b"weft\x01\x03\x09\xdd\x00"
    assert encode(TransportHeader(80, "http2")) == b"weft\x01\x03\x00\x50\x02"


@given(header=headers, rest=st.binary(max_size=64))
def test_a_header_round_trips_and_leaves_what_follows(header: TransportHeader, rest: bytes) -> None:
    wire = encode(header)
    assert len(wire) <= MAX_HEADER
    assert decode(wire + rest) == (header, len(wire))


@given(header=headers)
def test_every_proper_prefix_asks_for_more(header: TransportHeader) -> None:
    wire = encode(header)
    for n in range(len(wire)):
        assert decode(wire[:n]) is None


@given(st.binary(max_size=2 * MAX_HEADER))
def test_any_bytes_parse_ask_for_more_or_raise_the_codecs_error(data: bytes) -> None:
    try:
        result = decode(data)
    except TransportHeaderError:
        return
    if result is None:
        assert len(data) < MAX_HEADER
        return
    header, size = result
    assert size <= min(len(data), MAX_HEADER)
    assert encode(header) == data[:size]  # strict: only the canonical form parses


@given(header=headers, pos=st.integers(0, 8), value=st.integers(0, 255))
def test_a_corrupted_byte_is_an_error_or_another_valid_header(
    header: TransportHeader, pos: int, value: int
) -> None:
    wire = bytearray(encode(header))
    wire[pos] = value
    try:
        result = decode(bytes(wire))
    except TransportHeaderError:
        return
    assert result is not None
    assert encode(result[0]) == bytes(wire)


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",  # a plaintext request sent where a header must be
        b"\x16\x03\x01",  # TLS inside TLS
        b"wefT",
        b"weft\x02",  # a version this proxy does not speak
        b"weft\x01\x04",  # version 1 with a longer body
        b"weft\x01\x03\x00\x00\x00",  # port 0
        b"weft\x01\x03\x00\x50\x03",  # unknown protocol code
    ],
)
def test_malformed_headers_are_refused_as_early_as_possible(data: bytes) -> None:
    with pytest.raises(TransportHeaderError):
        decode(data)


def test_headers_are_validated_when_made() -> None:
    with pytest.raises(TransportHeaderError):
        TransportHeader(0)
    with pytest.raises(TransportHeaderError):
        TransportHeader(80, "smtp")
    assert MAGIC == b"weft"
