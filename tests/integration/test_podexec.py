"""The kubelet's exec server over real sockets, with wsproto as the client's side: what it refuses
and how (plain HTTP, SPDY, no remote-command protocol, an unknown pod, a pod not running here,
too many sessions). Commands running in a pod, with kubectl: tests/e2e/test_kubectl.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, RejectConnection, RejectData, Request

from weft.runtime.local import podexec
from weft.runtime.local.podexec import ExecServer, exec_target

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web-1", "namespace": "shop", "uid": "u1"},
    "spec": {"containers": [{"name": "web", "command": ["x"]}]},
    "status": {"phase": "Running", "podIP": "10.244.0.9"},
}
PATH = "/api/v1/namespaces/shop/pods/{pod}/exec?command=true&stdout=true&stderr=true"


@pytest.fixture
async def server() -> AsyncIterator[tuple[ExecServer, int]]:
    pods: dict[tuple[str, str], Mapping[str, Any]] = {("shop", "web-1"): POD}
    execs = ExecServer(lambda ns, name: pods.get((ns, name)), state_dir="/nowhere",
                       python="python3")  # fmt: skip

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        try:
            await execs.serve(head, reader, writer)
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield execs, srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()


async def exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return out


def ws_request(pod: str, protocols: list[str]) -> tuple[WSConnection, bytes]:
    ws = WSConnection(ConnectionType.CLIENT)
    data = ws.send(Request(host="localhost", target=PATH.format(pod=pod), subprotocols=protocols))
    return ws, data


def test_exec_paths_are_recognised() -> None:
    assert exec_target("/api/v1/namespaces/a/pods/b/exec?command=ls") == ("a", "b")
    assert exec_target("/api/v1/namespaces/a/pods/b/log") is None
    assert exec_target("/api/v1/namespaces/a/pods/b") is None


async def test_plain_http_and_spdy_are_refused_naming_what_works(
    server: tuple[ExecServer, int],
) -> None:
    _, port = server
    spdy = (f"POST {PATH.format(pod='web-1')} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
            "Upgrade: SPDY/3.1\r\n\r\n").encode()  # fmt: skip
    out = await exchange(port, spdy)
    assert out.startswith(b"HTTP/1.1 400")
    status = json.loads(out.split(b"\r\n\r\n", 1)[1])
    assert status["kind"] == "Status" and "WebSockets" in status["message"]


async def test_an_unknown_pod_is_a_404_status(server: tuple[ExecServer, int]) -> None:
    _, port = server
    ws, data = ws_request("nope", ["v5.channel.k8s.io"])
    ws.receive_data(await exchange(port, data))
    events = list(ws.events())
    assert isinstance(events[0], RejectConnection) and events[0].status_code == 404
    body = b"".join(e.data for e in events if isinstance(e, RejectData))
    assert json.loads(body)["message"] == 'pods "nope" not found'


async def test_no_remote_command_protocol_is_a_400(server: tuple[ExecServer, int]) -> None:
    _, port = server
    ws, data = ws_request("web-1", ["chat"])
    ws.receive_data(await exchange(port, data))
    (rejected, *_) = ws.events()
    assert isinstance(rejected, RejectConnection) and rejected.status_code == 400


async def test_a_pod_not_running_here_ends_with_a_failure_status(
    server: tuple[ExecServer, int],
) -> None:
    _, port = server
    ws, data = ws_request("web-1", ["v5.channel.k8s.io", "v4.channel.k8s.io"])
    ws.receive_data(await exchange(port, data))
    events = list(ws.events())
    assert isinstance(events[0], AcceptConnection)
    assert events[0].subprotocol == "v5.channel.k8s.io"
    (frame,) = [e.data for e in events if isinstance(e, BytesMessage)]
    assert frame[0] == podexec.ERROR
    status = json.loads(frame[1:])
    assert status["status"] == "Failure" and "not running here" in status["message"]


async def test_sessions_are_bounded(
    server: tuple[ExecServer, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    execs, port = server
    monkeypatch.setattr(execs, "sessions", podexec.MAX_SESSIONS)
    _, data = ws_request("web-1", ["v5.channel.k8s.io"])
    out = await exchange(port, data)
    assert out.startswith(b"HTTP/1.1 429")
