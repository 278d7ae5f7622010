"""Integration: proxies under load while the control plane is killed (SIGKILL) and restarted.

A real ``weft control`` process is killed at many moments (mid-stream, right after it starts,
while a burst of updates is being pushed, after a long outage), two proxies in this process
follow it through :class:`~weft.proxy.control_discovery.ControlDiscovery` and serve requests to
three loopback backends all along; then the Service's endpoints are replaced by two new backends
and every proxy must see the change within 5 s, before the old backends go away. No request may
fail at any moment: while the control plane is gone, the proxies serve their last state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from weft.control.client import ControlClient
from weft.control.follow import ControlStreams
from weft.metrics import ProxyMetrics
from weft.proxy.config import ProxyConfig
from weft.proxy.control_discovery import ControlDiscovery
from weft.proxy.server import ProxyServer, configure
from weft.testing.servers import Backend, HttpClient, Request, Response

TARGET = ("web.default.svc.cluster.local", 8080)
CONVERGE = 5.0  # the bound: every proxy sees an endpoint change within 5 s
LONG_OUTAGE = 15.0  # long enough that a backoff grown to tens of seconds would show


@pytest.fixture
def state_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="weft-chaos-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Plane:
    """A ``weft control`` child process that can be killed and started again."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.endpoint = f"unix:{state_dir}/control.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = open(os.path.join(state_dir, "control.log"), "ab")  # noqa: SIM115
        self.kills = 0

    def spawn(self) -> None:
        assert self.proc is None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "weft", "control", "--state-dir", self.state_dir,
             "--http-listen", "", "--scrape-interval", "1h", "--log-level", "warning"],
            stdout=self.log,
            stderr=self.log,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    async def up(self) -> None:
        client = ControlClient(self.endpoint, timeout=2.0)
        deadline = time.monotonic() + 30.0
        while not await client.healthz():
            assert self.proc is not None and self.proc.poll() is None, "control plane exited"
            assert time.monotonic() < deadline, "control plane did not start"
            await asyncio.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None
            self.kills += 1

    def close(self) -> None:
        self.kill()
        self.log.close()


@contextlib.asynccontextmanager
async def plane_process(state_dir: str) -> AsyncIterator[Plane]:
    plane = Plane(state_dir)
    plane.spawn()
    try:
        await plane.up()
        yield plane
    finally:
        plane.close()


def pod(name: str, ip: str, rev: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web", "rev": str(rev)}},
        "spec": {"containers": [{"name": "app", "command": ["sleep", "1000"]}]},
        "status": {"phase": "Running", "podIP": ip, "ready": True},
    }


def service(port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080, "targetPort": port}]},
    }


class Load:
    """Bounded keep-alive load through each proxy; every outcome recorded with its time."""

    def __init__(self, proxies: list[ProxyServer]) -> None:
        self.proxies = proxies
        self.outcomes: list[tuple[float, str]] = []
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for i in range(4):
            proxy = self.proxies[i % len(self.proxies)]
            self.tasks.append(loop.create_task(self._worker(proxy.addresses["outbound"])))

    async def _worker(self, address: tuple[str, int]) -> None:
        for _ in range(200):  # connections, 20 requests each at most: bounded
            if self.stop.is_set():
                return
            async with HttpClient(address) as client:
                for _ in range(20):
                    if self.stop.is_set():
                        return
                    try:
                        reply = await client.request("GET", "/", timeout=5.0)
                        outcome = str(reply.status)
                    except Exception as exc:
                        self.outcomes.append((time.monotonic(), type(exc).__name__))
                        break
                    self.outcomes.append((time.monotonic(), outcome))
                    await asyncio.sleep(0.02)

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), 30.0)

    def failures(self, since: float = 0.0) -> list[tuple[float, str]]:
        return [(t, o) for t, o in self.outcomes if t >= since and o != "200"]


def endpoint_ips(discovery: ControlDiscovery, target: tuple[str, int] = TARGET) -> set[str]:
    key = f"{target[0]}:{target[1]}"
    entry = discovery._entries.get(key)
    if entry is None or entry.resolution.current is None:
        return set()
    return {e.address[0] for e in entry.resolution.current.endpoints}


async def chaos(plane: Plane, client: ControlClient, rng: random.Random) -> None:
    """Kill and restart the control plane at many moments."""

    async def restart(down: float) -> None:
        await asyncio.sleep(down)
        plane.spawn()
        await plane.up()

    # mid-stream, several times
    for _ in range(3):
        await asyncio.sleep(rng.uniform(0.2, 1.0))
        plane.kill()
        await restart(rng.uniform(0.05, 1.0))
    # during connect: killed again right after it started, before or while proxies reconnect
    for _ in range(3):
        plane.kill()
        plane.spawn()
        await asyncio.sleep(rng.uniform(0.0, 0.6))
        plane.kill()
        await restart(rng.uniform(0.05, 0.5))
    # during a burst of updates: the pods' labels change (the endpoints stay the same)
    for burst in range(2):
        await asyncio.sleep(rng.uniform(0.5, 1.0))
        killer = asyncio.get_running_loop().call_later(rng.uniform(0.05, 0.4), plane.kill)
        with contextlib.suppress(Exception):
            for rev in range(1, 40):
                await client.apply(
                    [pod(f"web-{i}", f"127.0.0.{i + 1}", rev + 100 * burst) for i in (1, 2, 3)]
                )
        killer.cancel()
        plane.kill()
        await restart(rng.uniform(0.05, 1.0))
    # a long outage: the reported failure had the control plane down for about 30 s
    await asyncio.sleep(rng.uniform(0.2, 1.0))
    plane.kill()
    await restart(LONG_OUTAGE)


async def test_proxies_converge_after_control_plane_kills_and_no_request_fails(
    state_dir: str,
) -> None:
    rng = random.Random(int(os.environ.get("WEFT_CHAOS_SEED", "0")) or None)
    seed = rng.randrange(1 << 30)
    rng.seed(seed)

    def ok(_req: Request) -> Response:
        return Response(200, body=b"ok\n")

    first = await Backend(ok, host="127.0.0.2").start()
    port = first.port
    backends = {2: first}
    for i in (3, 4, 5, 6):
        backends[i] = await Backend(ok, host=f"127.0.0.{i}", port=port).start()
    async with plane_process(state_dir) as plane:
        client = ControlClient(plane.endpoint)
        await client.apply(
            [service(port), *(pod(f"web-{i}", f"127.0.0.{i + 1}") for i in (1, 2, 3))]
        )
        proxies: list[ProxyServer] = []
        discoveries: list[ControlDiscovery] = []
        try:
            for _ in range(2):
                streams = ControlStreams()
                disc = ControlDiscovery(plane.endpoint, streams=streams)
                proxy = ProxyServer(
                    ProxyConfig(
                        outbound=("127.0.0.1", 0),
                        inbound=None,
                        admin=("127.0.0.1", 0),
                        outbound_target=TARGET,
                        shutdown_grace=1.0,
                    ),
                    metrics=ProxyMetrics(process=False),
                    discovery=disc,
                    control_streams=streams,
                )
                configure(proxy)
                await proxy.start()
                proxies.append(proxy)
                discoveries.append(disc)
            load = Load(proxies)
            load.start()
            deadline = time.monotonic() + 10
            while not all(endpoint_ips(d) == {"127.0.0.2", "127.0.0.3", "127.0.0.4"}
                          for d in discoveries):  # fmt: skip
                assert time.monotonic() < deadline, "proxies never resolved the service"
                await asyncio.sleep(0.05)

            await chaos(plane, client, rng)

            # a rolling update: new pods in, old pods out; the old backends stay up until
            # every proxy has seen the change (as terminating pods do)
            changed = time.monotonic()
            await client.apply([pod("web-4", "127.0.0.5"), pod("web-5", "127.0.0.6")])
            await client.delete(
                [{"kind": "Pod", "metadata": {"name": f"web-{i}"}} for i in (1, 2, 3)]
            )
            want = {"127.0.0.5", "127.0.0.6"}
            while not all(endpoint_ips(d) == want for d in discoveries):
                took = time.monotonic() - changed
                assert took < CONVERGE, (
                    f"seed {seed}: not converged after {took:.1f}s: "
                    f"{[sorted(endpoint_ips(d)) for d in discoveries]}; "
                    f"streams {[d.streams.view() for d in discoveries]}"
                )
                await asyncio.sleep(0.02)
            for i in (2, 3, 4):
                await backends[i].stop()
            served_before = len(backends[5].requests) + len(backends[6].requests)
            await asyncio.sleep(2.0)
            await load.finish()
            assert len(backends[5].requests) + len(backends[6].requests) > served_before

            assert load.failures() == [], f"seed {seed}: failed requests"
            assert len(load.outcomes) > 500  # the load really ran throughout

            for proxy in proxies:
                view = await admin_json(proxy, "/control-streams")
                (dst,) = [s for s in view["streams"] if s["stream"] == "destination"]
                assert dst["connected"] is True
                assert dst["target"] == f"{TARGET[0]}:{TARGET[1]}"
                assert dst["reconnects"] >= 1  # at least after the long outage (one may span kills)
                assert dst["taskRestarts"] == 0
                samples = await admin_metrics(proxy)
                labels = (("stream", "destination"), ("target", dst["target"]))
                assert samples[("control_stream_connected", labels)] == 1
                assert samples[("control_stream_reconnects_total", labels)] == dst["reconnects"]
        finally:
            if "load" in locals():
                with contextlib.suppress(Exception):
                    await load.finish()
            for proxy in proxies:
                await proxy.shutdown(grace=0.2)
            for b in backends.values():
                await b.stop()


async def admin_get(proxy: ProxyServer, path: str) -> bytes:
    async with HttpClient(proxy.addresses["admin"]) as admin:
        reply = await admin.request("GET", path)
    assert reply.status == 200, reply
    return reply.body


async def admin_json(proxy: ProxyServer, path: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(await admin_get(proxy, path))
    return data


async def admin_metrics(proxy: ProxyServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = (await admin_get(proxy, "/metrics")).decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out
