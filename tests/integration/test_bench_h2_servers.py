"""The benchmark's HTTP/2 and gRPC pieces against real servers on 127.0.0.1: the h2c backend's
answers (including the gRPC-shaped one), the h2 readiness client, h2load and the gRPC load client
end to end, the connection sampler on real sockets, and Envoy accepting the new configs.

Each test starts what it needs (nginx, a grpcio server, sockets) and stops it; load runs last one
second and are checked for counts and errors only, never for speed.
"""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest
from bench import h2client
from bench.grpc_load import METHOD, REPLY, REQUEST, GrpcLoad, frame
from bench.h2load import H2load
from bench.load import LoadFailed
from bench.processes import LOOPBACK, Supervisor, free_port
from bench.procfs import ConnectionSampler
from bench.settings import Settings
from bench.targets import GRPC_HEADERS, Target, render, serves, start_h2_backend, tool

needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
needs_h2load = pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load not installed")


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Target]:
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed")
    with Supervisor(tmp_path) as sup:
        yield start_h2_backend(sup, tmp_path, Settings(cases=("direct-h2",), pin=False))


# -- the HTTP/2 backend and the readiness client -----------------------------------------------


@needs_nginx
def test_backend_answers_h2c(backend: Target) -> None:
    r = h2client.request(backend.port, "/")
    assert (r.status, r.body, r.trailers) == (200, b"ok", ())
    assert h2client.request(backend.port, "/nothing-here").status == 404


@needs_nginx
def test_backend_answers_a_unary_grpc_call(backend: Target) -> None:
    r = h2client.request(
        backend.port, METHOD, method="POST", headers=GRPC_HEADERS, body=frame(REQUEST)
    )
    assert r.status == 200
    assert r.header("content-type") == "application/grpc"
    assert r.body == frame(REPLY)
    assert r.trailer("grpc-status") == "0"
    assert serves("h2", backend.port)
    assert serves("grpc", backend.port)


@needs_nginx
def test_readiness_fails_on_the_wrong_protocol(backend: Target) -> None:
    # The h2c-only backend cannot pass for an HTTP/1.1 one (readiness polling reads these
    # exceptions as "not ready yet").
    with pytest.raises((OSError, http.client.HTTPException)):
        serves("http1", backend.port)
    with pytest.raises(ValueError, match="protocol"):
        serves("h3", backend.port)


def test_h2client_reports_a_refused_connection() -> None:
    with pytest.raises(ConnectionRefusedError):
        h2client.request(free_port(), "/", timeout=1.0)


def test_h2client_reports_a_server_that_closes_at_once() -> None:
    with socket.create_server((LOOPBACK, 0)) as server, futures.ThreadPoolExecutor(1) as pool:
        port = server.getsockname()[1]
        closed = pool.submit(lambda: server.accept()[0].close())
        with pytest.raises(ConnectionError):
            h2client.request(port, "/", timeout=5.0)
        closed.result(timeout=5)


# -- h2load ------------------------------------------------------------------------------------


@needs_nginx
@needs_h2load
def test_h2load_at_saturation_and_at_a_fixed_rate(backend: Target, tmp_path: Path) -> None:
    load = H2load(backend.port, tmp_path, clients=4, streams=2)
    saturated = load.run(1)
    assert saturated.requests > 0
    assert saturated.error_count == 0
    assert 0 < saturated.latency.p50 <= saturated.latency.p99 <= saturated.latency.max
    paced = load.run(1, 200)
    assert paced.requests == 200  # h2load sends the whole schedule
    assert paced.error_count == 0
    assert not (tmp_path / "h2load.log").exists()


@needs_h2load
def test_h2load_without_a_server_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(LoadFailed, match="no request completed"):
        H2load(free_port(), tmp_path, clients=1, streams=1).run(1)


# -- the gRPC load client ----------------------------------------------------------------------


@needs_nginx
def test_grpc_client_against_the_backend(backend: Target) -> None:
    load = GrpcLoad(backend.port, concurrency=4, channels=2)
    saturated = load.run(1)
    assert saturated.requests > 0
    assert saturated.errors == {}
    assert saturated.bytes == saturated.requests * len(REPLY)
    paced = load.run(1, 100)
    assert 0 < paced.requests <= 100
    assert paced.requests + paced.late >= 100  # every slot served, or counted late
    assert paced.errors == {}


class _Unary:
    """A real grpcio server whose one unary method answers ``reply`` or aborts with ``code``."""

    def __init__(self, reply: bytes, code: Any = None) -> None:
        import grpc  # type: ignore[import-untyped]

        def handle(request: bytes, context: Any) -> bytes:
            if code is not None:
                context.abort(code, "failing on purpose")
            return reply

        service, method = METHOD.strip("/").split("/")
        handler = grpc.method_handlers_generic_handler(
            service, {method: grpc.unary_unary_rpc_method_handler(handle)}
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(4), handlers=(handler,))
        self.port = self.server.add_insecure_port(f"{LOOPBACK}:0")

    def __enter__(self) -> _Unary:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(grace=None).wait(5)


def test_grpc_client_counts_failed_calls_by_status() -> None:
    grpc = pytest.importorskip("grpc")
    with _Unary(REPLY, grpc.StatusCode.UNAVAILABLE) as server:
        run = GrpcLoad(server.port, concurrency=2, channels=1).run(1)
    assert run.requests == 0
    assert set(run.errors) == {"unavailable"}
    assert run.errors["unavailable"] > 0


def test_grpc_client_counts_a_wrong_reply() -> None:
    pytest.importorskip("grpc")
    with _Unary(b"not ok") as server:
        run = GrpcLoad(server.port, concurrency=2, channels=1).run(1)
    assert run.requests == 0
    assert run.errors["bad_reply"] > 0


def test_grpc_client_bad_arguments_fail_the_phase() -> None:
    with pytest.raises(LoadFailed, match="exited 2"):
        GrpcLoad(free_port(), concurrency=1, channels=2).run(1)


# -- connections between a pair ----------------------------------------------------------------


def test_connection_sampler_keeps_the_most_it_saw() -> None:
    with socket.create_server((LOOPBACK, 0)) as server:
        port = server.getsockname()[1]
        with ConnectionSampler(port, interval=0.01) as sampler:
            clients = [socket.create_connection((LOOPBACK, port)) for _ in range(3)]
            accepted = [server.accept()[0] for _ in clients]
            deadline = time.monotonic() + 5
            while sampler.most != 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            for s in clients + accepted:
                s.close()
        assert sampler.most == 3  # the sample at the end, with none open, does not lower it
    with ConnectionSampler(None) as idle:
        pass
    assert idle.most is None


# -- the new configs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "values"),
    [
        ("backend-h2-nginx.conf", {"dir": "/d", "port": 1, "grpc_method": METHOD}),
        ("envoy-h2.yaml", {"port": 1, "admin_port": 2, "backend_port": 3}),
    ],
)
def test_templates_take_exactly_the_values_given(template: str, values: dict[str, object]) -> None:
    assert "{{" not in render(template, **values)
    with pytest.raises(KeyError, match="no value"):
        render(template, **dict(list(values.items())[1:]))
    with pytest.raises(KeyError, match="no placeholder"):
        render(template, **values, surplus=1)


def test_envoy_accepts_the_http2_configs(tmp_path: Path) -> None:
    envoy = tool("envoy")
    if envoy is None:
        pytest.skip("envoy is not installed")
    pki_module = pytest.importorskip("weft.testing.pki")
    pki = pki_module.Pki.create(tmp_path / "pki")
    server_id, client_id = pki.leaf("bench", "server"), pki.leaf("bench", "client")
    configs = {
        "envoy-h2.yaml": render("envoy-h2.yaml", port=1, admin_port=2, backend_port=3),
        "envoy-h2-mtls-client.yaml": render(
            "envoy-h2-mtls-client.yaml",
            port=1,
            admin_port=2,
            server_port=3,
            server_identity=server_id.name,
            cert=client_id.chain,
            key=client_id.key,
            anchors=client_id.anchors,
        ),
        "envoy-h2-mtls-server.yaml": render(
            "envoy-h2-mtls-server.yaml",
            port=1,
            admin_port=2,
            backend_port=3,
            cert=server_id.chain,
            key=server_id.key,
            anchors=server_id.anchors,
        ),
    }
    for name, text in configs.items():
        path = tmp_path / name
        path.write_text(text)
        done = subprocess.run(
            [str(envoy), "--mode", "validate", "-c", str(path), "--log-level", "error"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"{name}: {done.stdout[-1000:]}{done.stderr[-1000:]}"
