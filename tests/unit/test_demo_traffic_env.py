"""The demo traffic generators read their settings from the environment: a value that is not a
number ends them with a message naming the variable, not a traceback."""

from __future__ import annotations

import pytest

from weft.demo.traffic import env_float


def test_env_float_reads_the_variable_or_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEFT_TEST_RATE", raising=False)
    assert env_float("WEFT_TEST_RATE", 5.0) == 5.0
    monkeypatch.setenv("WEFT_TEST_RATE", "2.5")
    assert env_float("WEFT_TEST_RATE", 5.0) == 2.5


def test_env_float_names_a_bad_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEFT_TEST_RATE", "fast")
    with pytest.raises(SystemExit, match="grpc_traffic: WEFT_TEST_RATE must be a number"):
        env_float("WEFT_TEST_RATE", 5.0, "grpc_traffic")
