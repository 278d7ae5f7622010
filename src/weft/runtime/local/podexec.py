"""Running a command in a pod: ``weft exec`` and ``kubectl exec`` (the kubelet's exec).

:func:`exec_command` is the one definition of what runs: the command inside the pod's network
namespace (``ip netns exec``), as the pod's app runs (its first app container's user: Kubernetes
runs ``kubectl exec`` as the container's user, and root in a pod stays the pod spec's choice),
with the pod's environment basics. ``weft exec`` runs it in place of itself.

:class:`ExecServer` serves ``kubectl exec`` as the kubelet does, over the WebSocket remote-command
protocol that kubectl speaks first (``v5.channel.k8s.io``, or ``v4``): each binary message's
first byte is its channel (0 stdin, 1 stdout, 2 stderr, 3 the final ``Status``, 4 terminal
resize; in v5, ``255 <channel>`` closes a channel), with a pseudo-terminal for ``tty=true``.
The node agent's Kubernetes port (:mod:`~weft.runtime.local.kubeport`) hands it the connections
whose first request is ``pods/<name>/exec``, after the TLS client-certificate check; the frames
are wsproto's (sans-I/O). Output is flow-controlled by the socket; at most :data:`MAX_SESSIONS`
sessions run at once. SPDY (kubectl before 1.30, or ``KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false``)
is refused with a Status saying so.

Not for: attach, port-forward (not served), nor the pod's own processes (:mod:`.pod`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import pty
import struct
import termios
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    RejectConnection,
    RejectData,
    Request,
)

from weft.runtime.local import net, netrun, users
from weft.runtime.local.launch import base_env

log = logging.getLogger("weft.node")

PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
MAX_SESSIONS = 32
MAX_HEAD = 64 * 1024
_CHUNK = 32 * 1024


class ExecError(Exception):
    """Why a command cannot run in a pod (the message names it)."""


def exec_command(
    obj: Mapping[str, Any], argv: Sequence[str], *, state_dir: str, python: str, term: str
) -> tuple[list[str], dict[str, str]]:
    """``(argv, env)`` that run ``argv`` in pod ``obj`` (a Pod object) as its app runs. Raises
    ExecError when the pod is not running here or its user cannot be told."""
    if not argv:
        raise ExecError("nothing to run: give a command")
    meta = obj.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "")
    netns = net.pod_netns_name(namespace, name)
    if not netrun.netns_exists(netns):
        raise ExecError(f"pod {namespace}/{name} is not running here (no namespace {netns})")
    try:
        user = users.exec_user(obj)
    except ValueError as exc:
        raise ExecError(f"pod {namespace}/{name}: {exc}") from None
    env = base_env(state_dir=state_dir, python=python)
    env.update(
        {"HOSTNAME": name, "WEFT_POD_NAME": name, "WEFT_POD_NAMESPACE": namespace, "TERM": term}
    )
    if not user.root:
        env["HOME"] = users.HOME_NON_ROOT
    command = users.app_argv(
        argv, user, python=python, reach=users.python_reach(python), pdeathsig=False
    )
    return ["ip", "netns", "exec", netns, *command], env


def exec_target(path: str) -> tuple[str, str] | None:
    """``(namespace, pod)`` when ``path`` is a pod's exec subresource."""
    parts = [p for p in urlsplit(path).path.split("/") if p]
    if (
        len(parts) == 7
        and parts[:3] == ["api", "v1", "namespaces"]
        and parts[4:7:2]
        == [
            "pods",
            "exec",
        ]
    ):
        return parts[3], parts[5]
    return None


def _status(code: int, reason: str, message: str, causes: Sequence[Any] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if causes:
        out["details"] = {"causes": list(causes)}
    return out


def _http_status(code: int, reason: str, message: str) -> bytes:
    body = json.dumps(_status(code, reason, message)).encode()
    head = (
        f"HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class ExecServer:
    """Serves ``kubectl exec`` sessions (see the module docstring). ``lookup(ns, name)`` gives
    the Pod object as the node knows it (None: no such pod)."""

    def __init__(
        self,
        lookup: Callable[[str, str], Mapping[str, Any] | None],
        *,
        state_dir: str,
        python: str,
    ) -> None:
        self.lookup = lookup
        self.state_dir = state_dir
        self.python = python
        self.sessions = 0

    async def serve(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One connection whose first request (``head``, up to its blank line) is an exec."""
        first = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        target = exec_target(first[1]) if len(first) == 3 else None
        lowered = head.lower()
        if target is None:
            writer.write(_http_status(404, "NotFound", "not an exec request"))
        elif b"upgrade: websocket" not in lowered:
            writer.write(_http_status(
                400, "BadRequest",
                "exec is served over WebSockets (v5.channel.k8s.io) only: use kubectl 1.30 or "
                "later without KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false, or `weft exec`",
            ))  # fmt: skip
        elif self.sessions >= MAX_SESSIONS:
            writer.write(_http_status(429, "TooManyRequests", "too many exec sessions"))
        else:
            self.sessions += 1
            try:
                await self._session(target, first[1], head, reader, writer)
            finally:
                self.sessions -= 1
            return
        with contextlib.suppress(OSError):
            await writer.drain()

    async def _session(
        self,
        target: tuple[str, str],
        path: str,
        head: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        query = parse_qs(urlsplit(path).query)
        argv = query.get("command", [])
        tty = query.get("tty", ["false"])[0] == "true"
        want_stdin = query.get("stdin", ["false"])[0] == "true"
        ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(head)
        request = next((e for e in ws.events() if isinstance(e, Request)), None)
        offered = request.subprotocols if request is not None else []
        protocol = next((p for p in PROTOCOLS if p in offered), None)
        obj = self.lookup(*target)
        problem: tuple[int, str, str] | None = None
        if request is None or protocol is None:
            problem = (400, "BadRequest", f"a remote-command protocol is required: {PROTOCOLS}")
        elif obj is None:
            problem = (404, "NotFound", f'pods "{target[1]}" not found')
        if problem is not None:
            if request is not None:
                body = json.dumps(_status(*problem)).encode()
                headers = [(b"content-type", b"application/json")]
                writer.write(ws.send(RejectConnection(status_code=problem[0], headers=headers,
                                                      has_body=True)))  # fmt: skip
                writer.write(ws.send(RejectData(data=body)))
            else:
                writer.write(_http_status(*problem))
            with contextlib.suppress(OSError):
                await writer.drain()
            return
        assert obj is not None and protocol is not None
        writer.write(ws.send(AcceptConnection(subprotocol=protocol)))
        await writer.drain()
        session = _Session(ws, reader, writer, tty=tty, stdin=want_stdin)
        try:
            command, env = exec_command(
                obj, argv, state_dir=self.state_dir, python=self.python,
                term="xterm" if tty else "dumb",
            )  # fmt: skip
        except ExecError as exc:
            await session.finish(_status(500, "InternalError", str(exc)))
            return
        log.info("exec in pod %s/%s: %s", *target, " ".join(argv)[:200])
        await session.run(command, env)


class _Session:
    """One running command and its WebSocket."""

    def __init__(
        self,
        ws: WSConnection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        tty: bool,
        stdin: bool,
    ) -> None:
        self.ws = ws
        self.reader = reader
        self.writer = writer
        self.tty = tty
        self.stdin = stdin
        self.proc: asyncio.subprocess.Process | None = None
        self.master: int | None = None
        self._buffer = bytearray()

    async def send(self, channel: int, data: bytes) -> None:
        self.writer.write(self.ws.send(BytesMessage(data=bytes([channel]) + data)))
        await self.writer.drain()

    async def finish(self, status: Mapping[str, Any]) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            await self.send(ERROR, json.dumps(status).encode())
            self.writer.write(self.ws.send(CloseConnection(code=1000)))
            await self.writer.drain()

    async def run(self, command: list[str], env: dict[str, str]) -> None:
        slave = None
        if self.tty:
            self.master, slave = pty.openpty()
            io: dict[str, Any] = {"stdin": slave, "stdout": slave, "stderr": slave}
        else:
            stdin = asyncio.subprocess.PIPE if self.stdin else asyncio.subprocess.DEVNULL
            io = {"stdin": stdin, "stdout": asyncio.subprocess.PIPE,
                  "stderr": asyncio.subprocess.PIPE}  # fmt: skip
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *command, env=env, start_new_session=True, **io
            )
        except OSError as exc:
            await self.finish(_status(500, "InternalError", f"cannot start the command: {exc}"))
            return
        finally:
            if slave is not None:
                os.close(slave)
        pumps = [asyncio.create_task(self._incoming())]
        if self.master is not None:
            pumps.append(asyncio.create_task(self._pump_fd(self.master, STDOUT)))
        else:
            assert self.proc.stdout is not None and self.proc.stderr is not None
            pumps.append(asyncio.create_task(self._pump(self.proc.stdout, STDOUT)))
            pumps.append(asyncio.create_task(self._pump(self.proc.stderr, STDERR)))
        try:
            code = await self.proc.wait()
            await asyncio.gather(*pumps[1:], return_exceptions=True)
        finally:
            pumps[0].cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pumps[0]
            if self.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, 9)
            if self.master is not None:
                os.close(self.master)
        if code == 0:
            await self.finish({"metadata": {}, "status": "Success"})
        else:
            message = f"command terminated with non-zero exit code: exit code {code}"
            cause = {"reason": "ExitCode", "message": str(code)}
            await self.finish(_status(500, "NonZeroExitCode", message, [cause]))

    async def _pump(self, stream: asyncio.StreamReader, channel: int) -> None:
        while data := await stream.read(_CHUNK):
            await self.send(channel, data)

    async def _pump_fd(self, fd: int, channel: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await loop.run_in_executor(None, os.read, fd, _CHUNK)
            except OSError:  # EIO: the terminal's other side closed
                return
            if not data:
                return
            await self.send(channel, data)

    async def _incoming(self) -> None:
        """Frames from kubectl: stdin, stdin's end, resizes, the close."""
        while data := await self.reader.read(_CHUNK):
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, CloseConnection):
                    self._kill()
                    return
                if isinstance(event, BytesMessage):
                    self._buffer += event.data
                    if event.message_finished:
                        await self._frame(bytes(self._buffer))
                        self._buffer.clear()
        self._kill()  # kubectl went away

    async def _frame(self, frame: bytes) -> None:
        if not frame:
            return
        channel, data = frame[0], frame[1:]
        proc = self.proc
        if channel == STDIN and proc is not None:
            if self.master is not None:
                os.write(self.master, data)
            elif proc.stdin is not None and data:
                proc.stdin.write(data)
                with contextlib.suppress(ConnectionError):
                    await proc.stdin.drain()
        elif channel == CLOSE and data[:1] == bytes([STDIN]) and proc is not None:
            if self.master is not None:
                os.write(self.master, b"\x04")
            elif proc.stdin is not None:
                proc.stdin.close()
        elif channel == RESIZE and self.master is not None:
            with contextlib.suppress(ValueError, TypeError, OSError):
                size = json.loads(data)
                packed = struct.pack("HHHH", int(size["Height"]), int(size["Width"]), 0, 0)
                fcntl.ioctl(self.master, termios.TIOCSWINSZ, packed)

    def _kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)


__all__ = ["MAX_SESSIONS", "ExecError", "ExecServer", "exec_command", "exec_target"]
