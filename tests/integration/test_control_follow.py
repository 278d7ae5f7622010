"""The one control-stream loop (weft.control.follow): it never ends silently.

Streams here are scripted async generators (the transport is tested with a real control plane in
test_control_discovery.py and test_control_chaos.py); the last test uses a real control plane to
show that a listener's bug no longer ends a proxy's destination stream.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from weft.control.client import ApiError, ControlClient, ControlUnavailable
from weft.control.config import ControlConfig
from weft.control.follow import ControlStreams, Follower, default_backoff
from weft.control.server import ControlPlane
from weft.core.backoff import ExponentialBackoff
from weft.discovery import Destination
from weft.proxy.control_discovery import ControlDiscovery
from weft.testing import wait_until

FAST = ExponentialBackoff(base=0.01, maximum=0.05, jitter=0.1)


class Script:
    """Each open() plays the next scripted stream: values, then how it ends."""

    def __init__(self, *streams: tuple[list[Any], BaseException | None]) -> None:
        self.streams = list(streams)
        self.opened = 0

    def open(self) -> AsyncIterator[Any]:
        self.opened += 1
        values, end = self.streams.pop(0) if self.streams else ([], ControlUnavailable("gone"))
        return self._play(values, end)

    async def _play(self, values: list[Any], end: BaseException | None) -> AsyncIterator[Any]:
        for value in values:
            yield value
            await asyncio.sleep(0)
        if end is not None:
            raise end
        await asyncio.sleep(3600)  # an open stream with nothing more to say


class Died(BaseException):
    """Escapes ``except Exception``: what a task that dies of a bug looks like."""


def test_default_backoff_finds_a_restarted_control_plane_within_seconds() -> None:
    backoff = default_backoff()
    assert max(backoff.delay(n) for n in range(100)) <= 3.0
    assert backoff.delay(0) <= 0.15


async def test_a_failing_handler_skips_the_value_and_the_stream_goes_on() -> None:
    seen: list[int] = []

    def on_item(item: int) -> bool:
        if item == 2:
            raise RuntimeError("a bug in the owner")
        seen.append(item)
        return True

    script = Script(([1, 2, 3], None))
    follower = Follower("destination", "web:80", script.open, on_item, backoff=FAST)
    follower.start()
    try:
        await wait_until(lambda: seen == [1, 3], 5.0)
        assert follower.connected
        assert follower.state.updates == 2
        assert script.opened == 1
    finally:
        await follower.close()


async def test_any_error_reconnects_and_the_owner_hears_it() -> None:
    seen: list[int] = []
    lost: list[tuple[str, bool]] = []
    refused: list[int] = []
    script = Script(
        ([1], ControlUnavailable("control plane closed the stream")),
        ([], ApiError(503, "starting")),
        ([2], ValueError("a surprise from the transport")),
        ([], OSError("socket gone")),
        ([3], None),
    )
    follower = Follower(
        "inbound_policy",
        "ns/pod",
        script.open,
        lambda item: seen.append(item) is None,
        backoff=FAST,
        on_lost=lambda reason, was: lost.append((reason, was)),
        on_refused=lambda exc: refused.append(exc.status),
    )
    follower.start()
    try:
        await wait_until(lambda: seen == [1, 2, 3] and follower.connected, 5.0)
        assert script.opened == 5
        assert refused == [503]
        assert [was for _, was in lost] == [True, False, True, False]
        assert lost[1][0] == "control plane refused the request: starting"
        assert "ValueError" in lost[2][0]
        assert follower.state.reconnects == 2  # streams 3 and 5 delivered after a first one
        assert follower.state.last_error is None
    finally:
        await follower.close()


async def test_a_task_that_dies_is_logged_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[int] = []
    script = Script(([1], Died()), ([2], None))
    follower = Follower(
        "identity_trust", "web.default", script.open, lambda i: seen.append(i) is None, backoff=FAST
    )
    follower.start()
    try:
        await wait_until(lambda: seen == [1, 2], 5.0)
        assert follower.state.restarts == 1
        assert follower.connected
        assert any("its task died; restarting it" in r.message for r in caplog.records)
    finally:
        await follower.close()
    assert script.opened == 2


async def test_a_cancelled_task_is_restarted_but_close_ends_it_for_good() -> None:
    script = Script(([1], None), ([2], None))
    follower = Follower("destination", "web:80", script.open, lambda _i: True, backoff=FAST)
    follower.start()
    await wait_until(lambda: follower.connected, 5.0)
    task = follower._task
    assert task is not None
    task.cancel()
    await wait_until(lambda: follower.state.restarts == 1 and follower.connected, 5.0)
    await follower.close()
    await asyncio.sleep(0.1)
    assert script.opened == 2
    assert follower._task is None


async def test_registry_shows_every_stream_as_json_and_metrics() -> None:
    registry = ControlStreams()
    a = Follower(
        "destination", 'web:80"x', Script(([{"d": 1}], None)).open, lambda _i: True,
        registry=registry, backoff=FAST,
    )  # fmt: skip
    b = Follower(
        "inbound_policy", "ns/pod", Script().open, lambda _i: True, registry=registry,
        backoff=FAST,
    )  # fmt: skip
    a.start()
    b.start()
    try:
        await wait_until(lambda: a.connected and b.state.last_error is not None, 5.0)
        view = registry.view()
        assert view["connected"] == 1
        assert [(s["stream"], s["connected"]) for s in view["streams"]] == [
            ("destination", True),
            ("inbound_policy", False),
        ]
        assert view["streams"][1]["lastError"] == "gone"
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(registry.render())
            for s in family.samples
        }
        dst = (("stream", "destination"), ("target", 'web:80"x'))
        pol = (("stream", "inbound_policy"), ("target", "ns/pod"))
        assert samples[("control_stream_connected", dst)] == 1
        assert samples[("control_stream_connected", pol)] == 0
        assert samples[("control_stream_updates_total", dst)] == 1
        assert ("control_stream_last_update_timestamp_seconds", dst) in samples
        assert ("control_stream_last_update_timestamp_seconds", pol) not in samples
    finally:
        await a.close()
        await b.close()
    assert len(registry) == 0
    assert registry.render() == ""


@pytest.fixture
def state_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="weft-follow-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def pod(name: str, ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "command": ["sleep", "1000"]}]},
        "status": {"phase": "Running", "podIP": ip, "ready": True},
    }


async def test_a_listener_that_raises_does_not_end_the_destination_stream(state_dir: str) -> None:
    """Before: the listener's exception escaped the stream's task, which died silently; the
    proxy then kept its last endpoints for ever (it dialled deleted pods until restarted)."""
    plane = ControlPlane(ControlConfig(state_dir=state_dir, scrape_interval=3600.0))
    await plane.start()
    client = ControlClient(plane.endpoint)
    discovery = ControlDiscovery(plane.endpoint, backoff=FAST)
    try:
        await client.apply(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": "web"},
                    "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
                },
                pod("web-1", "10.244.0.2"),
            ]
        )
        res = await discovery.resolve("web.default.svc.cluster.local:80")
        calls: list[Destination | None] = []

        def broken(dest: Destination | None) -> None:
            calls.append(dest)
            if len(calls) == 1:
                raise RuntimeError("a bug in a listener")

        seen: list[Destination | None] = []
        res.subscribe(broken)
        res.subscribe(seen.append)  # subscribed after the broken one: still told
        await client.apply([pod("web-2", "10.244.0.3")])
        await wait_until(lambda: len(seen) == 1, 5.0)
        await client.delete([{"kind": "Pod", "metadata": {"name": "web-1"}}])
        await wait_until(lambda: len(seen) == 2 and len(calls) == 2, 5.0)
        last = seen[-1]
        assert last is not None and [e.address[0] for e in last.endpoints] == ["10.244.0.3"]
        assert "connected=1" in repr(discovery)
    finally:
        await discovery.close()
        await plane.stop()
