"""HPACK (RFC 7541), the header compression of HTTP/2: a decoder and an encoder, sans-I/O.

Why not the ``hpack`` package (python-hyper) for this: measured on this machine with a gRPC
request's eight headers, its encoder takes 11 us and its decoder 16 us per header block, where a
whole proxied request must cost less than Envoy's ~40 us. These are tight loops over bytes and
dictionaries, compiled by mypyc with the rest of the proxy's hot path. What ``hpack`` has that
is data, not per-request code, is reused: its Huffman code table (RFC 7541 Appendix B), from
which the decoding table is built at import, and its static table (Appendix A). Its Huffman
decoder is not: servers that do not index their header values (nginx sends ``date``, ``server``
and ``grpc-status`` as Huffman literals in every answer) made it 18% of the proxy's CPU under
gRPC load, interpreted Python in a compiled path.

:class:`Decoder` turns one header block into ``(name, value)`` pairs and keeps the dynamic table
in step with the peer's encoder. It checks what RFC 9113 8.2.1 requires of field names and values
(lower-case tokens, no NUL/CR/LF, no surrounding whitespace) once per table entry, not once per
use: indexed fields were checked when they entered the table (a literal naming a dynamic entry
has that name checked again: the entry may be invalid for its value only). A block that breaks
HPACK itself raises :class:`HpackError` (a connection error, COMPRESSION_ERROR: the tables can no
longer agree). A block that decodes but holds a malformed field or is larger than ``max_list_size``
still updates the table (it must, to stay in step) and is reported through
:attr:`Decoder.malformed` / :attr:`Decoder.too_large` (a stream error for the caller).

:class:`Encoder` writes the proxy's own header blocks: indexed when the pair is in a table,
otherwise a literal, added to the dynamic table unless it is large, a call's ``grpc-timeout``, a
``set-cookie``, or sensitive (``authorization``, ``cookie``: never indexed, RFC 7541 7.1.3).
A field the peer sent "never indexed" is recorded by the decoder (:attr:`Decoder.never_indexed`)
so that the proxy can hand it to the encoder on the other side, which sends it the same way.
Strings are sent raw: Huffman coding would save about a fifth of the bytes of a literal, on
loopback and inside TLS records, for CPU on every literal.

Not for: framing (that is :mod:`weft.core.h2conn`), header semantics (pseudo-headers, connection
headers: :mod:`weft.core.h2conn`).
"""

from __future__ import annotations

import re
from typing import Final

from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable

Header = tuple[bytes, bytes]

DEFAULT_TABLE_SIZE: Final = 4096
ENTRY_OVERHEAD: Final = 32  # RFC 7541 4.1

STATIC: Final[tuple[Header, ...]] = tuple(HeaderTable.STATIC_TABLE)
_STATIC_LEN: Final = 61
# first index of each (name, value) and each name in the static table
_STATIC_PAIRS: Final[dict[Header, int]] = {}
_STATIC_NAMES: Final[dict[bytes, int]] = {}
for _i, _pair in enumerate(STATIC, 1):
    if _pair[1]:
        _STATIC_PAIRS.setdefault(_pair, _i)
    _STATIC_NAMES.setdefault(_pair[0], _i)

# RFC 9113 8.2.1: a name is a lower-case token (pseudo-headers: ':' and lower-case letters); a
# value has no NUL, CR or LF and no leading or trailing space or tab
_NAME: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+|:[a-z]+")
_GOOD_NAMES: Final[set[bytes]] = set()  # names that passed _NAME (bounded)

# literals the encoder never adds to its table: different in every message by design (a call's
# deadline), or private to one client. Everything else is indexed, as Envoy's encoder does:
# measured with grpcio clients, literals in every answer cost the client more than the churn of
# a 4 KB table costs us
_NO_INDEX: Final = frozenset({b"grpc-timeout", b"set-cookie"})

# literals sent "never indexed" (RFC 7541 7.1.3), so no intermediary indexes them either
_NEVER_INDEX: Final = frozenset({b"authorization", b"proxy-authorization", b"cookie"})


class HpackError(Exception):
    """A header block that breaks HPACK: the connection must end (COMPRESSION_ERROR)."""


def _valid_name(name: bytes) -> bool:
    if name in _GOOD_NAMES:
        return True
    if _NAME.fullmatch(name) is None:
        return False
    if len(_GOOD_NAMES) < 4096:
        _GOOD_NAMES.add(name)
    return True


def _bad_value(value: bytes) -> bool:
    """Whether ``value`` holds NUL, CR or LF, or starts or ends with a space or tab."""
    if not value:
        return False
    first = value[0]
    last = value[-1]
    if first == 32 or first == 9 or last == 32 or last == 9:
        return True
    return b"\r" in value or b"\n" in value or b"\x00" in value


def field_error(name: bytes, value: bytes) -> str | None:
    """Why ``name: value`` is not a valid HTTP/2 field (RFC 9113 8.2.1), or None."""
    if _NAME.fullmatch(name) is None:
        return f"invalid header name {name[:64]!r}"
    if _bad_value(value):
        return f"invalid value of header {name[:64]!r}"
    return None


def _read_int(block: bytes, pos: int, bits: int) -> tuple[int, int]:
    """An integer with a ``bits``-bit prefix at ``pos`` (RFC 7541 5.1): (value, next position)."""
    mask = (1 << bits) - 1
    value = block[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    end = len(block)
    while True:
        if pos >= end:
            raise HpackError("truncated integer")
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise HpackError("integer larger than 2^32")


def _read_str(block: bytes, pos: int) -> tuple[bytes, int]:
    """A string literal at ``pos`` (RFC 7541 5.2), Huffman-decoded when so marked."""
    if pos >= len(block):
        raise HpackError("truncated string")
    huffman = block[pos] & 0x80
    length, pos = _read_int(block, pos, 7)
    end = pos + length
    if end > len(block):
        raise HpackError("string longer than the header block")
    raw = block[pos:end]
    if huffman:
        # servers that never index (nginx) send the same Huffman strings in every message
        # (short ones only, at most 1,024 of them: the cache stays under ~200 KB)
        decoded = _HUFFMAN_CACHE.get(raw)
        if decoded is None:
            decoded = huffman_decode(raw)
            if length <= 96:
                if len(_HUFFMAN_CACHE) >= 1024:
                    _HUFFMAN_CACHE.clear()
                _HUFFMAN_CACHE[raw] = decoded
        raw = decoded
    return raw, end


def _huffman_table() -> list[int]:
    """The Huffman decoder's state table: for each internal node of the code tree (the bits read
    since the last symbol) and each 4-bit nibble, ``next node | symbol << 8 | flags << 16``;
    flags: 1 the next node is valid padding (at most 7 one-bits, RFC 7541 5.2), 2 EOS was
    decoded (an error), 4 a symbol was decoded (the shortest code has 5 bits: at most one per
    nibble)."""
    left, right, symbol = [-1], [-1], [-1]  # node 0: the root
    for sym, (code, length) in enumerate(zip(REQUEST_CODES, REQUEST_CODES_LENGTH, strict=True)):
        node = 0
        for shift in range(length - 1, -1, -1):
            children = right if (code >> shift) & 1 else left
            child = children[node]
            if child < 0:
                child = len(symbol)
                left.append(-1)
                right.append(-1)
                symbol.append(-1)
                children[node] = child
            node = child
        symbol[node] = sym
    internal = [n for n in range(len(symbol)) if symbol[n] < 0]
    number = {n: i for i, n in enumerate(internal)}
    padding = set()
    node = 0
    for _ in range(8):  # the all-ones path, depths 0 to 7
        padding.add(node)
        node = right[node]
    table = []
    for start in internal:
        for nibble in range(16):
            node, out, flags = start, 0, 0
            for shift in (3, 2, 1, 0):
                node = right[node] if (nibble >> shift) & 1 else left[node]
                if symbol[node] >= 0:
                    if symbol[node] == 256:
                        flags |= 2
                        node = 0
                        break
                    out, flags, node = symbol[node], flags | 4, 0
            if node in padding:
                flags |= 1
            table.append(number[node] | out << 8 | flags << 16)
    return table


_HUFFMAN: Final = _huffman_table()
_HUFFMAN_CACHE: Final[dict[bytes, bytes]] = {}  # Huffman strings seen lately, decoded


def huffman_decode(data: bytes) -> bytes:
    """A Huffman-coded string (RFC 7541 5.2); :class:`HpackError` when the code is invalid (EOS
    inside, or padding that is longer than 7 bits or not all ones)."""
    table = _HUFFMAN
    out = bytearray()
    state = 0
    entry = 1 << 16  # the empty string is valid
    for byte in data:
        entry = table[(state << 4) | (byte >> 4)]
        if entry & 0x20000:
            raise HpackError("invalid Huffman code: EOS inside the string")
        if entry & 0x40000:
            out.append((entry >> 8) & 0xFF)
        state = entry & 0xFF
        entry = table[(state << 4) | (byte & 0xF)]
        if entry & 0x20000:
            raise HpackError("invalid Huffman code: EOS inside the string")
        if entry & 0x40000:
            out.append((entry >> 8) & 0xFF)
        state = entry & 0xFF
    if not entry & 0x10000:
        raise HpackError("invalid Huffman code: padding not 0-7 one-bits")
    return bytes(out)


def _put_int(out: bytearray, first: int, bits: int, value: int) -> None:
    mask = (1 << bits) - 1
    if value < mask:
        out.append(first | value)
        return
    out.append(first | mask)
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _put_str(out: bytearray, data: bytes) -> None:
    _put_int(out, 0, 7, len(data))
    out += data


class Decoder:
    """Decodes the peer's header blocks, in order (one per connection and direction)."""

    def __init__(
        self, max_table_size: int = DEFAULT_TABLE_SIZE, max_list_size: int = 65536
    ) -> None:
        self.max_allowed = max_table_size  # what we advertised (SETTINGS_HEADER_TABLE_SIZE)
        self.max_size = max_table_size  # the current limit, as the peer's size updates set it
        self.max_list_size = max_list_size
        self.size = 0
        self.entries: list[Header] = []  # oldest first
        self.valid: list[bool] = []  # per entry: its name and value are valid HTTP/2 fields
        self.malformed: str | None = None  # the last block: why one of its fields is invalid
        self.too_large = False  # the last block: more than max_list_size
        # the last block: its fields sent "never indexed", which an intermediary must pass on
        # the same way (RFC 7541 6.2.3); usually none
        self.never_indexed: list[Header] = []

    def decode(self, block: bytes) -> list[Header]:
        """The fields of ``block``; raises :class:`HpackError` when it breaks HPACK."""
        out: list[Header] = []
        self.malformed = None
        self.too_large = False
        if self.never_indexed:
            self.never_indexed = []
        list_size = 0
        limit = self.max_list_size
        pos = 0
        end = len(block)
        while pos < end:
            byte = block[pos]
            if byte & 0x80:  # indexed field
                index, pos = _read_int(block, pos, 7)
                header = self._get(index, True)
            elif byte & 0x40:  # literal, added to the table
                index, pos = _read_int(block, pos, 6)
                name, value, pos, ok = self._literal(block, index, pos)
                header = (name, value)
                self._add(header, ok)
            elif byte & 0x20:  # dynamic table size update
                if list_size:  # a field came first (perhaps not kept: too_large)
                    raise HpackError("table size update after a header field")
                size, pos = _read_int(block, pos, 5)
                if size > self.max_allowed:
                    raise HpackError(f"table size {size} above the {self.max_allowed} allowed")
                self.max_size = size
                self._evict()
                continue
            else:  # literal not indexed (0000) or never indexed (0001)
                index, pos = _read_int(block, pos, 4)
                name, value, pos, ok = self._literal(block, index, pos)
                header = (name, value)
                if byte & 0x10:
                    self.never_indexed.append(header)
            list_size += len(header[0]) + len(header[1]) + ENTRY_OVERHEAD
            if list_size > limit:
                self.too_large = True
            elif not self.too_large:
                out.append(header)
        if self.too_large:
            return []
        return out

    def _literal(self, block: bytes, index: int, pos: int) -> tuple[bytes, bytes, int, bool]:
        """A literal field at ``pos`` whose name is ``index`` (0: a literal name): its name,
        value, the next position, and whether it is a valid field."""
        if index:
            name = self._get(index, False)[0]
            ok = index <= _STATIC_LEN or _valid_name(name)
        else:
            name, pos = _read_str(block, pos)
            ok = _valid_name(name)
        value, pos = _read_str(block, pos)
        if ok and _bad_value(value):
            ok = False
        if not ok and self.malformed is None:
            self.malformed = field_error(name, value)
        return name, value, pos, ok

    def _get(self, index: int, field: bool) -> Header:
        """The entry at ``index``; ``field``: used as a whole field (else for its name only),
        then an invalid entry makes the block malformed."""
        if index <= _STATIC_LEN:
            if index == 0:
                raise HpackError("index 0")
            return STATIC[index - 1]
        entries = self.entries
        at = len(entries) - 1 - (index - _STATIC_LEN - 1)
        if at < 0:
            raise HpackError(f"index {index} beyond the table")
        if field and not self.valid[at] and self.malformed is None:
            self.malformed = field_error(*entries[at])
        return entries[at]

    def _add(self, header: Header, ok: bool) -> None:
        size = len(header[0]) + len(header[1]) + ENTRY_OVERHEAD
        if size > self.max_size:  # an entry larger than the table empties it (RFC 7541 4.4)
            self.entries.clear()
            self.valid.clear()
            self.size = 0
            return
        self.entries.append(header)
        self.valid.append(ok)
        self.size += size
        if self.size > self.max_size:
            self._evict()

    def _evict(self) -> None:
        entries = self.entries
        drop = 0
        size = self.size
        while size > self.max_size:
            name, value = entries[drop]
            size -= len(name) + len(value) + ENTRY_OVERHEAD
            drop += 1
        if drop:
            del entries[:drop]
            del self.valid[:drop]
        self.size = size


class Encoder:
    """Encodes the proxy's header blocks for one connection and direction."""

    def __init__(self) -> None:
        self.max_size = DEFAULT_TABLE_SIZE
        self.size = 0
        self.entries: list[tuple[bytes, bytes, int]] = []  # (name, value, sequence), oldest first
        self.inserted = 0  # entries ever added: the next one's sequence number
        self.pairs: dict[Header, int] = {}  # (name, value) -> sequence of its newest entry
        self.names: dict[bytes, int] = {}  # name -> sequence of its newest entry
        self._updates: list[int] = []  # table size updates to signal in the next block

    def set_max_table_size(self, peer_limit: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE changed: use at most that (and 4,096)."""
        size = min(peer_limit, DEFAULT_TABLE_SIZE)
        if size == self.max_size:
            return
        self.max_size = size
        self._evict()
        # several changes before the next block: signal the smallest, then the last (4.2)
        updates = self._updates
        if not updates:
            updates.append(size)
        elif len(updates) == 1:
            if size < updates[0]:
                updates[0] = size
            else:
                updates.append(size)
        else:
            if size < updates[0]:
                updates[0] = size
            updates[1] = size

    def encode(self, headers: list[Header], never: list[Header] | None = None) -> bytes:
        """``headers`` as one header block. ``never``: fields to send "never indexed" whatever
        their name (as a peer sent them: RFC 7541 6.2.3 has an intermediary keep that)."""
        out = bytearray()
        if self._updates:
            for size in self._updates:
                _put_int(out, 0x20, 5, size)
            self._updates.clear()
        pairs = self.pairs
        sensitive = bool(never)
        for name, value in headers:
            key = (name, value)
            secret = sensitive and never is not None and key in never
            if not secret:
                index = _STATIC_PAIRS.get(key, 0)
                if index:
                    out.append(0x80 | index)
                    continue
                seq = pairs.get(key, -1)
                if seq >= 0:
                    _put_int(out, 0x80, 7, self.inserted - seq + _STATIC_LEN)
                    continue
            index = _STATIC_NAMES.get(name, 0)
            if not index:
                seq = self.names.get(name, -1)
                if seq >= 0:
                    index = self.inserted - seq + _STATIC_LEN
            size = len(name) + len(value) + ENTRY_OVERHEAD
            if secret or name in _NEVER_INDEX:
                _put_int(out, 0x10, 4, index)
                add = False
            elif size > self.max_size >> 1 or name in _NO_INDEX:
                _put_int(out, 0x00, 4, index)
                add = False
            else:
                _put_int(out, 0x40, 6, index)
                add = True
            if not index:
                _put_str(out, name)
            _put_str(out, value)
            if add:
                self._add(name, value, size)
        return bytes(out)

    def _add(self, name: bytes, value: bytes, size: int) -> None:
        seq = self.inserted
        self.inserted = seq + 1
        self.entries.append((name, value, seq))
        self.pairs[(name, value)] = seq
        self.names[name] = seq
        self.size += size
        if self.size > self.max_size:
            self._evict()

    def _evict(self) -> None:
        entries = self.entries
        drop = 0
        size = self.size
        while size > self.max_size:
            name, value, seq = entries[drop]
            size -= len(name) + len(value) + ENTRY_OVERHEAD
            if self.pairs.get((name, value)) == seq:
                del self.pairs[(name, value)]
            if self.names.get(name) == seq:
                del self.names[name]
            drop += 1
        if drop:
            del entries[:drop]
        self.size = size


__all__ = ["DEFAULT_TABLE_SIZE", "STATIC", "Decoder", "Encoder", "HpackError", "field_error"]
