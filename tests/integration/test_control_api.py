"""Integration tests: the real control plane on a unix socket, driven by the real client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from weft.control.client import ApiError, ControlClient, ControlUnavailable, ControlUnreachable
from weft.control.config import ControlConfig
from weft.control.server import ControlPlane
from weft.discovery import Destination

WAIT = 5.0  # generous bound for "arrives"; never asserted as a latency


@pytest.fixture
def state_dir() -> Iterator[str]:
    # unix socket paths are limited to 107 bytes: keep it short
    path = tempfile.mkdtemp(prefix="weft-ctl-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def config(state_dir: str, **kw: Any) -> ControlConfig:
    return ControlConfig(state_dir=state_dir, scrape_interval=3600.0, **kw)


@pytest.fixture
async def plane(state_dir: str) -> AsyncIterator[ControlPlane]:
    p = ControlPlane(config(state_dir, heartbeat=0.2))
    await p.start()
    yield p
    await p.stop(grace=1.0)


@pytest.fixture
def client(plane: ControlPlane) -> ControlClient:
    return ControlClient(plane.endpoint)


def ns(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def svc(name: str = "web", namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"app": name}, "ports": [{"port": 8080, "targetPort": 9000}]},
    }


def deploy(name: str = "web", replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "command": ["sleep", "1000"]}]},
            },
        },
    }


def pod(name: str, ip: str, app: str = "web") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"app": app},
            "annotations": {"weft.io/deployment": app, "weft.io/proxy-admin": f"{ip}:4191"},
        },
        "spec": {"containers": [{"name": "app", "command": ["sleep", "1000"]}]},
    }


RUNNING = {"phase": "Running", "podIP": "10.244.0.2", "ready": True}


async def next_item(it: AsyncIterator[Any]) -> Any:
    return await asyncio.wait_for(anext(it), WAIT)


async def test_healthz_apply_get_list_delete(client: ControlClient) -> None:
    assert await client.healthz()
    results = await client.apply_actions([ns("shop"), svc("web", "shop"), deploy()], "app.yaml")
    assert [a for a, _ in results] == ["created"] * 3
    assert (await client.apply_actions([deploy()]))[0][0] == "unchanged"
    (d,) = await client.apply([deploy(replicas=3)])
    assert d["spec"]["replicas"] == 3 and d["metadata"]["generation"] == 2
    got = await client.get("Service", "shop", "web")
    assert got is not None and got["spec"]["clusterIP"] == "10.96.0.2"
    assert await client.get("Service", "shop", "nope") is None
    assert await client.get("Namespace", None, "shop") is not None
    assert [s["metadata"]["name"] for s in await client.list("svc")] == ["web"]
    assert await client.list("Service", "default") == []
    assert [n["metadata"]["name"] for n in await client.list("ns")] == ["default", "shop"]
    deleted = await client.delete_actions([deploy(), {"kind": "Pod", "metadata": {"name": "x"}}])
    assert [a for a, _ in deleted] == ["deleted", "not found"]
    await client.delete([svc("web", "shop")])
    assert await client.list("Deployment") == []


async def test_invalid_apply_is_422_with_field_details_and_applies_nothing(
    client: ControlClient,
) -> None:
    bad = svc()
    bad["spec"]["ports"][0]["port"] = 70000
    with pytest.raises(ApiError) as info:
        await client.apply([deploy(), bad, svc("api", "missing")], "app.yaml")
    err = info.value
    assert err.status == 422
    assert "nothing was applied" in err.message
    assert {(d["document"], d["path"]) for d in err.details} == {
        (1, "spec.ports[0].port"),
        (2, "metadata.namespace"),
    }
    assert all(d["source"] == "app.yaml" for d in err.details)
    assert await client.list("Deployment") == []


async def test_put_status(client: ControlClient) -> None:
    await client.apply([pod("web-1", "10.244.0.2")])
    obj = await client.put_status("Pod", "default", "web-1", RUNNING)
    assert obj["status"]["podIP"] == "10.244.0.2"
    assert obj["status"]["conditions"] == [{"type": "Ready", "status": "True"}]
    with pytest.raises(ApiError) as info:
        await client.put_status("Pod", "default", "nope", RUNNING)
    assert info.value.status == 404
    with pytest.raises(ApiError) as info:
        await client.put_status("Pod", "default", "web-1", {"phase": "Napping"})
    assert info.value.status == 422
    assert info.value.details[0]["path"] == "status.phase"


async def test_watch_streams_state_then_changes_in_order(client: ControlClient) -> None:
    await client.apply([svc()])
    events = client.watch(["Pod", "Service"])
    first = await next_item(events)
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "web")
    bookmark = await next_item(events)
    assert bookmark["type"] == "BOOKMARK"
    start_rv = int(bookmark["object"]["metadata"]["resourceVersion"])

    # the Deployment is not watched (and at 0 replicas makes no pods)
    await client.apply([pod("web-1", "10.244.0.2"), deploy(replicas=0)])
    await client.put_status("Pod", "default", "web-1", RUNNING)
    await client.delete([svc()])
    seen = []
    while len(seen) < 3:
        e = await next_item(events)
        if e["type"] != "BOOKMARK":
            seen.append(
                (e["type"], e["object"]["kind"], e["object"]["metadata"]["resourceVersion"])
            )
    assert [s[:2] for s in seen] == [("ADDED", "Pod"), ("MODIFIED", "Pod"), ("DELETED", "Service")]
    rvs = [int(s[2]) for s in seen]
    assert rvs == sorted(rvs) and rvs[0] > start_rv
    await events.aclose()

    # resuming from a resourceVersion replays exactly what came after it
    resumed = client.watch(["Pod", "Service"], start_rv)
    replay = [await next_item(resumed) for _ in range(4)]
    assert [(e["type"], e["object"]["kind"]) for e in replay] == [
        ("ADDED", "Pod"),
        ("MODIFIED", "Pod"),
        ("DELETED", "Service"),
        ("BOOKMARK", "Bookmark"),
    ]
    await resumed.aclose()


async def test_watch_heartbeats_and_errors(client: ControlClient) -> None:
    events = client.watch(["Pod"])
    assert (await next_item(events))["type"] == "BOOKMARK"
    assert (await next_item(events))["type"] == "BOOKMARK"  # heartbeat (0.2 s in this test)
    await events.aclose()
    with pytest.raises(ApiError) as info:
        await next_item(client.watch(["Pod"], 10**6))
    assert info.value.status == 410
    with pytest.raises(ApiError) as info:
        await next_item(client.watch(["Gadget"]))
    assert info.value.status == 404


async def test_destinations_stream_changes(client: ControlClient) -> None:
    stream = client.destinations("web:8080")
    assert await next_item(stream) is None  # unknown target
    await client.apply([svc(), pod("web-1", "10.244.0.2")])
    dest = await next_item(stream)
    assert isinstance(dest, Destination) and dest.endpoints == ()
    await client.put_status("Pod", "default", "web-1", RUNNING)
    dest = await next_item(stream)
    assert [e.address for e in dest.endpoints] == [("10.244.0.2", 9000)]
    assert dict(dest.endpoints[0].labels)["deployment"] == "web"
    leaving = {**RUNNING, "terminating": True, "ready": False}
    await client.put_status("Pod", "default", "web-1", leaving)
    dest = await next_item(stream)
    assert dest.endpoints == ()
    await stream.aclose()
    ip = (await client.get("Service", "default", "web"))["spec"]["clusterIP"]  # type: ignore[index]
    by_ip = client.destinations(f"{ip}:8080")
    dest = await next_item(by_ip)
    assert dest is not None and dest.labels["service"] == "web"
    await by_ip.aclose()
    with pytest.raises(ApiError) as info:
        await next_item(client.destinations(""))
    assert info.value.status == 400


async def test_streams_end_when_the_server_stops(state_dir: str) -> None:
    p = ControlPlane(config(state_dir))
    await p.start()
    client = ControlClient(p.endpoint)
    events = client.watch(["Pod"])
    await next_item(events)
    dests = client.destinations("web:8080")
    await next_item(dests)
    await p.stop(grace=1.0)
    with pytest.raises(ControlUnavailable):
        await next_item(events)
    with pytest.raises(ControlUnavailable):
        await next_item(dests)
    with pytest.raises(ControlUnreachable):
        await client.list("Pod")
    assert not await client.healthz()


async def test_store_survives_a_restart(state_dir: str) -> None:
    p = ControlPlane(config(state_dir))
    await p.start()
    client = ControlClient(p.endpoint)
    await client.apply([svc("a"), svc("b"), deploy()])
    before = await client.list("Service")
    rv = p.store.resource_version
    await p.stop()

    p2 = ControlPlane(config(state_dir))
    await p2.start()
    try:
        assert await client.list("Service") == before
        (c,) = await client.apply([svc("c")])
        assert c["spec"]["clusterIP"] == "10.96.0.4"
        assert int(c["metadata"]["resourceVersion"]) == rv + 1
        (a,) = await client.apply([svc("a")])
        assert a["spec"]["clusterIP"] == before[0]["spec"]["clusterIP"]
    finally:
        await p2.stop()


async def test_tcp_listener(state_dir: str) -> None:
    p = ControlPlane(config(state_dir, http_listen=("127.0.0.1", 0)))
    await p.start()
    try:
        assert p.tcp_address is not None
        host, port = p.tcp_address
        client = ControlClient(f"http://{host}:{port}")
        assert await client.healthz()
        assert [n["metadata"]["name"] for n in await client.list("ns")] == ["default"]
    finally:
        await p.stop()


async def test_second_server_on_a_live_socket_fails_stale_socket_is_replaced(
    state_dir: str,
) -> None:
    p = ControlPlane(config(state_dir))
    await p.start()
    try:
        with pytest.raises(OSError, match="already listening"):
            await ControlPlane(config(state_dir)).http.listen_unix(p.config.socket_path)
    finally:
        await p.stop()
    # a socket file left by a crash (nobody listening) does not block the next start
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(p.config.socket_path)
    stale.close()
    p2 = ControlPlane(config(state_dir))
    await p2.start()
    try:
        assert await ControlClient(p2.endpoint).healthz()
    finally:
        await p2.stop()


async def raw(path: str, data: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(1 << 20), WAIT)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def read_all(path: str, data: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(data)
    await writer.drain()
    chunks = []
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(1 << 20), WAIT)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        writer.close()


async def test_http_errors_and_pipelining(plane: ControlPlane) -> None:
    sock = plane.config.socket_path
    resp = await raw(sock, b"POST /api/v1/apply HTTP/1.1\r\nContent-Length: 3\r\n\r\n{x]")
    assert resp.startswith(b"HTTP/1.1 400 ") and b"not valid JSON" in resp
    resp = await raw(sock, b"GET /api/v2/nothing HTTP/1.1\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 404 ")
    resp = await raw(sock, b"DELETE /api/v1/apply HTTP/1.1\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 405 ")
    resp = await raw(sock, b"GET /api/v1/resources/Gadget HTTP/1.1\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 404 ") and b"unknown kind" in resp
    resp = await raw(sock, b"POST /api/v1/apply HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 413 ")
    resp = await raw(sock, b"NOT HTTP AT ALL\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 400 ")
    resp = await raw(sock, b"GET /api/v1/stat?kind=deploy&window=-5 HTTP/1.1\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 400 ") and b"window" in resp
    # two pipelined requests on one connection, answered in order, then the close is honoured
    both = await read_all(
        sock,
        b"GET /healthz HTTP/1.1\r\n\r\n"
        b"GET /api/v1/resources/ns HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    assert both.count(b"HTTP/1.1 200 OK") == 2
    assert both.index(b'"status":"ok"') < both.index(b'"items"')


async def test_garbage_from_the_network_never_breaks_the_server(plane: ControlPlane) -> None:
    rng = random.Random(3)
    valid = b"POST /api/v1/apply HTTP/1.1\r\nContent-Length: 20\r\n\r\n" + b'{"documents":[1,2]}\n'
    for i in range(60):
        if i % 3 == 0:
            blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        else:  # mutate a valid request: flip, drop or duplicate bytes
            data = bytearray(valid)
            for _ in range(rng.randrange(1, 6)):
                pos = rng.randrange(len(data))
                op = rng.randrange(3)
                if op == 0:
                    data[pos] = rng.randrange(256)
                elif op == 1:
                    del data[pos]
                else:
                    data.insert(pos, data[pos])
            blob = bytes(data) + b"\r\n\r\n"
        reader, writer = await asyncio.open_unix_connection(plane.config.socket_path)
        writer.write(blob)
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(1 << 16), WAIT)
        writer.close()
        assert answer == b"" or answer.startswith(b"HTTP/1.1 "), answer[:80]
        status = int(answer.split(b" ")[1]) if answer else 0
        assert status != 500, answer
    assert await ControlClient(plane.endpoint).healthz()
    assert plane.store.list("Deployment") == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
async def test_other_local_users_get_only_the_workload_endpoints() -> None:
    """A proxy's uid (any uid but root's) may resolve destinations, certify and read the trust
    bundle and its policy, nothing else: no writes, no identity administration (else any local
    user could add a trust anchor and mint identities)."""
    base = tempfile.mkdtemp(prefix="weft-perm-")
    os.chmod(base, 0o755)
    plane = ControlPlane(ControlConfig(state_dir=os.path.join(base, "s")))
    await plane.start()
    script = textwrap.dedent(
        """
        import http.client, json, os, socket, sys
        os.setgid(65534); os.setuid(65534)
        class C(http.client.HTTPConnection):
            def connect(self):
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(sys.argv[1])
        out = {}
        for method, path in json.loads(sys.argv[2]):
            c = C("control", timeout=5)
            c.request(method, path, body=b"{}" if method != "GET" else None)
            out[method + " " + path.split("?")[0]] = c.getresponse().status
            c.close()
        print(json.dumps(out))
        """
    )
    calls = [
        ["GET", "/healthz"],
        ["GET", "/api/v1/destinations?target=web:80"],
        ["GET", "/api/v1/identity/trust"],
        ["GET", "/api/v1/inbound/default/web-1?once=1"],
        ["POST", "/api/v1/identity/certify"],
        ["POST", "/api/v1/identity/anchors"],
        ["POST", "/api/v1/identity/issuer"],
        ["GET", "/api/v1/identity/status"],
        ["POST", "/api/v1/apply"],
        ["GET", "/api/v1/resources/Pod"],
    ]
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, plane.config.socket_path, json.dumps(calls),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        got = json.loads(out)
    finally:
        await plane.stop()
        shutil.rmtree(base, ignore_errors=True)
    assert got["GET /healthz"] == 200
    assert got["GET /api/v1/destinations"] == 200
    assert got["GET /api/v1/identity/trust"] == 200
    assert got["GET /api/v1/inbound/default/web-1"] == 200
    assert got["POST /api/v1/identity/certify"] == 400  # reached: the body has no token/CSR
    for denied in ("POST /api/v1/identity/anchors", "POST /api/v1/identity/issuer",
                   "GET /api/v1/identity/status", "POST /api/v1/apply",
                   "GET /api/v1/resources/Pod"):  # fmt: skip
        assert got[denied] == 403, (denied, got)


async def test_a_reconnect_storm_is_served_not_refused(plane: ControlPlane) -> None:
    """1,000 clients connecting at once (every proxy of a node after a restart): all answered."""

    async def one() -> int:
        reader, writer = await asyncio.open_unix_connection(plane.config.socket_path)
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        await writer.drain()
        status = (await reader.readline()).split()[1]
        writer.close()
        return int(status)

    results = await asyncio.gather(*(one() for _ in range(1000)), return_exceptions=True)
    failed = [r for r in results if r != 200]
    assert not failed, f"{len(failed)} of 1000 failed, e.g. {failed[:3]}"
