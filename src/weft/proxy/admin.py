"""The proxy's admin listener: ``/metrics``, ``/ready``, ``/live``, ``POST /shutdown``, and the
JSON views other modules register in ``ProxyServer.admin_views`` (``/identity``...).

A small HTTP/1.1 server (httptools) separate from the data path. ``/ready`` answers 200 once the
listeners are bound and 503 while draining; ``POST /shutdown`` is accepted from loopback only
(403 otherwise) and begins a graceful shutdown.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from typing import TYPE_CHECKING, cast

import httptools

from weft.addr import Address

if TYPE_CHECKING:
    from weft.proxy.server import ProxyServer

_MAX_HEAD = 16384
log = logging.getLogger("weft.proxy")


def _response(status: int, reason: str, body: bytes, ctype: str = "text/plain") -> bytes:
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


class _AdminProtocol(asyncio.Protocol):
    def __init__(self, admin: AdminServer) -> None:
        self.admin = admin
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.seen = 0
        self.peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.seen += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(_response(400, "Bad Request", b"bad request\n"))
            self.transport.close()
            return
        if self.seen > _MAX_HEAD:
            self.transport.write(_response(431, "Request Header Fields Too Large", b""))
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.seen = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        assert self.transport is not None
        method = self.parser.get_method()
        path = httptools.parse_url(self.url).path.decode("latin-1")
        out = self.admin.handle(method, path, self.peer)
        if not self.parser.should_keep_alive():
            self.transport.write(out)
            self.transport.close()
        else:
            self.transport.write(out)


class AdminServer:
    """Serves the admin endpoints of one :class:`~weft.proxy.server.ProxyServer`."""

    def __init__(self, proxy: ProxyServer) -> None:
        self.proxy = proxy
        self.server: asyncio.Server | None = None

    async def start(self, addr: Address) -> Address:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _AdminProtocol(self), addr[0], addr[1], reuse_address=True
        )
        name = self.server.sockets[0].getsockname()
        return (name[0], name[1])

    def handle(self, method: bytes, path: str, peer: str) -> bytes:
        proxy = self.proxy
        if path == "/metrics" and method in (b"GET", b"HEAD"):
            return _response(
                200, "OK", proxy.metrics.expose(), "text/plain; version=0.0.4; charset=utf-8"
            )
        if path == "/ready" and method in (b"GET", b"HEAD"):
            if proxy.ready and not proxy.draining:
                return _response(200, "OK", b"ready\n")
            return _response(503, "Service Unavailable", b"not ready\n")
        view = proxy.admin_views.get(path)
        if view is not None and method in (b"GET", b"HEAD"):
            body = json.dumps(view(), indent=2, sort_keys=True).encode() + b"\n"
            return _response(200, "OK", body, "application/json")
        if path == "/live" and method in (b"GET", b"HEAD"):
            return _response(200, "OK", b"live\n")
        if path == "/shutdown":
            if method != b"POST":
                return _response(405, "Method Not Allowed", b"use POST\n")
            if not _is_loopback(peer):
                return _response(403, "Forbidden", b"shutdown is accepted from localhost only\n")
            log.warning("POST /shutdown from %s: draining", peer)
            proxy.request_shutdown()
            return _response(202, "Accepted", b"shutting down\n")
        return _response(404, "Not Found", b"not found\n")

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False
