"""Tests for weft.core.hpack: RFC 7541 Appendix C, round trips against the ``hpack`` package
(python-hyper, an independent implementation) in both directions over sequences of header blocks
with table size changes, and the errors and malformed fields a peer can send."""

from __future__ import annotations

from dataclasses import dataclass

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.core.hpack import Decoder, Encoder, HpackError, field_error

Header = tuple[bytes, bytes]


def _entries(decoder: Decoder) -> list[Header]:
    """The decoder's dynamic table, newest first (as RFC 7541 Appendix C lists it)."""
    return list(reversed(decoder.entries))


def _int(first: int, bits: int, value: int) -> bytes:
    """``value`` as an HPACK integer with a ``bits``-bit prefix (RFC 7541 5.1), written out
    independently of the module under test."""
    mask = (1 << bits) - 1
    if value < mask:
        return bytes([first | value])
    out = [first | mask]
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _lit(name: bytes, value: bytes, first: int = 0x40) -> bytes:
    """A literal with a literal name, raw strings (``first``: 0x40 incremental indexing, 0x00
    without indexing, 0x10 never indexed)."""
    return bytes([first]) + _int(0, 7, len(name)) + name + _int(0, 7, len(value)) + value


# -- RFC 7541 Appendix C -----------------------------------------------------------------------

REQ1 = [
    (b":method", b"GET"),
    (b":scheme", b"http"),
    (b":path", b"/"),
    (b":authority", b"www.example.com"),
]
REQ2 = [*REQ1, (b"cache-control", b"no-cache")]
REQ3 = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":path", b"/index.html"),
    (b":authority", b"www.example.com"),
    (b"custom-key", b"custom-value"),
]
# (header block, fields, dynamic table newest first, table size)
REQUESTS_TABLES = [
    ([(b":authority", b"www.example.com")], 57),
    ([(b"cache-control", b"no-cache"), (b":authority", b"www.example.com")], 110),
    (
        [
            (b"custom-key", b"custom-value"),
            (b"cache-control", b"no-cache"),
            (b":authority", b"www.example.com"),
        ],
        164,
    ),
]
C3 = [
    "828684410f7777772e6578616d706c652e636f6d",
    "828684be58086e6f2d6361636865",
    "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
]
C4 = [
    "828684418cf1e3c2e5f23a6ba0ab90f4ff",
    "828684be5886a8eb10649cbf",
    "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
]

DATE1 = b"Mon, 21 Oct 2013 20:13:21 GMT"
DATE2 = b"Mon, 21 Oct 2013 20:13:22 GMT"
LOCATION = (b"location", b"https://www.example.com")
COOKIE = (b"set-cookie", b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1")
RESP1 = [(b":status", b"302"), (b"cache-control", b"private"), (b"date", DATE1), LOCATION]
RESP2 = [(b":status", b"307"), (b"cache-control", b"private"), (b"date", DATE1), LOCATION]
RESP3 = [
    (b":status", b"200"),
    (b"cache-control", b"private"),
    (b"date", DATE2),
    LOCATION,
    (b"content-encoding", b"gzip"),
    COOKIE,
]
RESPONSES_TABLES = [
    ([LOCATION, (b"date", DATE1), (b"cache-control", b"private"), (b":status", b"302")], 222),
    ([(b":status", b"307"), LOCATION, (b"date", DATE1), (b"cache-control", b"private")], 222),
    ([COOKIE, (b"content-encoding", b"gzip"), (b"date", DATE2)], 215),
]
C5 = [
    "4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a323120"
    "474d546e1768747470733a2f2f7777772e6578616d706c652e636f6d",
    "4803333037c1c0bf",
    "88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a69707738"
    "666f6f3d4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d6167653d33"
    "3630303b2076657273696f6e3d31",
]
C6 = [
    "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad1718"
    "63c78f0b97c8e9ae82ae43d3",
    "4883640effc1c0bf",
    "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7"
    "b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
]


@pytest.mark.parametrize("vectors", [C3, C4], ids=["C.3", "C.4"])
def test_rfc7541_requests(vectors: list[str]) -> None:
    decoder = Decoder()
    for block, fields, (table, size) in zip(
        vectors, [REQ1, REQ2, REQ3], REQUESTS_TABLES, strict=True
    ):
        assert decoder.decode(bytes.fromhex(block)) == fields
        assert _entries(decoder) == table
        assert decoder.size == size
        assert decoder.malformed is None
        assert not decoder.too_large


@pytest.mark.parametrize("vectors", [C5, C6], ids=["C.5", "C.6"])
def test_rfc7541_responses_with_eviction(vectors: list[str]) -> None:
    decoder = Decoder(max_table_size=256)
    for block, fields, (table, size) in zip(
        vectors, [RESP1, RESP2, RESP3], RESPONSES_TABLES, strict=True
    ):
        assert decoder.decode(bytes.fromhex(block)) == fields
        assert _entries(decoder) == table
        assert decoder.size == size


def test_encoder_writes_rfc7541_c3() -> None:
    """Raw strings and incremental indexing are what C.3 shows, byte for byte."""
    encoder = Encoder()
    for block, fields in zip(C3, [REQ1, REQ2, REQ3], strict=True):
        assert encoder.encode(fields).hex() == block


def test_encoder_never_indexes_sensitive_and_skips_volatile_fields() -> None:
    encoder = Encoder()
    block = encoder.encode([(b"authorization", b"secret"), (b"x-custom", b"a" * 3000)])
    # authorization: never indexed (0001) with static name index 23; the 3 kB literal is larger
    # than half the table: not indexed (0000)
    assert block[0] == 0x1F and block[1] == 23 - 15
    assert encoder.entries == []
    block = encoder.encode([(b"grpc-timeout", b"1S"), (b"set-cookie", b"a=1")])
    assert encoder.entries == []
    reference = hpack.Decoder()
    assert reference.decode(block, raw=True) == [(b"grpc-timeout", b"1S"), (b"set-cookie", b"a=1")]
    # everything else is indexed (as Envoy's encoder does), content-length included
    block = encoder.encode([(b"content-length", b"3")])
    assert [(n, v) for n, v, _ in encoder.entries] == [(b"content-length", b"3")]
    assert reference.decode(block, raw=True) == [(b"content-length", b"3")]


def test_decoder_records_the_fields_sent_never_indexed_for_each_block() -> None:
    reference = hpack.Encoder()
    decoder = Decoder()
    block = reference.encode(
        [
            (b":method", b"GET"),
            hpack.NeverIndexedHeaderTuple(b"x-token", b"s3cret"),
            (b"x-plain", b"1"),
            hpack.NeverIndexedHeaderTuple(b":path", b"/private"),
        ]
    )
    assert decoder.decode(block) == [
        (b":method", b"GET"),
        (b"x-token", b"s3cret"),
        (b"x-plain", b"1"),
        (b":path", b"/private"),
    ]
    assert decoder.never_indexed == [(b"x-token", b"s3cret"), (b":path", b"/private")]
    kept = decoder.never_indexed
    decoder.decode(reference.encode([(b"x-plain", b"1")]))
    assert decoder.never_indexed == []
    assert kept == [(b"x-token", b"s3cret"), (b":path", b"/private")]  # not reused


def test_encoder_sends_never_indexed_what_it_is_told_even_when_a_table_has_it() -> None:
    encoder = Encoder()
    reference = hpack.Decoder()
    # (x-token, a) enters the dynamic table; :method GET is in the static table
    first = encoder.encode([(b"x-token", b"a")])
    assert reference.decode(first, raw=True) == [(b"x-token", b"a")]
    never = [(b"x-token", b"a"), (b":method", b"GET"), (b"x-new", b"b")]
    block = encoder.encode([(b":method", b"GET"), (b"x-token", b"a"), (b"x-new", b"b")], never)
    fields = reference.decode(block, raw=True)
    assert fields == [(b":method", b"GET"), (b"x-token", b"a"), (b"x-new", b"b")]
    assert all(isinstance(f, hpack.NeverIndexedHeaderTuple) for f in fields)
    assert [(n, v) for n, v, _ in encoder.entries] == [(b"x-token", b"a")]  # nothing added
    # without it, the same fields are indexed again
    block = encoder.encode([(b":method", b"GET"), (b"x-token", b"a")])
    assert block == bytes([0x82, 0x80 | 62])
    assert not any(
        isinstance(f, hpack.NeverIndexedHeaderTuple) for f in reference.decode(block, raw=True)
    )


# -- round trips against the hpack package ----------------------------------------------------

NAMES = [
    b":method",
    b":path",
    b":authority",
    b"content-type",
    b"cache-control",
    b"user-agent",
    b"authorization",
    b"cookie",
    b"content-length",
    b"grpc-timeout",
    b"x-a",
    b"x-b",
    b"x-request-id",
]
VALUES = [b"", b"GET", b"/", b"/a/b?c=d", b"application/grpc", b"no-cache", b"1", b"abc"]

valid_names = st.one_of(
    st.sampled_from(NAMES),
    st.binary(min_size=1, max_size=12).map(lambda b: b"x-" + b.hex().encode()),
)
valid_values = st.one_of(
    st.sampled_from(VALUES),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-/=;,", max_size=40).map(str.encode),
    # larger than half a 4,096 table (not indexed by us) or than the whole table
    st.integers(1500, 4200).map(lambda n: b"v" * n),
)
valid_headers = st.lists(st.tuples(valid_names, valid_values), max_size=10)
# table sizes the peer may set: the default, 0, small (constant eviction), above our 4,096 cap
table_sizes = st.sampled_from([4096, 0, 1, 64, 100, 256, 1000, 4095, 8192])


@dataclass
class Step:
    sizes: list[int]  # table size changes before the block
    headers: list[Header]


steps = st.lists(
    st.builds(Step, st.lists(table_sizes, max_size=3), valid_headers), min_size=1, max_size=8
)


@settings(max_examples=80, deadline=None)
@given(steps)
def test_ours_encode_reference_decodes(sequence: list[Step]) -> None:
    encoder = Encoder()
    reference = hpack.Decoder()
    for step in sequence:
        for size in step.sizes:
            encoder.set_max_table_size(size)
            reference.max_allowed_table_size = size  # the peer's SETTINGS_HEADER_TABLE_SIZE
        block = encoder.encode(step.headers)
        assert [tuple(h) for h in reference.decode(block, raw=True)] == step.headers
        # both tables hold the same entries, newest first
        assert list(reference.header_table.dynamic_entries) == [
            (n, v) for n, v, _ in reversed(encoder.entries)
        ]
        assert encoder.max_size <= reference.max_allowed_table_size
        assert encoder.size <= encoder.max_size


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ([0], [0]),
        ([0, 4096], [0, 4096]),
        ([100, 4096, 200], [100, 200]),
        ([200, 100, 50], [50]),
        ([1000, 2000, 500, 3000], [500, 3000]),
        ([8192], []),  # capped at 4,096, the size in use: no change to signal
        ([100, 8192], [100, 4096]),
    ],
)
def test_encoder_signals_smallest_then_last_size(changes: list[int], expected: list[int]) -> None:
    """RFC 7541 4.2: several changes between two blocks are signalled as the smallest size and
    then the final one, at the start of the next block."""
    encoder = Encoder()
    for size in changes:
        encoder.set_max_table_size(size)
    block = encoder.encode([(b":method", b"GET")])
    assert block == b"".join(_int(0x20, 5, s) for s in expected) + b"\x82"
    assert encoder.encode([(b":method", b"GET")]) == b"\x82"  # signalled once


any_names = st.one_of(
    valid_names,
    st.sampled_from([b"X-Upper", b"Content-Type", b"bad name", b"x:y", b""]),
)
any_values = st.one_of(
    valid_values,
    st.sampled_from([b"a\r\nb", b"nul\x00", b" lead", b"trail\t", b"\n", b"ok value", b"\xff\xfe"]),
)


@dataclass
class PeerStep:
    size: int | None  # the peer's encoder table size, set before the block
    headers: list[tuple[bytes, bytes, bool]]  # name, value, sensitive (never indexed)


peer_steps = st.lists(
    st.builds(
        PeerStep,
        st.one_of(st.none(), table_sizes),
        st.lists(st.tuples(any_names, any_values, st.booleans()), max_size=10),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(peer_steps, st.sampled_from([65536, 300, 2000]))
def test_reference_encode_ours_decode(sequence: list[PeerStep], list_limit: int) -> None:
    """The hpack package's encoder (Huffman and indexing on, some fields never indexed) to our
    decoder: the same fields, the same table, and ``malformed`` / ``too_large`` exactly when a
    field of the block is invalid / the block is larger than ``max_list_size``."""
    reference = hpack.Encoder()
    decoder = Decoder(max_list_size=list_limit)
    decoder.max_allowed = 8192  # our SETTINGS_HEADER_TABLE_SIZE: the peer may grow its table
    for step in sequence:
        if step.size is not None:
            reference.header_table_size = step.size
        block = reference.encode(step.headers, huffman=True)
        fields = [(n, v) for n, v, _ in step.headers]
        got = decoder.decode(block)
        too_large = sum(len(n) + len(v) + 32 for n, v in fields) > list_limit
        assert decoder.too_large == too_large
        assert got == ([] if too_large else fields)
        invalid = [field_error(n, v) for n, v in fields if field_error(n, v) is not None]
        assert decoder.malformed == (invalid[0] if invalid else None)
        assert _entries(decoder) == list(reference.header_table.dynamic_entries)
        assert decoder.size == sum(len(n) + len(v) + 32 for n, v in decoder.entries)


# -- errors ------------------------------------------------------------------------------------

TABLE_UPDATE_4097 = _int(0x20, 5, 4097)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (b"\x80", "index 0"),
        (b"\xbe", "index 62 beyond the table"),  # empty dynamic table
        (b"\x82\xff\x80\x80", "truncated integer"),
        (b"\xff", "truncated integer"),
        (b"\x40", "truncated string"),
        (b"\x40\x03ab", "string longer than the header block"),
        (b"\x44\x05ab", "string longer than the header block"),
        (b"\x40\x7f", "truncated integer"),
        (b"\xff\xff\xff\xff\xff\xff\x01", "integer larger than 2^32"),
        (b"\x40\x7f\xff\xff\xff\xff\xff\x01", "integer larger than 2^32"),
        (b"\x40\x7f\xff\xff\xff\xff\x7f", "string longer than the header block"),
        (TABLE_UPDATE_4097, "table size 4097 above the 4096 allowed"),
        (b"\x82\x20", "table size update after a header field"),
        (b"\x82\x3f\xe1\x1f", "table size update after a header field"),
        # EOS (30 ones) inside a string, padding of 8 bits, padding not all ones
        (b"\x40\x81\x1f\x84\xff\xff\xff\xff", "invalid Huffman code"),
        (b"\x40\x81\x1f\x81\xff", "invalid Huffman code"),
        (b"\x40\x81\x18\x01a", "invalid Huffman code"),
        (b"\x40\x82\x1f\xff\x01a", "invalid Huffman code"),
    ],
)
def test_decode_errors(block: bytes, message: str) -> None:
    reference = hpack.Decoder()
    with pytest.raises(hpack.HPACKError):  # the reference agrees the block is broken
        reference.decode(block, raw=True)
    with pytest.raises(HpackError, match=message.replace("^", r"\^")):
        Decoder().decode(block)


def test_index_beyond_a_filled_table() -> None:
    decoder = Decoder()
    decoder.decode(_lit(b"x-a", b"1") + _lit(b"x-b", b"2"))
    assert decoder.decode(b"\xbe\xbf") == [(b"x-b", b"2"), (b"x-a", b"1")]
    with pytest.raises(HpackError, match="index 64 beyond the table"):
        decoder.decode(b"\xc0")


def test_table_size_update_after_a_field_of_a_too_large_block() -> None:
    """RFC 7541 4.2: a size update must come first, also when the fields before it were not
    kept because the block is above max_list_size."""
    decoder = Decoder(max_list_size=40)
    with pytest.raises(HpackError, match="after a header field"):
        decoder.decode(_lit(b"x-long", b"a" * 50) + b"\x20")


def test_table_size_updates_evict_and_allow_several() -> None:
    decoder = Decoder()
    decoder.decode(_lit(b"x-a", b"1") + _lit(b"x-b", b"2"))
    assert decoder.size == 2 * 36
    # two updates before the first field: shrink to 40 (keeps the newest), then grow back
    assert decoder.decode(_int(0x20, 5, 40) + _int(0x20, 5, 4096) + b"\xbe") == [(b"x-b", b"2")]
    assert decoder.size == 36 and decoder.max_size == 4096
    assert decoder.decode(b"\x20") == []
    assert decoder.entries == [] and decoder.size == 0
    # with a 0-size table, added literals are not kept
    assert decoder.decode(_lit(b"x-c", b"3")) == [(b"x-c", b"3")]
    assert decoder.entries == []


def test_entry_larger_than_the_table_empties_it() -> None:
    """RFC 7541 4.4."""
    decoder = Decoder(max_table_size=100)
    decoder.decode(_lit(b"x-a", b"1"))
    assert decoder.decode(_lit(b"x-big", b"v" * 100) + b"\x82") == [
        (b"x-big", b"v" * 100),
        (b":method", b"GET"),
    ]
    assert decoder.entries == [] and decoder.size == 0


# -- malformed fields --------------------------------------------------------------------------

REQUEST = b"\x82\x86\x84"  # :method GET, :scheme http, :path /


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (b"X-Upper", b"1"),
        (b"bad name", b"1"),
        (b"", b"1"),
        (b":Path", b"/"),
        (b"x-a", b"a\rb"),
        (b"x-a", b"a\nb"),
        (b"x-a", b"a\x00b"),
        (b"x-a", b" lead"),
        (b"x-a", b"\tlead"),
        (b"x-a", b"trail "),
        (b"x-a", b"trail\t"),
    ],
)
def test_malformed_field_and_its_later_uses(name: bytes, value: bytes) -> None:
    decoder = Decoder()
    assert decoder.decode(REQUEST + _lit(name, value)) == [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", b"/"),
        (name, value),
    ]
    assert decoder.malformed is not None
    # a valid block: malformed is about the last block only
    assert decoder.decode(REQUEST) is not None and decoder.malformed is None
    # the same entry used again by index
    assert decoder.decode(REQUEST + b"\xbe") == [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", b"/"),
        (name, value),
    ]
    assert decoder.malformed == field_error(name, value)
    # not indexed, never indexed: malformed as well, and the table is unchanged
    for first in (0x00, 0x10):
        decoder.decode(_lit(name, value, first))
        assert decoder.malformed is not None
    assert len(decoder.entries) == 1


def test_new_entry_named_after_an_invalid_name_is_invalid() -> None:
    """A literal whose name is the index of an entry with an invalid name, added to the table:
    the new entry's name is just as invalid, on every later use."""
    decoder = Decoder()
    decoder.decode(_lit(b"X-Upper", b"1"))
    assert decoder.malformed is not None
    assert decoder.decode(b"\x7e\x01\x32") == [(b"X-Upper", b"2")]  # name: index 62
    assert decoder.malformed is not None
    assert decoder.decode(b"\xbe") == [(b"X-Upper", b"2")]  # the new entry, used by index
    assert decoder.malformed is not None


def test_valid_field_named_after_an_entry_with_an_invalid_value() -> None:
    """The name of an entry whose value was invalid is a valid name: a literal reusing it with a
    valid value is a valid field (and a valid entry)."""
    decoder = Decoder()
    decoder.decode(_lit(b"x-a", b"bad\n"))
    assert decoder.malformed is not None
    assert decoder.decode(b"\x7e\x02ok") == [(b"x-a", b"ok")]
    assert decoder.malformed is None
    assert decoder.decode(b"\xbe") == [(b"x-a", b"ok")]
    assert decoder.malformed is None
    assert decoder.decode(b"\xbf") == [(b"x-a", b"bad\n")]
    assert decoder.malformed is not None


def test_valid_fields_are_not_malformed() -> None:
    decoder = Decoder()
    decoder.decode(
        REQUEST
        + _lit(b"x-a", b"")
        + _lit(b"x-b", b"in side")
        + _lit(b"x-c", b"\xff\x80obs-text")
        + _lit(b"!#$%&'*+-.^_`|~09az", b"1")
    )
    assert decoder.malformed is None


def test_too_large_block_keeps_the_table_in_step() -> None:
    decoder = Decoder(max_list_size=100)
    block = REQUEST + _lit(b"x-a", b"1" * 40) + _lit(b"x-b", b"2" * 40)
    assert decoder.decode(block) == []
    assert decoder.too_large
    assert _entries(decoder) == [(b"x-b", b"2" * 40), (b"x-a", b"1" * 40)]
    # the next block refers to both entries the too-large one added
    assert decoder.decode(b"\xbf") == [(b"x-a", b"1" * 40)]
    assert not decoder.too_large
    assert decoder.decode(b"\xbe") == [(b"x-b", b"2" * 40)]
    # exactly at the limit is not too large: 3 + 65 + 32 = 100
    exact = _lit(b"x-c", b"3" * 65, 0x00)
    assert decoder.decode(exact) == [(b"x-c", b"3" * 65)]
    assert not decoder.too_large
    assert decoder.decode(_lit(b"x-c", b"3" * 66, 0x00)) == []
    assert decoder.too_large


@given(st.binary(max_size=64))
@settings(max_examples=300, deadline=None)
def test_huffman_decoding_inverts_the_reference_encoder(data: bytes) -> None:
    from hpack.huffman import HuffmanEncoder
    from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

    from weft.core.hpack import huffman_decode

    assert huffman_decode(HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(data)) == data


@given(st.binary(max_size=12))
@settings(max_examples=500, deadline=None)
def test_huffman_decoding_accepts_and_refuses_what_the_reference_decoder_does(
    data: bytes,
) -> None:
    from hpack.huffman_table import decode_huffman

    from weft.core.hpack import huffman_decode

    try:
        expected: bytes | None = decode_huffman(data)
    except hpack.HPACKDecodingError:
        expected = None
    try:
        got: bytes | None = huffman_decode(data)
    except HpackError:
        got = None
    assert got == expected


def test_short_huffman_strings_are_decoded_once_and_long_ones_never_kept() -> None:
    from hpack.huffman import HuffmanEncoder
    from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

    from weft.core import hpack as ours

    encode = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode
    short, long = b"nginx/1.22.1", b"x" * 200
    # literal without indexing, new name: the name raw, the value Huffman-coded
    for value in (short, long):
        coded = encode(value)
        head = bytearray(b"\x00\x06x-test")
        ours._put_int(head, 0x80, 7, len(coded))  # H bit, then the length
        block = bytes(head) + coded
        ours._HUFFMAN_CACHE.clear()
        for _ in range(2):  # decoded, then (when short) served from the cache
            assert Decoder().decode(block) == [(b"x-test", value)]
        assert (coded in ours._HUFFMAN_CACHE) is (value is short)
