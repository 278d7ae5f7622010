"""Meshed traffic on a real cluster: Weft's node agent as the kubelet of the rig's upstream
kube-apiserver, kube-controller-manager and kube-scheduler.

``weft node --kubeconfig`` registers the Node; the real scheduler binds the demo's pods to it; the
real API server calls ``weft injector`` (serving TLS) for each pod it creates, so the stored pods
carry the native sidecar and ``weft-init``; the agent runs them as network-namespace pods, as
their specs say: ``weft-init`` installs the iptables rules, the proxy starts and is ready before
the app, and the proxy gets its identity over the control plane's verified HTTPS API with the
projected token the real API server reviews. The control plane (``weft control --kubeconfig
--http-tls``) runs in the node's network namespace, as a host-network process; its Service is
reached through the agent's service rules. Then: every edge is mutual TLS between the workloads'
identities, ``weft stat`` counts exactly what a Job sent (and the Job completes: its sidecar
stops when the app is done), and stopping the agent removes everything it made.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube.conftest import KubeRig
from weft.install.inject import INIT_CONTAINER
from weft.runtime.local import kubepki, netrun
from weft.runtime.local.net import NODE_NETNS

pytestmark = [
    pytest.mark.timeout(420),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

DEMO = Path(__file__).resolve().parents[2] / "src" / "weft" / "demo" / "demo.yaml"
POD_CIDR = "10.246.0.0/16"
GATEWAY = "10.246.0.1"
EXACT = 200  # requests the Job sends
ACCOUNTS = ("web", "books", "authors", "traffic", "ratings", "ratings-traffic", "exact",
            "exact-load")  # fmt: skip

EXTRA = """
apiVersion: apps/v1
kind: Deployment
metadata: {{name: exact, namespace: {ns}, labels: {{app: exact}}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: exact}}}}
  template:
    metadata: {{labels: {{app: exact}}}}
    spec:
      serviceAccountName: exact
      containers:
        - name: exact
          image: weft/demo
          command: [python, -m, weft.demo.backend]
          env: [{{name: DEMO_NAME, value: books}}, {{name: FAILURE_RATE, value: "0.1"}}]
          ports: [{{name: http, containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: exact, namespace: {ns}}}
spec:
  selector: {{app: exact}}
  ports: [{{name: http, port: 8080, targetPort: http}}]
"""

JOB = """
apiVersion: batch/v1
kind: Job
metadata: {{name: exact-load, namespace: {ns}}}
spec:
  backoffLimit: 0
  template:
    spec:
      serviceAccountName: exact-load
      restartPolicy: Never
      containers:
        - name: load
          image: weft/demo
          command: [python, -m, weft.demo.traffic, --url, "http://exact:8080/",
                    --count, "{count}", --rate, "100", --json]
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Node:
    """The rig with Weft on it: node agent, control plane, injector (processes of the test)."""

    def __init__(self, rig: KubeRig, work: Path) -> None:
        self.rig = rig
        self.work = work
        self.name = f"weft-{uuid.uuid4().hex[:6]}"
        self.cp_ns = f"weft-cp-{uuid.uuid4().hex[:6]}"
        self.app_ns = f"weft-app-{uuid.uuid4().hex[:6]}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.webhook = f"weft-test-{uuid.uuid4().hex[:6]}"

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return self.rig.kubectl_run(*args, input=input, check=check)

    def weft(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "weft", *args], capture_output=True,
                              text=True, timeout=60, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    def start(self, name: str, argv: list[str], *, env: dict[str, str] | None = None) -> None:
        log = (self.work / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        log.close()

    def log(self, name: str) -> str:
        return (self.work / f"{name}.log").read_text(errors="replace")[-4000:]

    def alive(self, name: str) -> None:
        assert self.procs[name].poll() is None, f"{name} exited:\n{self.log(name)}"


def _wait(what: str, check: Any, within: float, node: Node, *names: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        for name in names:
            node.alive(name)
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n}\n{node.log(n)}" for n in names)
            raise AssertionError(f"{what} within {within:g} s\n{logs}")
        time.sleep(0.5)


@pytest.fixture
def node(kube_rig: KubeRig) -> Iterator[Node]:
    assert not netrun.netns_exists(NODE_NETNS), "a local mesh is running on this machine"
    work = Path(tempfile.mkdtemp(prefix="weft-node-", dir="/tmp"))
    n = Node(kube_rig, work)
    try:
        yield n
    finally:
        n.kubectl("delete", "mutatingwebhookconfiguration", n.webhook, "--ignore-not-found",
                  check=False)  # fmt: skip
        n.kubectl("delete", "namespace", n.app_ns, "--wait=false", "--ignore-not-found",
                  check=False)  # fmt: skip
        for name in ("injector", "control", "agent"):  # the agent last: it stops the pods
            if name in n.procs:
                _stop(n.procs[name])
        n.kubectl("delete", "node", n.name, "--ignore-not-found", check=False)
        n.kubectl("delete", "namespace", n.cp_ns, "--wait=false", "--ignore-not-found",
                  check=False)  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)
    # the agent removed what it made: no namespace, no route of its ranges left
    assert not netrun.netns_exists(NODE_NETNS)
    assert not [n for n in netrun.list_netns() if n.startswith("weft-")]
    assert not [r for r in netrun.weft_host_routes() if "10.246." in r]
    assert not Path("/etc/netns").exists() or any(Path("/etc/netns").iterdir())


def test_the_demo_runs_meshed_on_the_cluster_with_the_agent_as_its_kubelet(node: Node) -> None:
    rig, kubeconfig = node.rig, str(node.rig.kubeconfig)
    rig.kubectl_run("apply", "-f", "-", input=node.weft("install", "--crds", "--gateway-api"))
    # the node: registered, ready, the scheduler's
    node.start("agent", [sys.executable, "-m", "weft", "node", "--kubeconfig", kubeconfig,
                         "--node-name", node.name, "--pod-cidr", POD_CIDR,
                         "--state-dir", str(node.work / "node")])  # fmt: skip

    def ready() -> bool:
        out = node.kubectl("get", "node", node.name, "-o", "json", check=False)
        if not out:
            return False
        doc = json.loads(out)
        conditions = {c["type"]: c["status"] for c in doc["status"].get("conditions", [])}
        return conditions.get("Ready") == "True" and not doc["spec"].get("taints")

    _wait("the Node ready and untainted", ready, 90, node, "agent")
    # the control plane, in the node's network namespace, behind its Service
    cp = node.cp_ns
    node.kubectl("create", "namespace", cp)
    node.kubectl("create", "serviceaccount", "weft-control", "-n", cp)
    node.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "weft-control", "namespace": cp},
         "spec": {"ports": [{"name": "api", "port": 8086, "protocol": "TCP"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "weft-control-node", "namespace": cp,
                      "labels": {"kubernetes.io/service-name": "weft-control",
                                 "endpointslice.kubernetes.io/managed-by": "weft-test"}},
         "addressType": "IPv4", "ports": [{"name": "api", "port": 8086, "protocol": "TCP"}],
         "endpoints": [{"addresses": [GATEWAY], "conditions": {"ready": True}}]},
    ]))  # fmt: skip
    state = node.work / "control"
    node.start(
        "control",
        ["ip", "netns", "exec", NODE_NETNS, sys.executable, "-m", "weft", "control",
         "--kubeconfig", kubeconfig, "--http-listen", "0.0.0.0:8086", "--http-tls",
         "--state-dir", str(state), "--pod-cidr", POD_CIDR, "--scrape-interval", "1s"],
        env={"WEFT_POD_NAMESPACE": cp, "WEFT_POD_SERVICE_ACCOUNT": "weft-control"},
    )  # fmt: skip
    sock = state / "control.sock"

    def trust() -> str:
        done = subprocess.run(["curl", "-sf", "--max-time", "2", "--unix-socket", str(sock),
                               "http://weft/api/v1/identity/trust"],
                              capture_output=True, text=True, check=False)  # fmt: skip
        return str(json.loads(done.stdout)["trustAnchors"]) if done.returncode == 0 else ""

    anchors = node.work / "anchors.pem"
    anchors.write_text(_wait("the control plane's trust anchors", trust, 60, node, "control"))
    # the injector, called by the real API server for the app namespace's pods
    pki = kubepki.ensure(node.work / "pki")
    port = _port()
    node.start("injector", [
        sys.executable, "-m", "weft", "injector", "--kubeconfig", kubeconfig,
        "--listen", f"127.0.0.1:{port}", "--tls-cert", str(pki.server_cert),
        "--tls-key", str(pki.server_key),
        "--control", f"https://weft-control.{cp}.svc.cluster.local:8086",
        "--control-namespace", cp, "--control-trust-anchors-file", str(anchors),
    ])  # fmt: skip
    app = node.app_ns
    node.kubectl("apply", "-f", "-", input=yaml.safe_dump({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": node.webhook},
        "webhooks": [{
            "name": "inject.weft.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Ignore", "timeoutSeconds": 10,
            "clientConfig": {"url": f"https://127.0.0.1:{port}/inject",
                             "caBundle": base64.b64encode(pki.ca.read_bytes()).decode()},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": app}},
        }],
    }))  # fmt: skip

    def injector_ready() -> bool:
        done = subprocess.run(["curl", "-sfk", "--max-time", "2",
                               f"https://127.0.0.1:{port}/ready"], capture_output=True,
                              check=False)  # fmt: skip
        return done.returncode == 0

    _wait("the injector ready", injector_ready, 60, node, "injector")
    # the demo, applied with kubectl as a user would, in an annotated namespace
    node.kubectl("create", "namespace", app)
    node.kubectl("annotate", "namespace", app, "weft.io/inject=enabled")
    for account in ACCOUNTS:
        node.kubectl("create", "serviceaccount", account, "-n", app)
    demo = DEMO.read_text().replace("booksapp", app)
    node.kubectl("apply", "-f", "-", input=demo + "\n---\n" + EXTRA.format(ns=app))

    def pods() -> list[dict[str, Any]]:
        return list(json.loads(node.kubectl("get", "pods", "-n", app, "-o", "json"))["items"])

    def all_ready() -> list[dict[str, Any]]:
        items = pods()
        done = [p for p in items if any(c["type"] == "Ready" and c["status"] == "True"
                                        for c in p["status"].get("conditions", []))]  # fmt: skip
        return items if len(items) >= 8 and len(done) == len(items) else []

    running = _wait("every demo pod ready", all_ready, 180, node, "agent", "control", "injector")
    for pod in running:
        spec = pod["spec"]
        assert spec["nodeName"] == node.name  # the scheduler bound it to this node
        inits = [c["name"] for c in spec["initContainers"]]
        assert inits == [INIT_CONTAINER, "weft-proxy"], inits  # injected by the API server's call
        status = pod["status"]
        assert status["podIP"].startswith("10.246.") and status["hostIP"] == GATEWAY
        # reported as a kubelet reports it: weft-init done, the native sidecar running
        init, proxy = status["initContainerStatuses"]
        assert init["state"]["terminated"]["exitCode"] == 0 and "running" in proxy["state"]
        conditions = {c["type"]: c["status"] for c in status["conditions"]}
        assert conditions == {"PodScheduled": "True", "Initialized": "True",
                              "ContainersReady": "True", "Ready": "True"}  # fmt: skip
    # mutual TLS on every edge, between the workloads' identities
    ctl = ["--control", f"unix:{sock}", "-n", app]

    def edges() -> list[dict[str, Any]]:
        rows = json.loads(node.weft("edges", "deploy", *ctl, "-o", "json"))
        found = {(r["src"], r["dst"]) for r in rows}
        want = {("traffic", "web"), ("web", "books"), ("web", "authors"),
                ("ratings-traffic", "ratings")}  # fmt: skip
        return rows if want <= found else []

    for row in _wait("the demo's edges", edges, 60, node, "control"):
        assert row["secured"] is True, row
        assert row["client_id"] == f"{row['src']}.{app}.serviceaccount.identity.cluster.local"
    # exactly what a Job sent, counted; the Job completes (its native sidecar stops)
    node.kubectl("apply", "-f", "-", input=JOB.format(ns=app, count=EXACT))
    node.kubectl("wait", "--for=condition=complete", "job/exact-load", "-n", app,
                 "--timeout=120s")  # fmt: skip

    seen: list[Any] = []

    def counted() -> dict[str, Any] | None:
        rows = json.loads(node.weft("stat", "deploy", "exact", *ctl, "-o", "json"))
        seen[:] = rows
        return rows[0] if rows and rows[0].get("requests") == EXACT else None

    try:
        row = _wait("weft stat counting the Job's requests", counted, 30, node, "control")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nlast rows: {seen}") from None
    assert row["successes"] == EXACT * 9 // 10 and row["meshed"] == "1/1"
    # the client saw the same: its summary, in the container's log on the node
    (summary,) = (node.work / "node" / "pods" / app).glob("exact-load-*/load.log")
    report = json.loads(summary.read_text().strip().splitlines()[-1])
    assert report["requests"] == EXACT and report["ok"] == EXACT * 9 // 10, report
    # weft-init ran the one rule generator in each pod
    (init_log,) = (node.work / "node" / "pods" / app).glob("web-*/weft-init.log")
    assert "traffic redirected through the proxy" in init_log.read_text()
