"""The control plane's Python client: asyncio, HTTP/1.1 over a unix socket or TCP, no HTTP library.

``ControlClient("unix:/run/weft/control.sock")`` (or ``"http://127.0.0.1:8086"``, or
``"https://weft-control.weft-system.svc.cluster.local:8086"`` with a :class:`ControlTLS`: the
trust anchors and the identity the control plane must present) speaks the API in
docs/control-plane-api.md. Each call opens one connection (cheap over a unix socket), sends one
request and parses the response with httptools. Watches and destination streams are async
iterators over the NDJSON body; they raise :class:`ControlUnavailable` when the connection ends or
goes silent longer than three heartbeats, and callers retry with backoff. Non-2xx answers raise
:class:`ApiError` with the server's message and field details.

The CLI, the node agent and the proxy's :mod:`weft.proxy.control_discovery` use it;
:func:`run_sync` runs one call from blocking code.

Not for: retry policy (callers own it, usually with :class:`weft.core.backoff.ExponentialBackoff`).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import os
import ssl
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

import httptools

from weft.discovery import Destination

T = TypeVar("T")

DEFAULT_STATE_DIR = "/run/weft"
SOCKET_NAME = "control.sock"
KUBE_SOCKET = "kube.sock"  # the Kubernetes API for kubectl, root only (weft.runtime.local.kubeport)
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
MAX_LINE_BYTES = 16 * 1024 * 1024
HEARTBEAT = 5.0


def default_endpoint(state_dir: str | None = None) -> str:
    """``unix:<state dir>/control.sock``; the state dir is ``$WEFT_STATE_DIR`` or ``/run/weft``."""
    base = state_dir or os.environ.get("WEFT_STATE_DIR") or DEFAULT_STATE_DIR
    return f"unix:{os.path.join(base, SOCKET_NAME)}"


class ControlUnavailable(ConnectionError):
    """The control plane could not be reached, or a stream from it ended."""


class ControlUnreachable(ControlUnavailable):
    """No connection could be made at all: the control plane is not running there."""


class ApiError(Exception):
    """The control plane answered with an error status."""

    def __init__(self, status: int, message: str, details: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details: list[Any] = list(details)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.message!r}, details={len(self.details)})"


class ControlTLS:
    """How a client verifies the control plane's HTTPS API: the mesh's trust anchors (TLS 1.3,
    strict X.509 checks) and the identity the control plane's certificate must name
    (``weft-control.weft-system.serviceaccount.identity.cluster.local``), as a proxy checks
    a peer proxy. :meth:`set_anchors` swaps in a new context (a rotation's bundle, received on
    the verified channel); connections already open keep theirs."""

    def __init__(self, anchors_pem: bytes, server_name: str) -> None:
        if not server_name:
            raise ValueError("the control plane's identity is required to verify it")
        self.server_name = server_name
        self.context = self._context(anchors_pem)
        self.anchors_pem = anchors_pem

    def __repr__(self) -> str:
        return f"<ControlTLS {self.server_name}>"

    @staticmethod
    def _context(anchors_pem: bytes) -> ssl.SSLContext:
        text = anchors_pem.decode("ascii", errors="replace")
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise ValueError("the control plane's trust anchors hold no PEM certificate")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
        try:
            ctx.load_verify_locations(cadata=text)
        except ssl.SSLError as exc:
            raise ValueError(f"the control plane's trust anchors are not valid: {exc}") from None
        return ctx

    def set_anchors(self, anchors_pem: bytes) -> bool:
        """Trust ``anchors_pem`` from now on; False (and the old ones kept) when unchanged."""
        if anchors_pem == self.anchors_pem:
            return False
        self.context = self._context(anchors_pem)
        self.anchors_pem = anchors_pem
        return True


@dataclass(frozen=True, slots=True)
class _Target:
    unix_path: str | None
    host: str
    port: int
    https: bool = False

    @classmethod
    def parse(cls, endpoint: str) -> _Target:
        if endpoint.startswith("unix:"):
            path = endpoint[5:]
            if path.startswith("//"):
                path = path[2:]
            if not path:
                raise ValueError(f"invalid control endpoint {endpoint!r}: missing socket path")
            return cls(path, "localhost", 0)
        if endpoint.startswith("/"):
            return cls(endpoint, "localhost", 0)
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"invalid control endpoint {endpoint!r}: expected unix:PATH, http://HOST:PORT "
                "or https://HOST:PORT"
            )
        https = parts.scheme == "https"
        return cls(None, parts.hostname, parts.port or (443 if https else 80), https)


class _Response:
    """httptools callbacks for one response; body chunks are queued for streaming readers."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.headers_done = False
        self.complete = False
        self.chunks: deque[bytes] = deque()
        self.size = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.size += len(body)

    def on_message_complete(self) -> None:
        self.complete = True


class _Exchange:
    """One request on its own connection, read incrementally."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.resp = _Response()
        self.parser = httptools.HttpResponseParser(self.resp)

    async def read_more(self, within: float | None) -> bool:
        """Feed the next bytes to the parser; False at EOF."""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), within)
        except TimeoutError:
            raise ControlUnavailable("control plane went silent") from None
        except OSError as exc:
            raise ControlUnavailable(f"connection to the control plane lost: {exc}") from None
        if not data:
            with contextlib.suppress(httptools.HttpParserError):
                self.parser.feed_data(b"")
            return False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise ControlUnavailable(f"malformed response from the control plane: {exc}") from None
        if self.resp.size > MAX_RESPONSE_BYTES and not self.resp.complete:
            raise ControlUnavailable("response from the control plane too large")
        return True

    async def head(self, within: float) -> None:
        while not self.resp.headers_done:
            if not await self.read_more(within):
                raise ControlUnavailable("control plane closed the connection before answering")
        self.resp.status = self.parser.get_status_code()

    async def body(self, within: float) -> bytes:
        while not self.resp.complete:
            if not await self.read_more(within):
                if self.resp.complete:
                    break
                raise ControlUnavailable("control plane closed the connection mid-response")
        return b"".join(self.resp.chunks)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


def _raise_for(status: int, body: bytes) -> None:
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    message = str(data.get("error") or f"control plane answered HTTP {status}")
    details = data.get("details")
    raise ApiError(status, message, details if isinstance(details, list) else [])


class ControlClient:
    """Client of the control-plane API (see the module docstring)."""

    def __init__(
        self, endpoint: str, *, timeout: float = 10.0, tls: ControlTLS | None = None
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._target = _Target.parse(endpoint)
        if tls is not None and not self._target.https:
            raise ValueError(f"trust anchors given for {endpoint!r}, which is not https://")
        # https without ControlTLS: the system's CAs and the URL's host (a control plane behind
        # a public certificate); the proxies always verify the mesh identity instead
        self.tls = tls

    def __repr__(self) -> str:
        return f"<ControlClient {self.endpoint}>"

    # -- transport ---------------------------------------------------------------------------

    async def _open(self, method: str, path: str, body: bytes | None) -> _Exchange:
        t = self._target
        try:
            if t.unix_path is not None:
                conn = asyncio.open_unix_connection(t.unix_path, limit=MAX_LINE_BYTES)
            elif t.https:
                ctx, name = (
                    (self.tls.context, self.tls.server_name)
                    if self.tls is not None
                    else (ssl.create_default_context(), t.host)
                )
                conn = asyncio.open_connection(
                    t.host,
                    t.port,
                    limit=MAX_LINE_BYTES,
                    ssl=ctx,
                    server_hostname=name,
                    ssl_handshake_timeout=self.timeout,
                )
            else:
                conn = asyncio.open_connection(t.host, t.port, limit=MAX_LINE_BYTES)
            reader, writer = await asyncio.wait_for(conn, self.timeout)
        except ssl.SSLError as exc:
            name = self.tls.server_name if self.tls is not None else t.host
            reason = getattr(exc, "verify_message", None) or exc.reason or str(exc)
            raise ControlUnreachable(
                f"cannot verify the control plane at {t.host}:{t.port} as {name}: {reason}"
            ) from None
        except (OSError, TimeoutError) as exc:
            where = t.unix_path or f"{t.host}:{t.port}"
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ControlUnreachable(
                f"cannot reach the control plane at {where}: {reason or type(exc).__name__}"
            ) from None
        default_port = (0, 443) if t.https else (0, 80)
        host = t.host if t.port in default_port else f"{t.host}:{t.port}"
        head = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
        payload = body or b""
        if body is not None:
            head.append("Content-Type: application/json")
            head.append(f"Content-Length: {len(payload)}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
        ex = _Exchange(reader, writer)
        try:
            await asyncio.wait_for(writer.drain(), self.timeout)
        except (OSError, TimeoutError) as exc:
            ex.close()
            raise ControlUnavailable(f"connection to the control plane lost: {exc}") from None
        return ex

    async def _call(self, method: str, path: str, payload: Any = None) -> Any:
        body = None if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        ex = await self._open(method, path, body)
        try:
            await ex.head(self.timeout)
            data = await ex.body(self.timeout)
        finally:
            ex.close()
        if not 200 <= ex.resp.status < 300:
            _raise_for(ex.resp.status, data)
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError as exc:
            raise ControlUnavailable(f"control plane answered invalid JSON: {exc}") from None

    async def _stream(self, path: str) -> AsyncIterator[Any]:
        """JSON values of an NDJSON stream; ControlUnavailable when it ends or goes silent."""
        ex = await self._open("GET", path, None)
        try:
            await ex.head(self.timeout)
            if not 200 <= ex.resp.status < 300:
                _raise_for(ex.resp.status, await ex.body(self.timeout))
            buf = b""
            silent = 3 * HEARTBEAT
            while True:
                while ex.resp.chunks:
                    buf += ex.resp.chunks.popleft()
                    ex.resp.size = 0
                    if len(buf) > MAX_LINE_BYTES:
                        raise ControlUnavailable("stream line from the control plane too long")
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        if not line.strip():
                            continue
                        try:
                            yield json.loads(line)
                        except ValueError as exc:
                            raise ControlUnavailable(f"invalid JSON in stream: {exc}") from None
                if ex.resp.complete:
                    raise ControlUnavailable("control plane ended the stream")
                if not await ex.read_more(silent):
                    raise ControlUnavailable("control plane closed the stream")
        finally:
            ex.close()

    async def call(self, method: str, path: str, payload: Any = None) -> Any:
        """One JSON request to ``path``; the decoded answer (ApiError for 4xx/5xx)."""
        return await self._call(method, path, payload)

    def stream(self, path: str) -> AsyncIterator[Any]:
        """The JSON values of the NDJSON stream at ``path`` (ControlUnavailable when it ends)."""
        return self._stream(path)

    # -- API ---------------------------------------------------------------------------------

    async def healthz(self) -> bool:
        """True when the control plane answers; False when it cannot be reached or errs."""
        try:
            await self._call("GET", "/healthz")
        except (ControlUnavailable, ApiError):
            return False
        return True

    async def apply_actions(
        self, docs: Iterable[Mapping[str, Any]], source: str | None = None
    ) -> builtins.list[tuple[str, dict[str, Any]]]:
        """Apply documents all-or-nothing; ``(action, object)`` per document, action being
        ``created``, ``configured`` or ``unchanged``. Raises ApiError (422 with details)."""
        payload: dict[str, Any] = {"documents": list(docs)}
        if source is not None:
            payload["source"] = source
        data = await self._call("POST", "/api/v1/apply", payload)
        objs = data.get("applied", [])
        actions = data.get("actions") or ["configured"] * len(objs)
        return list(zip(actions, objs, strict=True))

    async def apply(
        self, docs: Iterable[Mapping[str, Any]], source: str | None = None
    ) -> builtins.list[dict[str, Any]]:
        """Apply documents all-or-nothing and return the stored objects."""
        return [obj for _, obj in await self.apply_actions(docs, source)]

    async def delete_actions(
        self, docs: Iterable[Mapping[str, Any]]
    ) -> builtins.list[tuple[str, dict[str, Any]]]:
        """Delete objects by kind/namespace/name; ``("deleted"|"not found", object)`` each."""
        refs = [_ref(d) for d in docs]
        data = await self._call("POST", "/api/v1/delete", {"documents": refs})
        return [(str(r["action"]), r["object"]) for r in data.get("results", [])]

    async def delete(self, docs: Iterable[Mapping[str, Any]]) -> None:
        await self.delete_actions(docs)

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """One object, or None when it does not exist."""
        ns = namespace or "default"
        try:
            data = await self._call("GET", f"/api/v1/resources/{_q(kind)}/{_q(ns)}/{_q(name)}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return dict(data)

    async def list(self, kind: str, namespace: str | None = None) -> builtins.list[dict[str, Any]]:
        """Objects of a kind, in one namespace or (None) all of them."""
        path = f"/api/v1/resources/{_q(kind)}"
        if namespace is not None:
            path += "?" + urlencode({"namespace": namespace})
        data = await self._call("GET", path)
        return list(data.get("items", []))

    async def put_status(
        self, kind: str, namespace: str | None, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Replace an object's status; returns the updated object. ApiError 404 when absent."""
        ns = namespace or "default"
        path = f"/api/v1/resources/{_q(kind)}/{_q(ns)}/{_q(name)}/status"
        return dict(await self._call("PUT", path, {"status": dict(status)}))

    async def watch(
        self, kinds: Iterable[str], resource_version: int | str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Events ``{"type", "object"}``: the current objects as ADDED (or the events after
        ``resource_version``), a BOOKMARK, then changes and heartbeat BOOKMARKs.

        Raises ControlUnavailable when the stream ends, ApiError 410 when ``resource_version`` is
        too old (watch again without it).
        """
        query = {"kinds": ",".join(kinds)}
        if resource_version is not None:
            query["resourceVersion"] = str(resource_version)
        async for item in self._stream("/api/v1/watch?" + urlencode(query)):
            if isinstance(item, dict):
                yield item

    async def destinations(
        self, target: str, namespace: str | None = None
    ) -> AsyncIterator[Destination | None]:
        """The target's current snapshot (None: unknown target), then each change."""
        query = {"target": target}
        if namespace is not None:
            query["namespace"] = namespace
        async for item in self._stream("/api/v1/destinations?" + urlencode(query)):
            if not isinstance(item, dict) or "destination" not in item:
                continue  # heartbeat
            raw = item["destination"]
            if raw is None:
                yield None
            else:
                try:
                    yield Destination.from_json(raw)
                except (KeyError, ValueError, TypeError) as exc:
                    raise ControlUnavailable(
                        f"invalid destination from the control plane: {exc}"
                    ) from None

    async def stat(
        self,
        kind: str,
        name: str | None = None,
        namespace: str | None = None,
        window: float = 60.0,
    ) -> builtins.list[dict[str, Any]]:
        """Golden metrics rows for ``deploy``, ``svc`` or ``pod`` over ``window`` seconds."""
        query: dict[str, str] = {"kind": kind, "window": f"{window:g}"}
        if name is not None:
            query["name"] = name
        if namespace is not None:
            query["namespace"] = namespace
        data = await self._call("GET", "/api/v1/stat?" + urlencode(query))
        return list(data.get("rows", []))

    async def routes(
        self, service: str, namespace: str | None = None, window: float = 60.0
    ) -> builtins.list[dict[str, Any]]:
        """Per-route rows of ``service`` (effective and actual success and RPS, latencies) over
        ``window`` seconds. ApiError 404 when the Service does not exist."""
        query: dict[str, str] = {"service": service, "window": f"{window:g}"}
        if namespace is not None:
            query["namespace"] = namespace
        data = await self._call("GET", "/api/v1/routes?" + urlencode(query))
        return list(data.get("rows", []))


def _q(segment: str) -> str:
    return quote(segment, safe="")


def _ref(doc: Mapping[str, Any]) -> dict[str, Any]:
    meta = doc.get("metadata") or {}
    ref: dict[str, Any] = {"kind": doc.get("kind"), "metadata": {"name": meta.get("name")}}
    if meta.get("namespace"):
        ref["metadata"]["namespace"] = meta["namespace"]
    return ref


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run one client call from blocking code (the CLI)."""
    return asyncio.run(coro)
