"""What an idle client connection costs the proxy (issue 12, item 8: at most 2 KB of RSS each).

The benchmark measures RSS with 10,000 connections (`bench/idle.py`); these tests hold the
proxy's own allocations per idle connection to a bound, with ``tracemalloc`` over a few hundred
real connections, counting only what was allocated from Weft's code (the transport uvloop
makes for a connection is allocated from the accept path, so it counts; the test's own clients
do not). Memory, not time: nothing here depends on the machine's speed.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import tracemalloc

from weft.proxy.accept.listen import TRIM_AFTER_CLOSES
from weft.testing import running_proxy, wait_until
from weft.testing.servers import Backend

CONNECTIONS = 1000
# The 2,000 bytes of RSS, less what the allocators add to these allocations (~250).
# An idle HTTP/1 keep-alive connection after one request held 4,397 bytes of them (a parser, a
# deque, the last head's lists, a closure, ...) and holds about 1,570 now, of which uvloop's
# transport for it is about 1,070; a silent one about 1,600.
BOUND = 1750


_PROXY_CODE = [tracemalloc.Filter(True, "*/weft/*"), tracemalloc.Filter(False, "*/weft/testing/*")]


def _weft_bytes(snapshot: tracemalloc.Snapshot) -> int:
    filtered = snapshot.filter_traces(_PROXY_CODE)
    return sum(stat.size for stat in filtered.statistics("filename"))


async def _open(address: tuple[str, int], request: bytes | None) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection(*address)
    if request is not None:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        assert head.startswith(b"HTTP/1.1 200"), head
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await asyncio.wait_for(reader.readexactly(length), 5.0)
    return writer


async def _per_connection(request: bytes | None) -> float:
    async with Backend() as backend, running_proxy(outbound_target=backend.address) as proxy:
        address = proxy.addresses["outbound"]
        # warm up: the pools, series and code paths exist before measuring (and the target has
        # spoken HTTP: the proxy no longer dials it early for a connection that is silent)
        for _ in range(3):
            (await _open(address, b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")).close()
        await asyncio.sleep(0.2)
        gc.collect()
        tracemalloc.start(1)
        try:
            before = _weft_bytes(tracemalloc.take_snapshot())
            writers = [await _open(address, request) for _ in range(CONNECTIONS)]
            await asyncio.sleep(0.3)  # the last answers' bookkeeping is done
            gc.collect()
            snapshot = tracemalloc.take_snapshot()
            after = _weft_bytes(snapshot)
            if os.environ.get("WEFT_TEST_MEMORY_TOP"):
                top = snapshot.filter_traces(_PROXY_CODE)
                for stat in top.statistics("lineno")[:15]:
                    print(stat)
        finally:
            tracemalloc.stop()
        for writer in writers:
            writer.close()
        return (after - before) / CONNECTIONS


async def test_an_idle_keep_alive_connection_after_a_request_keeps_little() -> None:
    per_conn = await _per_connection(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
    assert per_conn <= BOUND, f"{per_conn:.0f} bytes of the proxy's per idle connection"


async def test_a_connection_that_never_spoke_keeps_little() -> None:
    per_conn = await _per_connection(None)
    assert per_conn <= BOUND, f"{per_conn:.0f} bytes of the proxy's per silent connection"


async def test_tables_grown_by_a_burst_shrink_after_it() -> None:
    """After a burst of connections closes, the listener's tables are sized for what is left
    (sets and dicts never shrink on deletion; the trim after a burst copies them)."""
    async with Backend() as backend, running_proxy(outbound_target=backend.address) as proxy:
        listener = proxy.outbound
        address = proxy.addresses["outbound"]
        empty_set = sys.getsizeof(set())
        request = b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n"
        writers = [await _open(address, request) for _ in range(TRIM_AFTER_CLOSES + 200)]
        silent = [await _open(address, None) for _ in range(200)]
        await wait_until(lambda: len(listener.accepting) >= 200, within=5.0)
        grown = sys.getsizeof(listener.http.connections), sys.getsizeof(listener.accepting)
        assert min(grown) > 10 * empty_set  # the burst grew both
        for writer in writers + silent:
            writer.close()
        # the trim runs TRIM_DELAY after TRIM_AFTER_CLOSES closes
        await wait_until(
            lambda: (
                sys.getsizeof(listener.http.connections) == empty_set
                and sys.getsizeof(listener.accepting) == empty_set
            ),
            within=5.0,
        )
        assert sys.getsizeof(listener.deadlines.entries) <= sys.getsizeof({})
