"""The local mesh's Kubernetes API on this machine's loopback: a byte relay to the control plane.

The control plane runs in the node's network namespace, so its listeners are out of the host's
reach but for its unix sockets. The node agent (on the host) listens on 127.0.0.1:8086 with TLS,
requiring a client certificate of the local PKI (:mod:`weft.runtime.local.kubepki`: the admin
certificate that ``weft kubeconfig`` embeds), and relays each connection's bytes to the control
plane's ``kube.sock`` (root only), but for a connection whose first request is a pod's ``exec``,
which the node serves itself (:mod:`~weft.runtime.local.podexec`), as the API server hands exec to
the kubelet: kubectl works as against a cluster, and a local user without
the certificate is refused in the handshake. At most :data:`MAX_CONNECTIONS` at once (a reconnect
storm is refused at the door, not queued without bound); each side's buffered bytes are bounded
by the streams' own flow control.

Not for: any other traffic (the mesh's data plane never goes through here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from pathlib import Path

from weft.runtime.local import kubepki
from weft.runtime.local.podexec import ExecServer, exec_target

log = logging.getLogger("weft.node")

DEFAULT_LISTEN = ("127.0.0.1", 8086)
MAX_CONNECTIONS = 512
_CHUNK = 64 * 1024
HEAD_TIMEOUT = 60.0  # for a connection's first request head


class KubePort:
    """Listens on ``listen`` and relays to the unix socket ``target``."""

    def __init__(
        self,
        listen: tuple[str, int],
        target: Path,
        pki_dir: Path,
        *,
        exec_server: ExecServer | None = None,
    ) -> None:
        self.listen = listen
        self.target = target
        self.pki_dir = pki_dir
        self.exec_server = exec_server
        self.connections = 0
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return (
            f"<KubePort {self.listen[0]}:{self.listen[1]} -> {self.target} open={self.connections}>"
        )

    async def start(self) -> bool:
        """Listen; False (logged) when the address is taken or the certificates unusable: the
        rest of the mesh runs on."""
        try:
            pki = kubepki.ensure(self.pki_dir)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
            context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
            context.verify_mode = ssl.CERT_REQUIRED
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            self._server = await asyncio.start_server(
                self._relay,
                self.listen[0],
                self.listen[1],
                backlog=1024,
                ssl=context,
                ssl_handshake_timeout=10.0,
            )
        except (OSError, ValueError, ssl.SSLError) as e:
            log.warning(
                "the Kubernetes API is not served on %s:%d: %s",
                *self.listen,
                getattr(e, "strerror", None) or e,
            )
            return False
        log.info("Kubernetes API on https://%s:%d (weft kubeconfig)", *self.listen)
        return True

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio's server keeps no reference to a connection's task: this does
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self.connections >= MAX_CONNECTIONS:
            self.refused += 1
            writer.close()
            return
        self.connections += 1
        try:
            try:
                # the first request's head: an exec is the node's to serve, as the kubelet's
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
                return
            first_line = head.split(b"\r\n", 1)[0].split(b" ")
            if (
                self.exec_server is not None
                and len(first_line) == 3
                and exec_target(first_line[1].decode("latin-1")) is not None
            ):
                await self.exec_server.serve(head, reader, writer)
                return
            try:
                up_reader, up_writer = await asyncio.open_unix_connection(str(self.target))
            except OSError:
                writer.write(
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n"
                    b"connection: close\r\n\r\n"
                )
                with contextlib.suppress(OSError):
                    await writer.drain()
                return
            up_writer.write(head)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        finally:
            self.connections -= 1
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, asyncio.IncompleteReadError):
        writer.close()


__all__ = ["DEFAULT_LISTEN", "MAX_CONNECTIONS", "KubePort"]
