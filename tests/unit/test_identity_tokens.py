"""Unit tests: per-pod tokens (issue, verify, every way a token can be bad) and the race-safe key
file."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weft.identity.tokens import (
    KEY_BYTES,
    MAX_TOKEN_BYTES,
    InvalidToken,
    TokenClaims,
    TokenKey,
)

CLAIMS = TokenClaims("shop", "web-1", "0b7c6d1e-uid", "web", 1_800_000_000.0)
CLAIMS_JSON = {
    "namespace": "shop",
    "pod": "web-1",
    "uid": "u",
    "serviceAccount": "web",
    "issuedAt": 1.0,
}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def resign(key: TokenKey, claims_json: bytes) -> str:
    """A correctly signed token around arbitrary claim bytes (to test the field checks)."""
    signed = f"v1.{b64(claims_json)}"
    mac = hmac.new(key._key, signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{b64(mac)}"


def test_issue_and_verify() -> None:
    key = TokenKey.generate()
    token = key.issue(CLAIMS)
    assert token.startswith("v1.") and token.count(".") == 2
    assert key.verify(token) == CLAIMS
    assert key.verify(token + "\n") == CLAIMS  # read from a file
    assert "web-1" not in repr(key) and repr(key) == "<TokenKey>"


def test_wrong_key_is_refused() -> None:
    token = TokenKey.generate().issue(CLAIMS)
    with pytest.raises(InvalidToken, match="signature does not match"):
        TokenKey.generate().verify(token)


@given(data=st.data())
def test_any_tampering_is_refused(data: st.DataObject) -> None:
    key = TokenKey(b"k" * KEY_BYTES)
    token = key.issue(CLAIMS)
    i = data.draw(st.integers(0, len(token) - 1))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
    c = data.draw(st.sampled_from(alphabet).filter(lambda ch: ch != token[i]))
    tampered = token[:i] + c + token[i + 1 :]
    try:
        claims = key.verify(tampered)
    except InvalidToken:
        return
    # base64 without padding has a few spare bits: a change there decodes to the same bytes
    assert claims == CLAIMS
    assert base64.urlsafe_b64decode(_pad(tampered.split(".")[2])) == base64.urlsafe_b64decode(
        _pad(token.split(".")[2])
    )


def _pad(s: str) -> str:
    return s + "=" * (-len(s) % 4)


def test_altered_claims_are_refused() -> None:
    key = TokenKey.generate()
    token = key.issue(CLAIMS)
    version, body, mac = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(_pad(body)))
    claims["serviceAccount"] = "admin"
    forged = f"{version}.{b64(json.dumps(claims).encode())}.{mac}"
    with pytest.raises(InvalidToken, match="signature does not match"):
        key.verify(forged)


@given(cut=st.integers(1, 200))
def test_truncated_tokens_are_refused(cut: int) -> None:
    key = TokenKey(b"t" * KEY_BYTES)
    token = key.issue(CLAIMS)
    with pytest.raises(InvalidToken):
        key.verify(token[: max(0, len(token) - cut)])


@pytest.mark.parametrize(
    ("token", "match"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("v1.abc", "expected v1.<claims>.<signature>"),
        ("v2.abc.def", "expected v1.<claims>.<signature>"),
        ("v1.a.b.c", "expected v1.<claims>.<signature>"),
        ("v1.abc.!!!", "not base64url"),
        ("v1.abc.", "not base64url"),
        ("v1.é.abc", "non-ASCII"),
        ("x" * (MAX_TOKEN_BYTES + 1), "longer than"),
        ("v1." + "A" * 10_000_000 + ".AAAA", "longer than"),
    ],
)
def test_malformed_tokens(token: str, match: str) -> None:
    with pytest.raises(InvalidToken, match=match):
        TokenKey.generate().verify(token)


def test_non_string_token() -> None:
    with pytest.raises(InvalidToken, match="must be a string"):
        TokenKey.generate().verify(b"v1.a.b")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("claims", "match"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"namespace": "a"}', "missing fields"),
        (json.dumps({**CLAIMS_JSON, "admin": True}).encode(), r"unknown fields \['admin'\]"),
        (json.dumps({**CLAIMS_JSON, "pod": ""}).encode(), "pod must be a string"),
        (json.dumps({**CLAIMS_JSON, "uid": 7}).encode(), "uid must be a string"),
        (json.dumps({**CLAIMS_JSON, "namespace": "x" * 300}).encode(), "namespace must be"),
        (json.dumps({**CLAIMS_JSON, "issuedAt": "now"}).encode(), "issuedAt must be a number"),
        (json.dumps({**CLAIMS_JSON, "issuedAt": True}).encode(), "issuedAt must be a number"),
        (json.dumps({**CLAIMS_JSON, "issuedAt": -1}).encode(), "issuedAt must be a finite"),
        (b'{"namespace":"a","pod":"b","uid":"c","serviceAccount":"d","issuedAt":Infinity}',
         "issuedAt must be a finite"),
    ],
)  # fmt: skip
def test_signed_but_invalid_claims(claims: bytes, match: str) -> None:
    key = TokenKey.generate()
    with pytest.raises(InvalidToken, match=match):
        key.verify(resign(key, claims))


def test_issuing_oversized_claims_fails() -> None:
    with pytest.raises(ValueError, match="token over"):
        TokenKey.generate().issue(TokenClaims("a", "b", "u" * 5000, "d", 0.0))


def test_key_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        TokenKey(b"short")


# -- the key file ----------------------------------------------------------------------------


def test_load_or_create(tmp_path: Path) -> None:
    path = tmp_path / "state" / "identity" / "token.key"
    old_umask = os.umask(0)
    try:
        key = TokenKey.load_or_create(path)
    finally:
        os.umask(old_umask)
    assert len(path.read_bytes()) == KEY_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    token = key.issue(CLAIMS)
    assert TokenKey.load_or_create(path).verify(token) == CLAIMS
    assert [p.name for p in path.parent.iterdir()] == ["token.key"]


def test_corrupt_key_file(tmp_path: Path) -> None:
    path = tmp_path / "token.key"
    path.write_bytes(b"too short")
    with pytest.raises(ValueError, match="holds 9 bytes"):
        TokenKey.load_or_create(path)


def _race(path: str, start: multiprocessing.synchronize.Event, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    start.wait(10)
    key = TokenKey.load_or_create(Path(path))
    out.put(key.issue(CLAIMS))


def test_processes_racing_to_create_the_key_share_one(tmp_path: Path) -> None:
    path = tmp_path / "identity" / "token.key"
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    out = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(path), start, out)) for _ in range(8)]
    for p in procs:
        p.start()
    try:
        start.set()
        tokens = [out.get(timeout=20) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
    assert len(set(tokens)) == 1  # every process signed with the same key
    assert TokenKey.load_or_create(path).verify(tokens[0]) == CLAIMS
    assert [p.name for p in path.parent.iterdir()] == ["token.key"]
