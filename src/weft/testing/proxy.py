"""Running a real proxy inside a test, and waiting for what happens elsewhere.

:func:`running_proxy` starts a :class:`~weft.proxy.server.ProxyServer` in this process on
ephemeral loopback ports (outbound, inbound, admin) and shuts it down on exit; pair it with
:class:`~weft.testing.discovery.FakeDiscovery` and the servers of :mod:`weft.testing.servers`.
:func:`wait_until` polls a condition that another component makes true (a pool drains, a
supervisor restarts a process), bounded, instead of a fixed sleep.

Not for: running a sidecar for real (``weft proxy`` does that, with its signal handling and
process metrics), nor waiting on something the test can await directly (an event, a task).
The proxy is imported when a proxy is run, so importing this module stays cheap.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from weft.discovery import Discovery
    from weft.proxy.server import ProxyServer


class WaitTimeout(AssertionError):
    """A condition did not hold in time (an AssertionError: a test that times out fails)."""


@asynccontextmanager
async def running_proxy(
    discovery: Discovery | None = None, **overrides: Any
) -> AsyncIterator[ProxyServer]:
    """A proxy on 127.0.0.1 with ephemeral ports; shut down (fast) on exit.

    ``overrides`` are :class:`~weft.proxy.config.ProxyConfig` fields (``outbound_target=...``,
    ``fail_fast_outbound=...``); ``proxy.addresses["outbound"]`` is where to connect. The proxy
    closes ``discovery`` when it shuts down.
    """
    from weft.metrics import ProxyMetrics
    from weft.proxy.config import ProxyConfig
    from weft.proxy.server import ProxyServer

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


async def wait_until(
    predicate: Callable[[], object],
    within: float = 5.0,
    *,
    what: str | None = None,
    check: bool = True,
    interval: float = 0.02,
) -> bool:
    """Poll ``predicate`` every ``interval`` seconds until it is true or ``within`` seconds pass.

    True as soon as it holds. On time out: raise :class:`WaitTimeout` naming ``what`` (or the
    predicate), or with ``check=False`` return False, for "this must not happen within"
    (``assert not await wait_until(..., 0.3, check=False)``). ``within`` is a bound, not a
    duration: keep it generous, a loaded machine is slow.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() >= deadline:
            if predicate():
                return True
            if not check:
                return False
            raise WaitTimeout(f"not within {within}s: {what or _describe(predicate)}")
        await asyncio.sleep(interval)
    return True


def _describe(predicate: Callable[[], object]) -> str:
    code = getattr(predicate, "__code__", None)
    name = getattr(predicate, "__qualname__", repr(predicate))
    if code is None:
        return name
    return f"{name} ({code.co_filename}:{code.co_firstlineno})"
