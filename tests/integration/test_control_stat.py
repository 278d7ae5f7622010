"""Integration tests: metrics aggregation scraping fake proxies (real HTTP servers on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from weft.control.client import ControlClient
from weft.control.config import ControlConfig
from weft.control.server import ControlPlane
from weft.testing.clock import FakeClock

T0 = 1_700_000_000.0
INBOUND = 'direction="inbound"'
BOUNDS = [1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1000]


class FakeProxy:
    """A proxy's admin server: serves ``text`` at /metrics and records the paths asked for."""

    def __init__(self) -> None:
        self.text = ""
        self.paths: list[str] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            self.paths.append(head.split(b" ")[1].decode())
            body = self.text.encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(body), body)
            )
            await writer.drain()
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def set(self, ok: int, fail: int, latency_ms: float = 3.5, conns: int = 1) -> None:
        n = ok + fail
        lines = [
            "# TYPE request_total counter",
            f'request_total{{direction="inbound",authority="web:8080"}} {n}',
            "# TYPE response_total counter",
            f'response_total{{{INBOUND},status_code="200",classification="success"}} {ok}',
            f'response_total{{{INBOUND},status_code="503",classification="failure"}} {fail}',
            "# TYPE response_latency_ms histogram",
        ]
        for b in BOUNDS:
            count = n if latency_ms <= b else 0
            lines.append(f'response_latency_ms_bucket{{direction="inbound",le="{b}"}} {count}')
        lines += [
            f'response_latency_ms_bucket{{direction="inbound",le="+Inf"}} {n}',
            f'response_latency_ms_count{{direction="inbound"}} {n}',
            f'response_latency_ms_sum{{direction="inbound"}} {n * latency_ms}',
            "# TYPE tcp_open_connections gauge",
            f'tcp_open_connections{{direction="inbound",peer="src"}} {conns}',
        ]
        self.text = "\n".join(lines) + "\n"


@pytest.fixture
def state_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="weft-st-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def proxies() -> AsyncIterator[list[FakeProxy]]:
    ps = [FakeProxy(), FakeProxy()]
    for p in ps:
        await p.start()
    yield ps
    for p in ps:
        await p.stop()


def manifests(admin_ports: list[int]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                # the fake pods below stand in for its pods: no node would run its own
                "replicas": 0,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "app", "command": ["web"]}]},
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web-svc"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080}]},
        },
    ]
    for i, port in enumerate(admin_ports):
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"web-{i}",
                    "labels": {"app": "web"},
                    "annotations": {
                        "weft.io/deployment": "web",
                        "weft.io/proxy-admin": f"127.0.0.1:{port}",
                    },
                },
                "spec": {"containers": [{"name": "app", "command": ["web"]}]},
                "status": {"phase": "Running", "podIP": f"10.244.0.{i + 2}", "ready": True},
            }
        )
    return docs


async def test_stat_from_scraped_fake_proxies(state_dir: str, proxies: list[FakeProxy]) -> None:
    clock = FakeClock(T0)
    plane = ControlPlane(ControlConfig(state_dir=state_dir, scrape_interval=3600.0), clock=clock)
    await plane.start()
    client = ControlClient(plane.endpoint)
    try:
        a, b = proxies
        await client.apply(manifests([a.port, b.port]))
        clock.advance(100)
        a.set(0, 0)
        b.set(0, 0)
        assert await plane.scraper.scrape_once() == 2
        clock.advance(30)
        a.set(50, 10)  # 100 requests over both pods, 20 of them failed
        b.set(30, 10)
        assert await plane.scraper.scrape_once() == 2
        assert a.paths == b.paths == ["/metrics", "/metrics"]

        (row,) = await client.stat("deploy", "web", "default", 60)
        assert (row["requests"], row["successes"], row["success"]) == (100, 80, 0.8)
        assert row["rps"] == pytest.approx(100 / 60, abs=1e-6)
        assert row["meshed"] == "2/2"
        assert row["tcp_open_connections"] == 2
        assert row["latency_ms_p50"] == pytest.approx(3.5)  # all in (3, 4]: rank 50 of 100
        (svc_row,) = await client.stat("svc", "web-svc", "default", 60)
        assert svc_row["requests"] == 100
        pods = await client.stat("pod", None, "default", 60)
        assert [(r["name"], r["requests"]) for r in pods] == [("web-0", 60), ("web-1", 40)]

        # the CLI formats it as Linkerd does
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "weft", "stat", "deploy", "--control", plane.endpoint,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err
        header, line = out.decode().strip().splitlines()
        assert header.split() == [
            "NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99",
            "TCP_CONN",
        ]  # fmt: skip
        assert line.split() == ["web", "2/2", "80.00%", "1.7rps", "4ms", "4ms", "4ms", "2"]
    finally:
        await plane.stop()


async def test_scraper_tolerates_dead_proxies_and_never_leaves_allowed_networks(
    state_dir: str, proxies: list[FakeProxy]
) -> None:
    clock = FakeClock(T0)
    plane = ControlPlane(ControlConfig(state_dir=state_dir, scrape_interval=3600.0), clock=clock)
    await plane.start()
    client = ControlClient(plane.endpoint)
    try:
        a, b = proxies
        docs = manifests([a.port, b.port])
        # a pod claiming an admin address outside the pod range and loopback: never contacted
        docs[-1]["metadata"]["annotations"]["weft.io/proxy-admin"] = "192.0.2.10:4191"
        await client.apply(docs)
        assert [h for _, h, _ in plane.scraper.targets()] == ["127.0.0.1"]
        a.set(1, 0)
        await a.stop()  # its proxy is gone: the scrape fails, nothing breaks
        assert await plane.scraper.scrape_once() == 0
        assert "default/web-0" in plane.scraper.failures
        (row,) = await client.stat("deploy", "web", "default", 60)
        assert row["success"] is None and row["tcp_open_connections"] is None
        assert row["meshed"] == "2/2"
    finally:
        await plane.stop()
