"""E2E (issue 6): gRPC through the mesh, in real pods with real grpcio clients and servers.

The demo's ``ratings.Ratings`` service (:mod:`weft.demo.ratings`) runs in three replicas, a
canary and a flaky one (10% UNAVAILABLE); a client pod calls them by service name through both
sidecars (h2c from the app, HTTP/2 over mutual TLS between the proxies). Covered: the four kinds
of call, deadlines and cancellation reaching the server, 1,000 concurrent streams on one
connection balanced over three endpoints, a 100 MiB stream through bounded proxy memory,
failures counted by gRPC status, a GRPCRoute 80/20 split and retries on UNAVAILABLE.

Each client run is a short grpcio (asyncio) program run in the client pod with ``weft exec``
(:data:`CLIENT`); it prints one JSON line. The first calls reach sidecars that have not seen
HTTP yet (they dial the app early, and grpcio greets with SETTINGS at once): they must still be
proxied per call over mutual TLS.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from meshlib import E2EMesh, wait_for
from prometheus_client.parser import text_string_to_metric_families

from weft.runtime.local import net, netrun, procs

NS = "grpc"
PORT = 50051
MIB = 1024 * 1024


def _deployment(name: str, replicas: int, env: str = "[]") -> str:
    return f"""
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: grpc}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: ratings
          command: [python, -m, weft.demo.ratings]
          env: {env}
          ports: [{{name: grpc, containerPort: {PORT}}}]
"""


def _service(name: str, app: str, annotations: str = "{}") -> str:
    return f"""
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: grpc, annotations: {annotations}}}
spec:
  selector: {{app: {app}}}
  ports: [{{name: grpc, port: {PORT}, targetPort: grpc}}]
"""


MANIFEST = (
    """
apiVersion: v1
kind: Namespace
metadata: {name: grpc}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: grpc}
spec:
  replicas: 1
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: client, command: [sleep, "3600"]}]
"""
    + _deployment("ratings", 3)
    + _deployment("canary", 1)
    + _deployment("flaky", 1, '[{name: FAILURE_RATE, value: "0.1"}]')
    + _service("ratings", "ratings")
    + _service("canary", "canary")
    + _service("flaky", "flaky")
    + _service(
        "flaky-retry", "flaky", "{retry.weft.io/grpc: unavailable, retry.weft.io/limit: '3'}"
    )
    + _service("ratings-split", "ratings")
    + f"""
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: ratings-split, namespace: grpc}}
spec:
  parentRefs: [{{group: core, kind: Service, name: ratings-split, port: {PORT}}}]
  rules:
    - matches: [{{method: {{service: ratings.Ratings}}}}]
      backendRefs:
        - {{name: ratings, port: {PORT}, weight: 80}}
        - {{name: canary, port: {PORT}, weight: 20}}
"""
)

# The client run in the client pod: ``python -c CLIENT MODE PARAMS_JSON``; one JSON line out.
CLIENT = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from collections import Counter
    import grpc, grpc.aio
    from weft.demo.ratings import Rating, RatingRequest, RatingsStub, WatchRequest, iter_ratings

    mode, p = sys.argv[1], json.loads(sys.argv[2])

    def deploy(pod):
        return pod.rsplit("-", 2)[0] if pod else "-"

    async def kinds(stub):
        out = {}
        s = await stub.GetRating(RatingRequest(book_id=1), timeout=10)
        out["unary"] = {"book": s.book_id, "count": s.count, "pod": s.pod}
        req = WatchRequest(book_id=2, count=5, interval_ms=10)
        got = [m async for m in stub.WatchRatings(req, timeout=10)]
        out["server_stream"] = {"books": [m.book_id for m in got],
                                "pods": sorted({m.pod for m in got})}
        ratings = [Rating(book_id=3, stars=s, review="good") for s in (1, 2, 3, 4, 5) * 2]
        r = await stub.RecordRatings(iter(ratings), timeout=10)
        out["client_stream"] = {"count": r.count, "stars": r.stars_total, "size": r.size_bytes,
                                "sent": sum(len(x.encode()) for x in ratings), "pod": r.pod}
        chat = stub.Chat(timeout=10)
        answers = []
        for stars in (5, 1, 3):
            await chat.write(Rating(book_id=4, stars=stars))
            a = await chat.read()
            answers.append([a.book_id, a.count, a.stars_total, a.pod])
        await chat.done_writing()
        end = await chat.read()
        out["bidi"] = {"answers": answers, "eof": end is grpc.aio.EOF,
                       "code": (await chat.code()).name}
        return out

    async def deadline(stub):
        req = WatchRequest(book_id=1, count=0, interval_ms=100)
        t0, pods, status = time.monotonic(), [], "OK"
        call = stub.WatchRatings(req, timeout=p["deadline"], metadata=(("x-request-id", p["id"]),))
        try:
            async for m in call:
                pods.append(m.pod)
        except grpc.aio.AioRpcError as exc:
            status = exc.code().name
        return {"status": status, "elapsed": time.monotonic() - t0, "messages": len(pods),
                "pods": sorted(set(pods))}

    async def cancel(stub):
        req = WatchRequest(book_id=1, count=0, interval_ms=50)
        call = stub.WatchRatings(req, metadata=(("x-request-id", p["id"]),))
        pods = []
        async for m in call:
            pods.append(m.pod)
            if len(pods) == 3:
                break
        call.cancel()
        return {"messages": len(pods), "pods": sorted(set(pods)), "code": (await call.code()).name}

    async def concurrent(stub):
        n, seen, failures, all_open = p["streams"], 0, Counter(), asyncio.Event()
        def answered():
            nonlocal seen
            seen += 1
            if seen == n:
                all_open.set()
        async def one(i):
            chat = stub.Chat(timeout=60)
            try:
                await chat.write(Rating(book_id=1 + i % 4, stars=1 + i % 5))
                first = await chat.read()
                answered()
                await all_open.wait()  # every stream has an answer and is still open
                await chat.done_writing()
                end = await chat.read()
                code = (await chat.code()).name
                return first.pod if end is grpc.aio.EOF and code == "OK" else "bad:" + code
            except grpc.aio.AioRpcError as exc:
                answered()
                return "error:" + exc.code().name
        pods = Counter(await asyncio.gather(*(one(i) for i in range(n))))
        return {"pods": dict(pods)}

    async def big(stub):
        count, size = p["count"], p["review"]
        sent = sum(len(r.encode()) for r in iter_ratings(count, size))
        t0 = time.monotonic()
        s = await stub.RecordRatings(iter_ratings(count, size), timeout=120)
        return {"count": s.count, "size": s.size_bytes, "sent": sent, "pod": s.pod,
                "seconds": time.monotonic() - t0}

    async def unary(stub):
        # p["calls"]: [[book, n], ...], one after the other, p["concurrency"] at a time
        statuses, deploys = [], Counter()
        async def one(book, counts):
            try:
                s = await stub.GetRating(RatingRequest(book_id=book), timeout=10)
            except grpc.aio.AioRpcError as exc:
                counts[exc.code().name] += 1
            else:
                counts["OK"] += 1
                deploys[deploy(s.pod)] += 1
        for book, left in p["calls"]:
            counts = Counter()
            while left:
                batch = min(left, p.get("concurrency", 1))
                await asyncio.gather(*(one(book, counts) for _ in range(batch)))
                left -= batch
            statuses.append(dict(counts))
        return {"statuses": statuses, "deploys": dict(deploys)}

    async def main():
        async with grpc.aio.insecure_channel(p["target"]) as channel:
            result = await globals()[mode](RatingsStub(channel))
        print(json.dumps(result), flush=True)

    asyncio.run(main())
    """
)


@dataclass(frozen=True)
class App:
    """The running test app: the client pod, the server pods' addresses, the Services'."""

    client: str
    pods: dict[str, dict[str, str]]  # deployment -> pod name -> pod IP
    services: dict[str, str]  # service name -> cluster IP

    def ip(self, pod: str) -> str:
        return next(ips[pod] for ips in self.pods.values() if pod in ips)


@pytest.fixture(scope="module")
def app(mesh: E2EMesh) -> Iterator[App]:
    mesh.apply(MANIFEST)
    pods = {}
    for name, replicas in (("client", 1), ("ratings", 3), ("canary", 1), ("flaky", 1)):
        ready = mesh.wait_rolled_out(name, replicas, NS, limit=90)
        pods[name] = {p["metadata"]["name"]: p["status"]["podIP"] for p in ready}
    services = {s["metadata"]["name"]: s["spec"]["clusterIP"] for s in mesh.objects("svc", NS)}
    (client,) = pods["client"]
    yield App(client, pods, services)


def run(mesh: E2EMesh, pod: str, mode: str, timeout: float = 120.0, **params: Any) -> Any:
    """Run the client program in ``pod``; its JSON answer."""
    argv = ["python", "-c", CLIENT, mode, json.dumps(params)]
    proc = mesh.exec(pod, *argv, namespace=NS, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no answer from the client: {proc.stdout!r} {proc.stderr!r}"
    return json.loads(lines[-1])


def metrics(app: App, pod: str) -> str:
    """The pod's proxy metrics, scraped from the node's namespace (as the control plane does)."""
    url = f"http://{app.ip(pod)}:4191/metrics"
    argv = ["ip", "netns", "exec", net.NODE_NETNS, "curl", "-sf", "-m", "10", url]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=True)
    return proc.stdout


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def responses(text: str, direction: str) -> dict[tuple[str, str], int]:
    """``response_total`` by (grpc_status_code, classification), gRPC responses only."""
    out: dict[tuple[str, str], int] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name != "response_total" or s.labels.get("direction") != direction:
                continue
            code = s.labels.get("grpc_status_code")
            if code is not None:
                assert s.labels.get("status_code") == "200", s.labels  # gRPC status in trailers
                key = (code, s.labels["classification"])
                out[key] = out.get(key, 0) + int(s.value)
    return out


def delta(after: dict[tuple[str, str], int], before: dict[tuple[str, str], int]) -> dict[Any, int]:
    keys = set(after) | set(before)
    diff = {k: after.get(k, 0) - before.get(k, 0) for k in keys}
    return {k: v for k, v in diff.items() if v}


def call_log(mesh: E2EMesh, pod: str, request_id: str) -> dict[str, str] | None:
    """The server's log line for the call with ``request_id`` (its key=value fields), if any."""
    out = mesh.weft("logs", "-n", NS, pod, check=False).stdout
    for line in out.splitlines():
        if line.startswith("grpc ") and f" request_id={request_id} " in line:
            return dict(tok.split("=", 1) for tok in line.split()[1:])
    return None


def proxy_pid(pod: str) -> int:
    """The pid of the pod's sidecar (``python -m weft proxy`` in the pod's namespace)."""
    for pid in netrun.netns_pids(net.pod_netns_name(NS, pod)):
        argv = procs.cmdline(pid)
        if "weft" in argv and "proxy" in argv[argv.index("weft") :]:
            return pid
    raise AssertionError(f"no sidecar found in pod {pod}")


def memory_kib(pid: int, field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (peak RSS) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


# -- tests -------------------------------------------------------------------------------------


def test_all_four_kinds_by_service_name(mesh: E2EMesh, app: App) -> None:
    ratings = set(app.pods["ratings"])
    out = run(mesh, app.client, "kinds", target=f"ratings:{PORT}")
    assert out["unary"]["book"] == 1 and out["unary"]["count"] >= 3
    assert out["unary"]["pod"] in ratings
    assert out["server_stream"]["books"] == [2] * 5
    assert set(out["server_stream"]["pods"]) <= ratings
    stream = out["client_stream"]
    assert (stream["count"], stream["stars"]) == (10, 30)
    assert stream["size"] == stream["sent"] > 0
    bidi = out["bidi"]
    assert bidi["eof"] and bidi["code"] == "OK"
    (first, second, third) = bidi["answers"]
    # each answer came after its rating was recorded, on one replica, in order
    assert [a[0] for a in bidi["answers"]] == [4, 4, 4]
    assert (second[1] - first[1], third[1] - second[1]) == (1, 1)
    assert (second[2] - first[2], third[2] - second[2]) == (1, 3)
    assert first[3] == second[3] == third[3] and first[3] in ratings
    # the demo's traffic generator, bounded, through the fully qualified name
    target = f"ratings.{NS}.svc.cluster.local:{PORT}"
    raw = mesh.exec(
        app.client,
        "python", "-m", "weft.demo.grpc_traffic", "--target", target,
        "--rate", "40", "--count", "40", "--json",
        namespace=NS,
    ).stdout  # fmt: skip
    summary = json.loads(raw.splitlines()[-1])
    assert (summary["calls"], summary["ok"]) == (40, 40), summary
    assert summary["kinds"] == {k: {"OK": 10} for k in summary["kinds"]}
    assert len(summary["kinds"]) == 4


def test_deadline_reaches_the_server_and_ends_the_call_in_time(mesh: E2EMesh, app: App) -> None:
    request_id = f"deadline-{uuid.uuid4().hex[:8]}"
    out = run(mesh, app.client, "deadline", target=f"ratings:{PORT}", deadline=1.0, id=request_id)
    assert out["status"] == "DEADLINE_EXCEEDED", out
    assert 1.0 <= out["elapsed"] < 3.0, out  # at the deadline, not at some later timeout
    assert out["messages"] >= 3, out  # the stream ran until then
    (pod,) = out["pods"]
    line = wait_for(lambda: call_log(mesh, pod, request_id), "the server's log line", limit=15)
    # the server saw the caller's deadline (grpc-timeout through both proxies) ...
    deadline = int(line["deadline_ms"])
    assert 500 <= deadline <= 1100, line
    # ... and the call ended there for it too: cancelled by its deadline or the proxy's reset
    assert line["status"] in ("DEADLINE_EXCEEDED", "CANCELLED"), line
    assert deadline - 200 <= float(line["elapsed_ms"]) < deadline + 1000, line
    assert int(line["out"]) in (out["messages"], out["messages"] + 1), line


def test_cancellation_reaches_the_server(mesh: E2EMesh, app: App) -> None:
    request_id = f"cancel-{uuid.uuid4().hex[:8]}"
    out = run(mesh, app.client, "cancel", target=f"ratings:{PORT}", id=request_id)
    assert out["messages"] == 3 and out["code"] == "CANCELLED", out
    (pod,) = out["pods"]
    line = wait_for(lambda: call_log(mesh, pod, request_id), "the server's log line", limit=15)
    assert line["status"] == "CANCELLED", line
    assert line["deadline_ms"] == "-", line  # no deadline: the cancel ended it
    assert float(line["elapsed_ms"]) < 5000, line


def test_1000_concurrent_streams_on_one_connection_balanced_over_3_endpoints(
    mesh: E2EMesh, app: App
) -> None:
    # the same Service as the deadline test's 1 s stream: a long stream must not make the
    # endpoint that served it look slow (the balancer takes latency to the response headers)
    svc = "ratings"
    target = {"direction": "outbound", "peer": "src", "target_addr": f"{app.services[svc]}:{PORT}"}
    ok = {"grpc_status_code": "0", "classification": "success"}
    servers = sorted(app.pods["ratings"])
    before = [metrics(app, pod) for pod in [app.client, *servers]]
    out = run(mesh, app.client, "concurrent", target=f"{svc}:{PORT}", streams=1000)
    after = [metrics(app, pod) for pod in [app.client, *servers]]
    pods = out["pods"]
    assert sum(pods.values()) == 1000 and set(pods) == set(servers), pods
    assert min(pods.values()) >= 200, pods  # each endpoint a fair share (>= 20%)
    # the client's 1,000 streams came over one connection to its proxy ...
    opened = [sample(text, "tcp_open_total", **target) for text in (before[0], after[0])]
    assert opened[1] - opened[0] == 1
    # ... which sent each one on its own over mutual TLS, and each server's proxy handled each
    # stream it got (HTTP/2 per stream, not an opaque relay)
    sent = {"direction": "outbound", "dst_service": svc, "tls": "true", **ok}
    counts = [sample(text, "response_total", **sent) for text in (before[0], after[0])]
    assert counts[1] - counts[0] == 1000
    for pod, old, new in zip(servers, before[1:], after[1:], strict=True):
        got = sample(new, "response_total", direction="inbound", **ok)
        got -= sample(old, "response_total", direction="inbound", **ok)
        assert got == pods[pod], (pod, got, pods)


def test_100_mib_stream_through_bounded_proxy_memory(mesh: E2EMesh, app: App) -> None:
    sidecars = {pod: proxy_pid(pod) for pod in [app.client, *app.pods["ratings"]]}
    before = {}
    for pod, pid in sidecars.items():
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak RSS := current RSS
        before[pod] = memory_kib(pid, "VmRSS")
    # a client stream of 1,600 ratings with 64 KiB reviews: 100 MiB and a little more
    out = run(mesh, app.client, "big", target=f"ratings:{PORT}", count=1600, review=64 * 1024)
    assert out["count"] == 1600 and out["size"] == out["sent"] > 100 * MIB, out
    growth = {pod: memory_kib(pid, "VmHWM") - before[pod] for pod, pid in sidecars.items()}
    for pod, pid in sidecars.items():
        assert procs.running(pid), f"the sidecar of {pod} is gone"
    # both sidecars on the path (the client's and the serving pod's) stayed far below the payload
    assert out["pod"] in growth
    assert max(growth.values()) < 30 * 1024, growth


def test_grpc_failures_counted_by_status(mesh: E2EMesh, app: App) -> None:
    (server,) = app.pods["flaky"]
    before_client = responses(metrics(app, app.client), "outbound")
    before_server = responses(metrics(app, server), "inbound")
    # 200 calls for a known book: exactly 1 in 10 fails UNAVAILABLE (the server's schedule);
    # then 10 for a book that does not exist: 1 UNAVAILABLE, 9 NOT_FOUND
    out = run(mesh, app.client, "unary", target=f"flaky:{PORT}", calls=[[1, 200], [99, 10]])
    assert out["statuses"] == [{"OK": 180, "UNAVAILABLE": 20}, {"NOT_FOUND": 9, "UNAVAILABLE": 1}]
    expected = {("0", "success"): 180, ("14", "failure"): 21, ("5", "failure"): 9}
    assert delta(responses(metrics(app, app.client), "outbound"), before_client) == expected
    everything = responses(metrics(app, server), "inbound")
    assert delta(everything, before_server) == expected
    # weft stat (from the pods' inbound metrics) counts them too, the fixture's calls included
    calls, ok = sum(everything.values()), everything.get(("0", "success"), 0)

    def row() -> dict[str, Any] | None:
        raw = mesh.weft("stat", "deploy", "flaky", "-n", NS, "-t", "10m", "-o", "json").stdout
        rows = json.loads(raw)
        return rows[0] if rows and rows[0].get("requests") == calls else None

    stat = wait_for(row, f"weft stat to count {calls} calls", limit=30)
    assert stat["successes"] == ok and calls - ok >= 30, (stat, everything)


def test_grpcroute_splits_80_20(mesh: E2EMesh, app: App) -> None:
    target = f"ratings-split:{PORT}"
    out = run(mesh, app.client, "unary", target=target, calls=[[2, 1000]], concurrency=50)
    assert out["statuses"] == [{"OK": 1000}], out
    assert set(out["deploys"]) == {"ratings", "canary"}, out
    assert 150 <= out["deploys"]["canary"] <= 250, out  # 20% of 1,000, within 5 points


def test_retry_on_unavailable_hides_the_failures(mesh: E2EMesh, app: App) -> None:
    (server,) = app.pods["flaky"]
    before_client = metrics(app, app.client)
    before_server = responses(metrics(app, server), "inbound")
    target = f"flaky-retry:{PORT}"
    out = run(mesh, app.client, "unary", target=target, calls=[[3, 300]], concurrency=2)
    assert out["statuses"] == [{"OK": 300}], out
    received = delta(responses(metrics(app, server), "inbound"), before_server)
    failed = received.get(("14", "failure"), 0)
    # the server failed 1 in 10 of what it received, and every failure was retried
    assert received == {("0", "success"): 300, ("14", "failure"): failed}, received
    assert failed in ((300 + failed) // 10, (300 + failed) // 10 + 1), received
    after_client = metrics(app, app.client)
    route = {"direction": "outbound", "route": "default", "dst_service": "flaky-retry"}
    attempts = sample(after_client, "route_actual_response_total", grpc_status_code="14", **route)
    attempts -= sample(before_client, "route_actual_response_total", grpc_status_code="14", **route)
    assert attempts == failed
