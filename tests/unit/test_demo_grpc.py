"""The demo gRPC service's pieces that need no server: the proto3 wire format (against the
encodings protobuf documents, and as properties), the environment settings, the traffic
generator's argument checks, and the demo manifest."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weft.demo import manifest_text
from weft.demo.grpc_traffic import Generator
from weft.demo.grpc_traffic import main as traffic_main
from weft.demo.ratings import (
    MESSAGES,
    PROTO,
    ProtoError,
    Rating,
    RatingRequest,
    Settings,
    Summary,
    WatchRequest,
    decode_varint,
    encode_varint,
    iter_ratings,
)
from weft.demo.ratings import main as ratings_main
from weft.resources.loader import load_text

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)


# -- wire format: the encodings of the protobuf documentation ------------------------------------


def test_varint_examples_from_the_protobuf_encoding_guide() -> None:
    assert encode_varint(1) == b"\x01"
    assert encode_varint(150) == b"\x96\x01"
    assert decode_varint(b"\x96\x01", 0) == (150, 2)
    assert encode_varint(2**64 - 1) == b"\xff" * 9 + b"\x01"


def test_field_encodings_match_protobuf() -> None:
    # "message Test1 { int32 a = 1; }" with a = 150 is 08 96 01
    assert RatingRequest(book_id=150).encode() == bytes.fromhex("089601")
    # a string field 3 "testing": 1a 07 74 65 73 74 69 6e 67 (as the guide's field 2, tag 0x12)
    assert Rating(review="testing").encode() == bytes.fromhex("1a0774657374696e67")
    # negative int32: ten bytes, two's complement over 64 bits
    assert RatingRequest(book_id=-1).encode() == b"\x08" + b"\xff" * 9 + b"\x01"
    # proto3 leaves out default values; fields in number order
    assert Summary().encode() == b""
    assert Summary(book_id=1, pod="p", size_bytes=2).encode() == bytes.fromhex(
        "0801220170" + "2802"
    )


def test_decode_skips_unknown_fields_of_every_wire_type() -> None:
    unknown = (
        bytes.fromhex("3896 01")  # field 7, varint
        + bytes.fromhex("41") + b"\x00" * 8  # field 8, 64-bit
        + bytes.fromhex("4a03") + b"abc"  # field 9, length-delimited
        + bytes.fromhex("55") + b"\x00" * 4  # field 10, 32-bit
    )  # fmt: skip
    data = unknown + Rating(book_id=2, stars=5, review="ok").encode()
    assert Rating.decode(data) == Rating(book_id=2, stars=5, review="ok")


def test_last_occurrence_of_a_field_wins() -> None:
    assert RatingRequest.decode(bytes.fromhex("0801 0802")) == RatingRequest(book_id=2)


def test_int32_is_read_as_protobuf_does_from_a_64_bit_varint() -> None:
    # an int64 -1 sent where the schema says int32 is -1; 2**32 + 5 truncates to 5
    assert RatingRequest.decode(b"\x08" + encode_varint(2**64 - 1)) == RatingRequest(book_id=-1)
    assert RatingRequest.decode(b"\x08" + encode_varint(2**32 + 5)) == RatingRequest(book_id=5)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x08", "truncated varint"),
        (b"\x08" + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
        (b"\x1a\x05abc", "runs past the end"),
        (b"\x1a\x02\xff\xfe", "invalid UTF-8"),
        (b"\x0a\x01x", "bytes for an int32"),  # book_id as length-delimited
        (b"\x18\x01", "a varint for a string"),  # review as a varint
        (b"\x0b", "wire type 3"),  # a group start
        (b"\x0d\x00\x00\x00\x00", "wire type 5"),  # book_id as fixed32
        (b"\x00\x01", "field number 0"),
        (b"\x41\x00\x00", "runs past the end"),  # unknown 64-bit field, cut short
        (b"\x0f", "wire type 7"),
    ],
)
def test_malformed_bytes_are_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(ProtoError, match=message):
        Rating.decode(data)


@pytest.mark.parametrize(
    "message",
    [
        RatingRequest(book_id=2**31),
        RatingRequest(book_id=True),
        Summary(size_bytes=2**63),
        Rating(review=b"bytes"),  # type: ignore[arg-type]
        Rating(stars="5"),  # type: ignore[arg-type]
    ],
)
def test_values_outside_their_type_are_refused_when_encoding(message: object) -> None:
    with pytest.raises(ValueError, match="must be"):
        message.encode()  # type: ignore[attr-defined]


def test_field_tables_agree_with_the_dataclasses_and_the_proto() -> None:
    for cls in MESSAGES:
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        assert [f.name for f in cls.FIELDS] == names
        declared = PROTO.split(f"message {cls.__name__} {{", 1)[1].split("}", 1)[0]
        for f in cls.FIELDS:
            assert f"{f.kind} {f.name} = {f.number};" in declared, (cls, f)


@given(book=INT32, stars=INT32, review=st.text())
def test_rating_round_trips(book: int, stars: int, review: str) -> None:
    rating = Rating(book_id=book, stars=stars, review=review)
    assert Rating.decode(rating.encode()) == rating


@given(
    book=INT32, count=INT32, total=INT32, pod=st.text(max_size=80), size=INT64
)  # fmt: skip
def test_summary_round_trips(book: int, count: int, total: int, pod: str, size: int) -> None:
    summary = Summary(book_id=book, count=count, stars_total=total, pod=pod, size_bytes=size)
    assert Summary.decode(summary.encode()) == summary


@given(st.integers(0, 2**64 - 1))
def test_varints_round_trip(value: int) -> None:
    data = encode_varint(value)
    assert decode_varint(data + b"rest", 0) == (value, len(data))


@given(st.binary(max_size=64))
def test_any_bytes_decode_or_fail_with_proto_error(data: bytes) -> None:
    for cls in MESSAGES:
        with contextlib.suppress(ProtoError):
            cls.decode(data)


def test_watch_request_and_upload() -> None:
    watch = WatchRequest(book_id=3, count=2, interval_ms=50)
    assert WatchRequest.decode(watch.encode()) == watch
    upload = list(iter_ratings(6, 10))
    assert [r.book_id for r in upload] == [1, 2, 3, 4, 1, 2]
    assert [r.stars for r in upload] == [1, 2, 3, 4, 5, 1]
    assert all(len(r.review) == 10 for r in upload)


# -- settings and command lines ------------------------------------------------------------------


def test_settings_from_the_environment() -> None:
    settings = Settings.from_env(
        {"PORT": "9000", "FAILURE_RATE": "0.25", "LATENCY_MS": "20", "WEFT_POD_NAME": "p-1"}
    )
    assert settings == Settings(port=9000, failure_rate=Fraction(1, 4), latency=0.02, pod="p-1")
    assert Settings.from_env({"HOSTNAME": "h"}) == Settings(pod="h")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "http"}, "PORT must be a port number"),
        ({"PORT": "0"}, "PORT must be 1-65535"),
        ({"FAILURE_RATE": "lots"}, "FAILURE_RATE must be a number"),
        ({"FAILURE_RATE": "1.5"}, "FAILURE_RATE must be within"),
        ({"LATENCY_MS": "soon"}, "LATENCY_MS must be a number"),
        ({"LATENCY_MS": "-1"}, "LATENCY_MS must be within"),
        ({"LATENCY_MS": "nan"}, "LATENCY_MS must be within"),
    ],
)
def test_bad_environment_is_a_clear_error(
    env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)
    assert ratings_main(env) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target", "ratings"], "--target must be HOST:PORT"),
        (["--target", "ratings:http"], "--target must be HOST:PORT"),
        (["--target", ":50051"], "--target must be HOST:PORT"),
        (["--rate", "0"], "--rate must be positive"),
        (["--concurrency", "0"], "--concurrency >= 1"),
        (["--timeout", "0"], "--timeout > 0"),
        (["--count", "-1"], "--count/--duration must be >= 0"),
    ],
)
def test_traffic_generator_refuses_bad_arguments(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert traffic_main(argv) == 2
    assert message in capsys.readouterr().err


def test_traffic_generator_slots_stop_at_the_count_or_the_duration() -> None:
    gen = Generator("h:1", rate=10, count=3, duration=0, concurrency=1, timeout=1)
    assert [gen._slot(i) is not None for i in range(4)] == [True, True, True, False]
    timed = Generator("h:1", rate=10, count=0, duration=0.25, concurrency=1, timeout=1)
    assert [timed._slot(i) is not None for i in range(4)] == [True, True, True, False]
    assert timed._slot(1) == pytest.approx(timed.start + 0.1)


# -- the demo manifest ---------------------------------------------------------------------------


def test_demo_manifest_runs_the_grpc_service_and_its_traffic() -> None:
    docs = {
        (d.data["kind"], d.data["metadata"]["name"]): d.data
        for d in load_text(manifest_text(), "demo.yaml")
    }
    service = docs[("Service", "ratings")]
    assert service["spec"]["ports"][0]["port"] == 50051
    for name, module in (
        ("ratings", "weft.demo.ratings"),
        ("ratings-traffic", "weft.demo.grpc_traffic"),
    ):
        (container,) = docs[("Deployment", name)]["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["python", "-m", module]
        assert importlib.util.find_spec(module) is not None
    env = docs[("Deployment", "ratings-traffic")]["spec"]["template"]["spec"]["containers"][0][
        "env"
    ]
    assert {"name": "TARGET", "value": "ratings:50051"} in env
