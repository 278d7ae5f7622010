"""E2E (issue 12): a server-speaks-first app on a port that is not opaque, between meshed pods,
over mutual TLS: every connection gets its greeting, with no detection stall.

Pods: ``client`` (sleeps; the test runs its load from inside it) and ``greeter``, an app that
writes a banner as soon as it accepts on 2525 (not one of the default opaque ports) and then
echoes. Before the mesh transport, the greeter's proxy dialed the app as it accepted and the
banner could arrive before the client proxy's ClientHello: the banner then went out in plaintext
to a proxy in the middle of a TLS handshake (5 of 100 connections lost on a loaded machine).
Timing decides whether that race shows here; tests/integration/test_proxy_mesh_transport.py
makes the ClientHello late on every connection to show it deterministically.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from meshlib import E2EMesh, wait_for

NS = "serverfirst"
TD = "cluster.local"
CLIENT_ID = f"client.{NS}.serviceaccount.identity.{TD}"
GREETER_ID = f"greeter.{NS}.serviceaccount.identity.{TD}"
BANNER = "220 greeter ready"

GREETER = textwrap.dedent(
    """
    import socket, threading
    def serve(conn):
        with conn:
            conn.sendall(b"220 greeter ready\\r\\n")
            while data := conn.recv(65536):
                conn.sendall(data)
    srv = socket.create_server(("0.0.0.0", 2525), backlog=512)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
    """
)

MANIFEST = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: client, namespace: {NS}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: client}}}}
  template:
    metadata: {{labels: {{app: client}}}}
    spec:
      serviceAccountName: client
      terminationGracePeriodSeconds: 1
      containers: [{{name: client, command: [sleep, "3600"]}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: greeter, namespace: {NS}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: greeter}}}}
  template:
    metadata: {{labels: {{app: greeter}}}}
    spec:
      serviceAccountName: greeter
      terminationGracePeriodSeconds: 1
      containers:
        - name: greeter
          command: [python, -c, {json.dumps(GREETER)}]
          ports: [{{name: smtpish, containerPort: 2525}}]
          readinessProbe: {{tcpSocket: {{port: 2525}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: greeter, namespace: {NS}}}
spec:
  selector: {{app: greeter}}
  ports: [{{name: smtpish, port: 2525, targetPort: smtpish}}]
"""

# From inside the client pod: N connections to greeter:2525, P at a time; each must get the
# banner, then its line echoed. Prints the outcome as JSON.
LOAD = textwrap.dedent(
    """
    import json, socket, sys, time
    from concurrent.futures import ThreadPoolExecutor
    host, n, parallel = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    banner = b"220 greeter ready\\r\\n"
    def read(sock, size):
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk: break
            data += chunk
        return data
    def one(i):
        start = time.monotonic()
        try:
            with socket.create_connection((host, 2525), timeout=30) as s:
                got = read(s, len(banner))
                if got != banner:
                    return (False, repr(got), 0.0)
                waited = time.monotonic() - start
                line = b"hello %d\\n" % i
                s.sendall(line)
                echo = read(s, len(line))
                return (echo == line, repr(echo), waited)
        except OSError as exc:
            return (False, type(exc).__name__ + ": " + str(exc), 0.0)
    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(one, range(n)))
    failures = [r[1] for r in results if not r[0]]
    print(json.dumps({"ok": n - len(failures), "failed": len(failures),
                      "samples": failures[:5], "max_wait": max(r[2] for r in results)}))
    """
)


@pytest.fixture(scope="module")
def pods(mesh: E2EMesh) -> Iterator[dict[str, str]]:
    mesh.apply(MANIFEST)
    for name in ("client", "greeter"):
        mesh.wait_rolled_out(name, 1, NS, limit=90)
    yield {name: mesh.pods(name, NS)[0]["metadata"]["name"] for name in ("client", "greeter")}


def counter(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_greeting_server_on_a_detected_port_greets_every_meshed_client(
    mesh: E2EMesh, pods: dict[str, str]
) -> None:
    n = 1000
    out = mesh.exec(pods["client"], "python", "-c", LOAD, "greeter", str(n), "20",
                    namespace=NS, timeout=600).stdout  # fmt: skip
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    assert result["ok"] == n and result["failed"] == 0, result
    # no detection stall: a stalled connection would wait out the 10 s detection timeout
    assert result["max_wait"] < 8.0, result

    # every one of them was mutual TLS, as both proxies count it
    scrape = ("curl", "-s", "http://127.0.0.1:4191/metrics")
    server = mesh.exec(pods["greeter"], *scrape, namespace=NS).stdout
    inbound = {"direction": "inbound", "peer": "src"}
    assert counter(server, "tcp_open_total", tls="true", client_id=CLIENT_ID, **inbound) >= n
    assert counter(server, "tcp_open_total", tls="no_identity", **inbound) == 0
    client = mesh.exec(pods["client"], *scrape, namespace=NS).stdout
    outbound = {"direction": "outbound", "peer": "dst", "dst_service": "greeter"}
    assert counter(client, "tcp_open_total", tls="true", server_id=GREETER_ID, **outbound) >= n

    # and weft edges says so, from the metrics the control plane scrapes
    def edge() -> dict[str, Any] | None:
        proc = mesh.weft("edges", "deploy", "-n", NS, "-o", "json", "-t", "10m")
        data = json.loads(proc.stdout)
        rows = data if isinstance(data, list) else data.get("rows", [])
        for row in rows:
            ours = row.get("src") == "client" and row.get("dst") == "greeter"
            if ours and row.get("connections", 0) >= n:
                return dict(row)
        return None

    row = wait_for(edge, "weft edges to show the client -> greeter connections", limit=90)
    assert row["secured"] is True, row
    assert row["client_id"] == CLIENT_ID and row["server_id"] == GREETER_ID, row
