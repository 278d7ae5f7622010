"""Integration test: ``weft edges`` from real proxies' metrics, scraped by a real control plane.

Real proxies on 127.0.0.1 (identity from a throwaway CA, :mod:`weft.testing.pki`) carry real
traffic: HTTP over mutual TLS (web -> api), opaque TCP over mutual TLS (worker -> db), and HTTP
from a proxy without an identity (legacy -> api, plaintext). The control plane scrapes the
client proxies' admin ``/metrics`` and answers ``GET /api/v1/edges`` and the CLI.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from weft.control.client import ApiError, ControlClient
from weft.control.config import ControlConfig
from weft.control.server import ControlPlane
from weft.proxy.server import ProxyServer
from weft.proxy.static_discovery import StaticDiscovery
from weft.testing.clock import FakeClock
from weft.testing.pki import Pki
from weft.testing.servers import Backend, HttpClient, Request, Response, raw_exchange

from .test_proxy_mtls import identity, proxy

T0 = 1_700_000_000.0
TARGET = ("127.0.0.1", 9)  # the service address every app dials


@pytest.fixture
def state_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="weft-edges-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def discovery(path: Path, server: ProxyServer, pod: str, ns: str, *, server_id: str,
              opaque: bool = False) -> StaticDiscovery:  # fmt: skip
    """Static discovery: TARGET is ``pod`` (deployment = its name without ``-0``) behind the
    inbound listener of ``server``, a meshed proxy proving ``server_id``."""
    host, port = server.addresses["inbound"]
    doc = {
        "destinations": [
            {
                "target": f"{TARGET[0]}:{TARGET[1]}",
                "labels": {"service": pod.removesuffix("-0"), "namespace": ns},
                "opaque": opaque,
                "endpoints": [
                    {
                        "address": f"{host}:{port}",
                        "labels": {
                            "pod": pod,
                            "namespace": ns,
                            "deployment": pod.removesuffix("-0"),
                        },
                        "meshed": True,
                        "identity": server_id,
                    }
                ],
            }
        ]
    }
    path.write_text(yaml.safe_dump(doc))
    return StaticDiscovery(str(path), interval=0.05)


def pod(name: str, sa: str, admin: ProxyServer, ip: int) -> dict[str, Any]:
    host, port = admin.addresses["admin"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "annotations": {
                "weft.io/deployment": name.removesuffix("-0"),
                "weft.io/proxy-admin": f"{host}:{port}",
            },
        },
        "spec": {"serviceAccountName": sa, "containers": [{"name": "app", "command": ["x"]}]},
        "status": {"phase": "Running", "podIP": f"10.244.0.{ip}", "ready": True},
    }


async def echo(req: Request) -> Response:
    return Response(body=b"answer to " + req.path.encode())


async def echo_tcp(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while data := await r.read(65536):
        w.write(data.upper())
        await w.drain()
    w.close()


@pytest.fixture
async def plane(state_dir: str) -> AsyncIterator[tuple[ControlPlane, FakeClock]]:
    clock = FakeClock(T0)
    cp = ControlPlane(ControlConfig(state_dir=state_dir, scrape_interval=3600.0), clock=clock)
    await cp.start()
    # the group as control/server.py serves it
    try:
        yield cp, clock
    finally:
        await cp.stop()


async def test_edges_of_real_proxies_http_and_opaque_tcp(
    plane: tuple[ControlPlane, FakeClock], tmp_path: Path
) -> None:
    cp, clock = plane
    pki = Pki.create(tmp_path / "pki")
    api_leaf, db_leaf = pki.leaf("prod", "api"), pki.leaf("data", "db")
    web_leaf, worker_leaf = pki.leaf("shop", "web"), pki.leaf("shop", "worker")
    tcp_backend = await asyncio.start_server(echo_tcp, "127.0.0.1", 0)
    tcp_address = tcp_backend.sockets[0].getsockname()[:2]
    client = ControlClient(cp.endpoint)
    try:
        async with (
            Backend(echo) as http_backend,
            proxy(identity(api_leaf), inbound_target=http_backend.address) as api,
            proxy(identity(db_leaf), inbound_target=tcp_address) as db,
            proxy(
                identity(web_leaf),
                outbound_target=TARGET,
                discovery=discovery(
                    tmp_path / "w.yaml", api, "api-0", "prod", server_id=api_leaf.name
                ),
            ) as web,
            proxy(
                identity(worker_leaf),
                outbound_target=TARGET,
                discovery=discovery(
                    tmp_path / "k.yaml", db, "db-0", "data", server_id=db_leaf.name, opaque=True
                ),
            ) as worker,
            proxy(
                None,
                outbound_target=TARGET,
                discovery=discovery(
                    tmp_path / "l.yaml", api, "api-0", "prod", server_id=api_leaf.name
                ),
            ) as legacy,
        ):
            await client.apply(
                [
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
                    pod("web-0", "web", web, 2),
                    pod("worker-0", "worker", worker, 3),
                    pod("legacy-0", "default", legacy, 4),
                ]
            )
            clock.advance(100)
            assert await cp.scraper.scrape_once() == 3  # the baseline: no traffic yet

            async with HttpClient(web.addresses["outbound"]) as app:
                for i in range(5):
                    assert (await app.request("GET", f"/x{i}")).status == 200
            async with HttpClient(legacy.addresses["outbound"]) as app:
                assert (await app.request("GET", "/old")).status == 200
            for _ in range(2):
                got = await raw_exchange(
                    worker.addresses["outbound"], b"\x00opaque", shutdown=True, timeout=5.0
                )
                assert got == b"\x00OPAQUE"

            clock.advance(10)
            assert await cp.scraper.scrape_once() == 3
            data = await client.call("GET", "/api/v1/edges?kind=deploy&namespace=shop&window=60")
            rows = {(r["src"], r["dst"]): r for r in data["rows"]}
            assert sorted(rows) == [("legacy", "api"), ("web", "api"), ("worker", "db")]

            web_api = rows["web", "api"]
            assert (web_api["secured"], web_api["requests"]) == (True, 5)
            assert (web_api["src_namespace"], web_api["dst_namespace"]) == ("shop", "prod")
            assert web_api["client_id"] == web_leaf.name  # what its certificate names
            assert web_api["server_id"] == api_leaf.name

            worker_db = rows["worker", "db"]
            assert (worker_db["secured"], worker_db["requests"]) == (True, 0)
            assert worker_db["connections"] == 2
            assert (worker_db["client_id"], worker_db["server_id"]) == (
                worker_leaf.name,
                db_leaf.name,
            )

            legacy_api = rows["legacy", "api"]
            assert (legacy_api["secured"], legacy_api["requests"]) == (False, 1)
            assert legacy_api["client_id"] is None
            assert legacy_api["reasons"] == ["disabled (the source proxy has no identity)"]

            pods = await client.call("GET", "/api/v1/edges?kind=pod&window=60")
            assert {(r["src"], r["dst"]) for r in pods["rows"]} == {
                ("legacy-0", "api-0"), ("web-0", "api-0"), ("worker-0", "db-0"),
            }  # fmt: skip
            with pytest.raises(ApiError) as err:
                await client.call("GET", "/api/v1/edges?kind=svc")
            assert err.value.status == 400

            # the CLI, as linkerd viz edges
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "weft", "edges", "deploy", "-n", "shop", "-o", "wide",
                "--control", cp.endpoint,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err_text = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, err_text
            header, *lines = out.decode().strip().splitlines()
            assert header.split() == ["SRC", "DST", "SRC_NS", "DST_NS", "SECURED", "CLIENT_ID",
                                      "SERVER_ID", "MSG"]  # fmt: skip
            assert [line.split()[:7] for line in lines] == [
                ["legacy", "api", "shop", "prod", "✗", "-", "-"],
                ["web", "api", "shop", "prod", "√", web_leaf.name, api_leaf.name],
                ["worker", "db", "shop", "data", "√", worker_leaf.name, db_leaf.name],
            ]
            assert lines[0].split(None, 7)[7] == "disabled (the source proxy has no identity)"
    finally:
        tcp_backend.close()
        await tcp_backend.wait_closed()
