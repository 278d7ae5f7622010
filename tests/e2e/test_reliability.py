"""E2E (issue 5): retries within budgets, timeouts, canary splits with live weight changes, header
routing, circuit breaking and refused features, in real pods configured with HTTPRoutes and
annotations through the control plane."""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest
from meshlib import E2EMesh, wait_for

NS = "rel"

MANIFEST = (
    """
apiVersion: v1
kind: Namespace
metadata: {name: rel}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: rel}
spec:
  replicas: 1
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: client, command: [sleep, "3600"]}]
"""
    + "".join(
        f"""
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: rel}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{deploy: {name}}}}}
  template:
    metadata: {{labels: {{app: {app}, deploy: {name}}}}}
    spec:
      containers:
        - name: app
          command: [python, -m, weft.demo.backend]
          env: [{{name: FAILURE_RATE, value: "{rate}"}}, {{name: LATENCY_MS, value: "{latency}"}}]
          ports: [{{name: http, containerPort: 8080}}]
"""
        for name, app, replicas, rate, latency in (
            ("flaky", "flaky", 1, "0.3", "0"),
            ("broken", "broken", 1, "1", "0"),
            ("slow", "slow", 1, "0", "1000"),
            ("stable", "stable", 1, "0", "0"),
            ("canary", "canary", 1, "0", "0"),
            ("pool-good", "pool", 2, "0", "0"),
            ("pool-bad", "pool", 1, "1", "0"),
        )
    )
    + "".join(
        f"""
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: rel
  annotations: {annotations}
spec:
  selector: {{app: {app}}}
  ports: [{{name: http, port: 8080, targetPort: http}}]
"""
        for name, app, annotations in (
            ("flaky", "flaky", "{retry.weft.io/http: 5xx, retry.weft.io/limit: '3'}"),
            ("broken", "broken", "{retry.weft.io/http: 5xx, retry.weft.io/limit: '3'}"),
            ("slow", "slow", "{timeout.weft.io/request: 200ms}"),
            ("stable", "stable", "{}"),
            ("canary", "canary", "{}"),
            ("web", "stable", "{}"),
            (
                "pool",
                "pool",
                "{failure-accrual.weft.io/consecutive: 'max-failures=3,min-penalty=30s,"
                "max-penalty=60s,jitter=0'}",
            ),
        )
    )
)


def split_route(canary_weight: int) -> str:
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web-split, namespace: rel}}
spec:
  parentRefs: [{{group: core, kind: Service, name: web, port: 8080}}]
  rules:
    - matches: [{{headers: [{{name: x-canary, value: "1"}}]}}]
      backendRefs: [{{name: canary, port: 8080}}]
    - backendRefs:
        - {{name: stable, port: 8080, weight: {100 - canary_weight}}}
        - {{name: canary, port: 8080, weight: {canary_weight}}}
"""


# A load client run inside the client pod: N requests over keep-alive connections, counting
# statuses and which service answered (the demo backend names its pod).
CLIENT = textwrap.dedent(
    """
    import http.client, json, sys, time, threading
    url_host, port, path, n, method, conc = sys.argv[1], int(sys.argv[2]), sys.argv[3], \\
        int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
    extra = json.loads(sys.argv[7]) if len(sys.argv) > 7 else {}
    out = {"statuses": {}, "deploys": {}, "errors": 0, "latencies": []}
    lock = threading.Lock()
    def worker(count):
        conn = http.client.HTTPConnection(url_host, port, timeout=10)
        for _ in range(count):
            t0 = time.monotonic()
            try:
                conn.request(method, path, body=b"x" if method == "POST" else None, headers=extra)
                r = conn.getresponse(); body = r.read()
            except Exception:
                with lock: out["errors"] += 1
                conn.close(); conn = http.client.HTTPConnection(url_host, port, timeout=10)
                continue
            dt = time.monotonic() - t0
            pod = ""
            try: pod = json.loads(body).get("pod", "")
            except Exception: pass
            with lock:
                out["statuses"][str(r.status)] = out["statuses"].get(str(r.status), 0) + 1
                deploy = pod.rsplit("-", 2)[0] if pod else "-"
                out["deploys"][deploy] = out["deploys"].get(deploy, 0) + 1
                out["latencies"].append(dt)
    per = [n // conc + (1 if i < n % conc else 0) for i in range(conc)]
    ts = [threading.Thread(target=worker, args=(c,)) for c in per]
    [t.start() for t in ts]; [t.join() for t in ts]
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def rel(mesh: E2EMesh) -> Iterator[str]:
    mesh.apply(MANIFEST)
    mesh.apply(split_route(10))
    for name, n in (("client", 1), ("flaky", 1), ("broken", 1), ("slow", 1), ("stable", 1),
                    ("canary", 1), ("pool-good", 2), ("pool-bad", 1)):  # fmt: skip
        mesh.wait_rolled_out(name, n, NS, limit=90)
    (pod,) = mesh.pods("client", NS)
    yield pod["metadata"]["name"]


def load(mesh: E2EMesh, client: str, svc: str, n: int, *, method: str = "GET",
         conc: int = 4, headers: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    argv = ["python", "-c", CLIENT, svc, "8080", "/", str(n), method, str(conc)]
    if headers:
        argv.append(json.dumps(headers))
    out = mesh.exec(client, *argv, namespace=NS, timeout=240).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def inbound_requests(mesh: E2EMesh, deploy: str) -> int:
    """Requests the deployment's pods received, from their own proxies' inbound metrics."""
    total = 0
    for pod in mesh.pods(deploy, NS):
        text = mesh.exec(pod["metadata"]["name"], "curl", "-s", "http://127.0.0.1:4191/metrics",
                         namespace=NS).stdout  # fmt: skip
        for line in text.splitlines():
            if line.startswith("request_total{") and 'direction="inbound"' in line:
                total += int(float(line.rsplit(" ", 1)[1]))
    return total


def test_retries_hide_a_30_percent_failure_rate(mesh: E2EMesh, rel: str) -> None:
    result = load(mesh, rel, "flaky", 300, conc=2)
    ok = result["statuses"].get("200", 0)
    assert result["errors"] == 0
    assert ok / 300 >= 0.99, result["statuses"]
    # the retries are real: the pod answered more requests than the client sent
    assert inbound_requests(mesh, "flaky") > 300


def test_failing_backend_gets_at_most_the_budgets_extra_load(mesh: E2EMesh, rel: str) -> None:
    t0 = time.monotonic()
    result = load(mesh, rel, "broken", 400, conc=4)
    elapsed = time.monotonic() - t0
    assert result["statuses"] == {"500": 400}
    received = inbound_requests(mesh, "broken")
    # default budget: 20% of requests plus 10 retries per second (over a 10 s window)
    assert received <= 400 * 1.2 + 10 * (elapsed + 10), received
    assert received < 400 * 4  # far from limit+1 attempts per request


def test_slow_backend_hits_the_request_timeout(mesh: E2EMesh, rel: str) -> None:
    result = load(mesh, rel, "slow", 5, conc=1)
    assert result["statuses"] == {"504": 5}
    median = sorted(result["latencies"])[2]
    assert 0.2 <= median < 0.25, result["latencies"]  # the 200 ms timeout, within 50 ms


def test_post_without_route_retry_configuration_is_never_retried(mesh: E2EMesh, rel: str) -> None:
    before = inbound_requests(mesh, "flaky")
    result = load(mesh, rel, "flaky", 50, method="POST", conc=1)
    assert inbound_requests(mesh, "flaky") - before == 50  # one attempt per POST
    assert result["statuses"].get("500", 0) > 0  # so failures reached the client


def test_canary_split_accuracy_header_routing_and_live_weights(mesh: E2EMesh, rel: str) -> None:
    result = load(mesh, rel, "web", 10000, conc=8)
    assert result["errors"] == 0 and result["statuses"] == {"200": 10000}
    share = result["deploys"].get("canary", 0) / 10000
    assert abs(share - 0.10) <= 0.03, result["deploys"]
    marked = load(mesh, rel, "web", 20, conc=1, headers={"x-canary": "1"})
    assert marked["deploys"] == {"canary": 20}
    # live changes under load: 0 -> 10 -> 50 -> 100 %, no request fails
    argv = [*mesh_exec_argv(mesh, rel), "python", "-c", CLIENT, "web", "8080", "/", "3000"]
    proc = subprocess.Popen(
        [*argv, "GET", "4"], env=mesh.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    for weight in (0, 10, 50, 100):
        mesh.apply(split_route(weight))
        time.sleep(0.5)
    out, err = proc.communicate(timeout=240)
    during = json.loads(out.strip().splitlines()[-1])
    assert during["errors"] == 0 and set(during["statuses"]) == {"200"}, (during, err)
    after = load(mesh, rel, "web", 200, conc=2)
    assert after["deploys"] == {"canary": 200}


def mesh_exec_argv(mesh: E2EMesh, pod: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "weft", "exec", "-n", NS, pod, "--"]


def test_bad_replica_is_ejected_and_success_recovers(mesh: E2EMesh, rel: str) -> None:
    warm = load(mesh, rel, "pool", 100, conc=1)
    assert warm["statuses"].get("500", 0) <= 3  # ejected after 3 consecutive failures
    result = load(mesh, rel, "pool", 2000, conc=4)
    ok = result["statuses"].get("200", 0)
    assert ok / 2000 >= 0.999, result["statuses"]


def test_unsupported_filter_is_refused_with_its_name(mesh: E2EMesh, rel: str) -> None:
    route = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mirror, namespace: rel}
spec:
  parentRefs: [{group: core, kind: Service, name: web, port: 8080}]
  rules:
    - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: canary, port: 8080}}}]
      backendRefs: [{name: stable, port: 8080}]
"""
    proc = mesh.apply(route, check=False)
    assert proc.returncode != 0
    assert "RequestMirror" in proc.stderr + proc.stdout
    assert "spec.rules[0].filters[0]" in proc.stderr + proc.stdout
    routes = mesh.weft("get", "httproute", "-n", NS, "-o", "json").stdout
    assert "mirror" not in [r["metadata"]["name"] for r in json.loads(routes)["items"]]


def test_route_status_and_weft_routes(mesh: E2EMesh, rel: str) -> None:
    out = mesh.weft("get", "httproute", "web-split", "-n", NS).stdout
    assert "web-split" in out and "True" in out
    wait_for(
        lambda: "web-split" in mesh.weft("routes", "web", "-n", NS).stdout,
        "weft routes to show the route",
        limit=30,
    )
    wide = mesh.weft("routes", "web", "-n", NS, "-o", "wide").stdout
    assert "EFFECTIVE_SUCCESS" in wide and "ACTUAL_RPS" in wide
