"""Fixtures that run a real proxy in-process on ephemeral loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from weft.discovery import Discovery
from weft.metrics import ProxyMetrics
from weft.proxy.config import ProxyConfig
from weft.proxy.server import ProxyServer


@asynccontextmanager
async def running_proxy(
    discovery: Discovery | None = None, **overrides: Any
) -> AsyncIterator[ProxyServer]:
    """A proxy on 127.0.0.1 with ephemeral ports; shut down (fast) on exit."""
    fields: dict[str, Any] = {
        "outbound": ("127.0.0.1", 0),
        "inbound": ("127.0.0.1", 0),
        "admin": ("127.0.0.1", 0),
        "shutdown_grace": 2.0,
    }
    fields.update(overrides)
    proxy = ProxyServer(
        ProxyConfig(**fields), metrics=ProxyMetrics(process=False), discovery=discovery
    )
    await proxy.start()
    try:
        yield proxy
    finally:
        if not proxy.draining:
            await proxy.shutdown(grace=0.5)


@pytest.fixture
def proxy_factory() -> Callable[..., Any]:
    return running_proxy
