"""Integration tests: the proxy's ControlDiscovery and a real control plane that comes and goes."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from weft.control.client import ControlClient
from weft.control.config import ControlConfig
from weft.control.server import ControlPlane
from weft.core.backoff import ExponentialBackoff
from weft.discovery import Destination
from weft.proxy.control_discovery import ControlDiscovery
from weft.testing import wait_until
from weft.testing.clock import FakeClock

WAIT = 5.0


@pytest.fixture
def state_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="weft-cd-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def config(state_dir: str) -> ControlConfig:
    return ControlConfig(state_dir=state_dir, scrape_interval=3600.0)


def fast_backoff() -> ExponentialBackoff:
    return ExponentialBackoff(base=0.02, maximum=0.2, jitter=0.1)


def svc() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080, "targetPort": 9000}]},
    }


def pod(name: str, ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "command": ["sleep", "1000"]}]},
        "status": {"phase": "Running", "podIP": ip, "ready": True},
    }


def ips(dest: Destination | None) -> list[str]:
    return [] if dest is None else sorted(e.address[0] for e in dest.endpoints)


async def test_resolve_then_follow_changes(state_dir: str) -> None:
    plane = ControlPlane(config(state_dir))
    await plane.start()
    client = ControlClient(plane.endpoint)
    discovery = ControlDiscovery(plane.endpoint, backoff=fast_backoff())
    try:
        await client.apply([svc(), pod("web-1", "10.244.0.2")])
        res = await discovery.resolve("web.default.svc.cluster.local:8080")
        assert ips(res.current) == ["10.244.0.2"]  # the first answer was waited for
        seen: list[list[str]] = []
        res.subscribe(lambda d: seen.append(ips(d)))
        await client.apply([pod("web-2", "10.244.0.3")])
        await wait_until(lambda: seen[-1:] == [["10.244.0.2", "10.244.0.3"]], WAIT)
        unknown = await discovery.resolve("api:80")
        assert unknown.current is None
        assert (await discovery.resolve("web.default.svc.cluster.local:8080")) is res
        assert "targets=2" in repr(discovery)
    finally:
        await discovery.close()
        await plane.stop()


async def test_keeps_last_snapshot_without_control_plane_and_catches_up_after_restart(
    state_dir: str,
) -> None:
    plane = ControlPlane(config(state_dir))
    await plane.start()
    client = ControlClient(plane.endpoint)
    await client.apply([svc(), pod("web-1", "10.244.0.2")])
    ip = (await client.get("Service", "default", "web"))["spec"]["clusterIP"]  # type: ignore[index]
    discovery = ControlDiscovery(plane.endpoint, backoff=fast_backoff())
    try:
        res = await discovery.resolve(f"{ip}:8080")
        assert ips(res.current) == ["10.244.0.2"]
        changes: list[Destination | None] = []
        res.subscribe(changes.append)

        await plane.stop()
        await wait_until(lambda: "connected=0" in repr(discovery), WAIT)
        assert ips(res.current) == ["10.244.0.2"]  # still serving with what it knew
        assert changes == []

        # a new control plane on the same state: the same service IP, and new pods flow in
        plane = ControlPlane(config(state_dir))
        await plane.start()
        await client.apply([pod("web-2", "10.244.0.3")])
        await wait_until(lambda: ips(res.current) == ["10.244.0.2", "10.244.0.3"], WAIT)
        assert all(d is not None for d in changes)  # never emptied on the way
        await client.delete([{"kind": "Pod", "metadata": {"name": "web-1"}}])
        await wait_until(lambda: ips(res.current) == ["10.244.0.3"], WAIT)
    finally:
        await discovery.close()
        await plane.stop()


async def test_control_plane_down_from_the_start(state_dir: str) -> None:
    discovery = ControlDiscovery(
        f"unix:{state_dir}/control.sock", backoff=fast_backoff(), first_answer_timeout=0.2
    )
    try:
        res = await discovery.resolve("web:8080")
        assert res.current is None  # unknown: the proxy forwards to the original address
        # once it comes up, the resolution fills in
        plane = ControlPlane(config(state_dir))
        await plane.start()
        try:
            await ControlClient(plane.endpoint).apply([svc(), pod("web-1", "10.244.0.2")])
            await wait_until(lambda: ips(res.current) == ["10.244.0.2"], WAIT)
        finally:
            await plane.stop()
    finally:
        await discovery.close()


async def test_idle_resolutions_are_evicted(state_dir: str) -> None:
    plane = ControlPlane(config(state_dir))
    await plane.start()
    clock = FakeClock(0.0)
    discovery = ControlDiscovery(plane.endpoint, clock=clock, backoff=fast_backoff())
    try:
        used = await discovery.resolve("web:8080")
        await discovery.resolve("api:80")
        unsubscribe = used.subscribe(lambda d: None)
        clock.advance(299)
        assert discovery.evict_idle() == []
        clock.advance(2)
        assert discovery.evict_idle() == ["api:80"]  # web:8080 still has a subscriber
        unsubscribe()
        unsubscribe()  # idempotent: the count does not go negative
        assert discovery.evict_idle() == ["web:8080"]
        assert "targets=0" in repr(discovery)
        fresh = await discovery.resolve("web:8080")
        assert fresh is not used
    finally:
        await discovery.close()
        await plane.stop()


async def test_invalid_target_and_closed_discovery(state_dir: str) -> None:
    discovery = ControlDiscovery(f"unix:{state_dir}/control.sock")
    res = await discovery.resolve("not an address")
    assert res.current is None
    await discovery.close()
    with pytest.raises(RuntimeError, match="closed"):
        await discovery.resolve("web:8080")
    with pytest.raises(ValueError, match="idle_timeout"):
        ControlDiscovery("unix:/x", idle_timeout=0)
