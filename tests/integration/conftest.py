"""Fixtures that run a real proxy in-process on ephemeral loopback ports."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from weft.testing.proxy import running_proxy

__all__ = ["proxy_factory", "running_proxy"]  # test modules import running_proxy from here


@pytest.fixture
def proxy_factory() -> Callable[..., Any]:
    return running_proxy
