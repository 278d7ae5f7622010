"""``weft install``, ``weft upgrade`` and ``weft uninstall`` against the real API server, and the
control plane's leader election over a real Lease (two electors, and two control planes of which
only the leader writes route statuses).

Install: every object of ``weft install --crds`` and ``weft install`` is accepted by
``kubectl apply``; the real kube-controller-manager makes the control plane's pods from its
Deployments (the rig has no scheduler or kubelet, so they stay Pending: what runs them is the
node agent's part). Upgrade: read back from the cluster, the same version prints the same
bytes; a value given to an upgrade is kept by the next one. Uninstall: everything goes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube.conftest import Kube, KubeRig
from weft.control.config import ControlConfig
from weft.control.incluster import ClusterControlPlane, LeaderWriter
from weft.control.kube.client import connect
from weft.control.kube.leader import LeaderElector
from weft.testing import wait_until


def weft(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "weft", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def apply(rig: KubeRig, text: str) -> list[str]:
    out = rig.kubectl_run("apply", "-f", "-", input=text)
    return [line for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def installed(kube_rig: KubeRig) -> Iterator[str]:
    """Weft installed (CRDs, then the control plane); uninstalled after the module."""
    apply(kube_rig, weft("install", "--crds"))
    text = weft("install")
    try:
        lines = apply(kube_rig, text)
        docs = [d for d in yaml.safe_load_all(text) if d]
        assert len(lines) == len(docs), lines  # every object accepted
        assert all(line.endswith(("created", "configured", "unchanged")) for line in lines)
        yield text
    finally:
        subprocess.run(
            [str(kube_rig.kubectl), "--kubeconfig", str(kube_rig.kubeconfig), "delete", "-f", "-",
             "--ignore-not-found", "--wait=false"],
            input=weft("uninstall", "--keep-crds"), capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip


def test_upgrade_says_when_weft_is_not_installed(kube: Kube) -> None:
    # first in the module: the control plane is installed by the tests after it
    done = subprocess.run(
        [sys.executable, "-m", "weft", "upgrade", "--kubeconfig", str(kube.kubeconfig)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1 and "not installed" in done.stderr, done.stderr
    assert done.stdout == ""


def check(kube_rig: KubeRig, *args: str) -> tuple[int, dict[str, dict[str, dict[str, str]]]]:
    """``weft check --kubeconfig RIG -o json``: the exit code, and category -> check -> check."""
    done = subprocess.run(
        [sys.executable, "-m", "weft", "check", "--kubeconfig", str(kube_rig.kubeconfig),
         "-o", "json", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    report = json.loads(done.stdout)
    assert report["success"] == (done.returncode == 0)
    return done.returncode, {
        cat["categoryName"]: {c["description"]: c for c in cat["checks"]}
        for cat in report["categories"]
    }


def test_check_pre_passes_before_install(kube_rig: KubeRig) -> None:
    # before the module's install (the tests after this one install Weft)
    code, report = check(kube_rig, "--pre")
    assert code == 0, report
    assert report["kubernetes-version"]["is running a supported Kubernetes version"]["detail"] == (
        "1.37"
    )
    assert report["pre-install"]["can create mutatingwebhookconfigurations"]["result"] == "success"


def test_check_says_what_is_wrong_with_an_installation_that_cannot_run(
    kube: Kube, kube_rig: KubeRig, installed: str
) -> None:
    # the rig has no kubelet: the control plane's pods never run, so the injector is down; a
    # pod made meanwhile in an injected namespace is created unmeshed (failurePolicy Ignore)
    kube.kubectl("annotate", "namespace", kube.namespace, "weft.io/inject=enabled")
    kube.kubectl("run", "web", "-n", kube.namespace, "--image=registry.invalid/web:1")
    code, report = check(kube_rig)
    assert code == 1
    existence = report["weft-existence"]
    assert existence["Weft's CRDs are installed"]["result"] == "success"
    assert existence["Weft's CRDs are current"]["result"] == "success"
    control = existence["deployment weft-control is ready"]
    assert control["result"] == "error" and control["detail"].startswith("0/")
    webhook = report["weft-webhook"]
    assert webhook["the webhook trusts the injector's certificate"]["result"] == "success"
    assert webhook["the injector answers through the API server"]["result"] == "error"
    assert report["weft-identity"]["issuer is valid"]["result"] == "success"
    unmeshed = report["weft-data-plane"]["pods meant to be meshed have a proxy"]
    assert unmeshed["result"] == "error" and f"{kube.namespace}/web" in unmeshed["detail"]
    assert "injector was down" in unmeshed["hint"]


async def test_the_control_plane_is_accepted_and_its_pods_are_made(
    kube_rig: KubeRig, installed: str
) -> None:
    for _ in range(300):
        out = kube_rig.kubectl_run("get", "pods", "-n", "weft-system", "-o", "json")
        pods = json.loads(out)["items"]
        components = {p["metadata"]["labels"].get("weft.io/control-plane-component") for p in pods}
        if components >= {"control", "injector"}:
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError(f"the controller manager made no control plane pods: {pods}")
    control = next(p for p in pods if p["metadata"]["labels"]["weft.io/control-plane-component"]
                   == "control")  # fmt: skip
    assert control["spec"]["serviceAccountName"] == "weft-control"
    # not injected: its namespace and the webhook's object selector both exclude it
    assert [c["name"] for c in control["spec"]["containers"]] == ["control"]
    out = kube_rig.kubectl_run(
        "get", "mutatingwebhookconfiguration", "weft-proxy-injector", "-o", "json"
    )
    hook = json.loads(out)
    assert hook["webhooks"][0]["failurePolicy"] == "Ignore"
    # least privilege, as the API server decides it
    can = kube_rig.kubectl_run(
        "auth", "can-i", "--list", "--as=system:serviceaccount:weft-system:weft-injector"
    )
    assert "namespaces" in can and "secrets" not in can
    denied = kube_rig.kubectl_run(
        "auth", "can-i", "get", "secrets", "-n", "weft-system",
        "--as=system:serviceaccount:weft-system:weft-control", check=False,
    )  # fmt: skip
    assert denied.strip() == "no"


def test_inject_reads_the_installation_as_linkerd_inject_does(
    kube_rig: KubeRig, installed: str
) -> None:
    app = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
           "spec": {"containers": [{"name": "web", "image": "web:1"}]}}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "weft", "inject", "-f", "-", "--kubeconfig",
         str(kube_rig.kubeconfig)],
        input=json.dumps(app), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    pod = yaml.safe_load(done.stdout)
    proxy = next(c for c in pod["spec"]["initContainers"] if c["name"] == "weft-proxy")
    roots = json.loads(kube_rig.kubectl_run(
        "get", "configmap", "weft-identity-trust-roots", "-n", "weft-system", "-o", "json"
    ))  # fmt: skip
    env = {e["name"]: e.get("value") for e in proxy["env"]}
    assert env["WEFT_PROXY_CONTROL_TRUST_ANCHORS"] == roots["data"]["ca-bundle.crt"]
    args = proxy["args"]
    assert args[args.index("--control") + 1] == (
        "https://weft-control.weft-system.svc.cluster.local:8086"
    )
    # the installed control plane serves what those proxies expect: HTTPS as its identity
    deployment = json.loads(kube_rig.kubectl_run(
        "get", "deployment", "weft-control", "-n", "weft-system", "-o", "json"
    ))  # fmt: skip
    control = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--http-tls" in control["args"]
    assert control["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"


def test_upgrade_reads_the_installation_back_and_keeps_what_was_given(
    kube_rig: KubeRig, installed: str
) -> None:
    kubeconfig = str(kube_rig.kubeconfig)
    again = weft("upgrade", "--kubeconfig", kubeconfig)
    assert again == installed  # the same version and cluster: the same bytes
    changed = weft("upgrade", "--kubeconfig", kubeconfig, "--proxy-log-level", "debug")
    assert changed != installed
    apply(kube_rig, changed)
    kept = weft("upgrade", "--kubeconfig", kubeconfig)
    assert kept == changed
    config = json.loads(
        kube_rig.kubectl_run("get", "configmap", "weft-config", "-n", "weft-system", "-o", "json")
    )
    assert yaml.safe_load(config["data"]["values.yaml"]) == {"proxy-log-level": "debug"}


async def test_one_replica_leads_and_another_takes_over(kube: Kube) -> None:
    name = f"lease-{uuid.uuid4().hex[:6]}"
    changes: list[tuple[str, bool]] = []

    def record(ident: str, leading: bool) -> None:
        changes.append((ident, leading))

    clients = [connect(kube.kubeconfig) for _ in range(2)]
    electors = [
        LeaderElector(
            client,
            namespace=kube.namespace,
            name=name,
            identity=ident,
            lease_duration=3.0,
            renew_deadline=2.0,
            retry=0.3,
            on_change=functools.partial(record, ident),
        )
        for client, ident in zip(clients, ("a", "b"), strict=True)
    ]
    try:
        a, b = electors
        a.start()
        for _ in range(100):
            if a.leading:
                break
            await asyncio.sleep(0.1)
        assert a.leading
        b.start()
        await asyncio.sleep(1.5)
        assert a.leading and not b.leading  # never two leaders
        await a.stop()  # a clean stop releases the Lease: b takes it at its next try
        for _ in range(30):
            if b.leading:
                break
            await asyncio.sleep(0.1)
        assert b.leading, b.last_error
        assert changes == [("a", True), ("a", False), ("b", True)]
        lease = json.loads(kube.kubectl("get", "lease", name, "-n", kube.namespace, "-o", "json"))
        assert lease["spec"]["holderIdentity"] == "b"
        assert lease["spec"]["leaseTransitions"] >= 1
        # b dies without releasing: a waits out the lease duration, then takes it
        assert b._task is not None
        b._task.cancel()
        a.start()
        await asyncio.sleep(1.0)
        assert not a.leading
        for _ in range(60):
            if a.leading:
                break
            await asyncio.sleep(0.1)
        assert a.leading
    finally:
        for e in electors:
            await e.stop()
        for c in clients:
            await c.close()


@pytest.fixture(scope="module")
def gateway_api(kube_rig: KubeRig) -> Iterator[None]:
    """Gateway API's CRDs as ``weft install --crds --gateway-api`` prints them (Weft's own
    included), for the module; the Gateway API ones deleted after."""
    text = weft("install", "--crds", "--gateway-api")
    apply(kube_rig, text)
    names = ["crd/httproutes.gateway.networking.k8s.io", "crd/grpcroutes.gateway.networking.k8s.io"]
    kube_rig.kubectl_run("wait", "--for=condition=Established", "--timeout=60s", *names)
    try:
        yield
    finally:
        subprocess.run(
            [str(kube_rig.kubectl), "--kubeconfig", str(kube_rig.kubeconfig), "delete",
             "--wait=false", "--ignore-not-found", *names],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip


async def test_replicas_elect_one_writer_of_route_statuses(
    kube: Kube, gateway_api: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two control planes with --leader-elect on the real API server: both ready and serving,
    one writes the route's status; when it stops, the other takes over and writes the next."""
    ns = kube.namespace
    monkeypatch.setenv("WEFT_POD_NAMESPACE", ns)  # the Lease lives in the test's namespace
    planes: list[ClusterControlPlane] = []
    for name in ("control-a", "control-b"):
        monkeypatch.setenv("WEFT_POD_NAME", name)
        config = ControlConfig(state_dir=str(tmp_path / name), kubeconfig=str(kube.kubeconfig),
                               leader_elect=True)  # fmt: skip
        planes.append(ClusterControlPlane(config))
    a, b = planes
    try:
        await a.start()
        await wait_until(lambda: a.leader is not None and a.leader.leading, within=10)
        await b.start()
        assert a.api.not_ready() is None and b.api.not_ready() is None  # both serve the proxies
        route: dict[str, Any] = {
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                     "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]},
        }  # fmt: skip
        service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web",
                   "namespace": ns}, "spec": {"ports": [{"port": 80}]}}  # fmt: skip
        kube.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                         "items": [service, route]}))  # fmt: skip

        def status() -> dict[str, Any]:
            out = kube.kubectl("get", "httproute", "web", "-n", ns, "-o", "json")
            return dict(json.loads(out).get("status") or {})

        def accepted(generation: int) -> bool:
            for parent in status().get("parents") or []:
                for cond in parent.get("conditions") or []:
                    if cond["type"] == "Accepted" and cond.get("observedGeneration") == generation:
                        return bool(cond["status"] == "True")
            return False

        await wait_until(lambda: accepted(1), within=20)
        writer = b.route_status._writer
        assert isinstance(writer, LeaderWriter)
        await wait_until(lambda: writer.dropped >= 1, within=10)  # b computed it, did not write
        assert b.leader is not None and not b.leader.leading
        await a.stop(grace=0.5)  # releases the Lease
        await wait_until(lambda: b.leader is not None and b.leader.leading, within=10)
        route["spec"]["rules"][0]["matches"] = [{"path": {"type": "PathPrefix", "value": "/v2"}}]
        kube.kubectl("apply", "-f", "-", input=json.dumps(route))
        await wait_until(lambda: accepted(2), within=20)  # written by b, the new leader
    finally:
        for p in planes:
            with contextlib.suppress(Exception):
                await p.stop(grace=0.5)


def test_check_answers_for_a_user_who_may_read_nothing_and_an_api_that_is_away(
    kube: Kube, kube_rig: KubeRig, tmp_path: Path
) -> None:
    kube.kubectl("create", "serviceaccount", "nobody", "-n", kube.namespace)
    token = kube.kubectl("create", "token", "nobody", "-n", kube.namespace).strip()
    config = yaml.safe_load(kube_rig.kubeconfig.read_text())
    config["users"] = [{"name": "nobody", "user": {"token": token}}]
    for ctx in config["contexts"]:
        ctx["context"]["user"] = "nobody"
    nobody = tmp_path / "nobody.kubeconfig"
    nobody.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "weft", "check", "--kubeconfig", str(nobody)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "✘" in done.stdout and "forbidden" in done.stdout.lower(), done.stdout
    # the API server away: one clear failure
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = "https://127.0.0.1:9"
    away = tmp_path / "away.kubeconfig"
    away.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "weft", "check", "--kubeconfig", str(away), "-o", "json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    (category,) = json.loads(done.stdout)["categories"]
    assert category["categoryName"] == "kubernetes-api"
    assert category["checks"][0]["result"] == "error"


def test_check_reports_a_category_it_may_not_read_and_goes_on(
    kube: Kube, kube_rig: KubeRig, installed: str, tmp_path: Path
) -> None:
    """A user who may read Weft's installation but not list pods: the data-plane category says
    so as one failed check; the categories before it are checked as usual."""
    ns, sa = kube.namespace, "reader"
    kube.kubectl("create", "serviceaccount", sa, "-n", ns)
    who = f"system:serviceaccount:{ns}:{sa}"
    role = f"weft-reader-{ns}"
    kube_rig.kubectl_run("create", "clusterrole", role, "--verb=get,list",
                         "--resource=namespaces,customresourcedefinitions.apiextensions.k8s.io,"
                         "mutatingwebhookconfigurations.admissionregistration.k8s.io,"
                         "deployments.apps,configmaps,secrets")  # fmt: skip
    try:
        kube_rig.kubectl_run("create", "clusterrolebinding", role, f"--clusterrole={role}",
                             f"--user={who}")  # fmt: skip
        token = kube.kubectl("create", "token", sa, "-n", ns).strip()
        config = yaml.safe_load(kube_rig.kubeconfig.read_text())
        config["users"] = [{"name": sa, "user": {"token": token}}]
        for ctx in config["contexts"]:
            ctx["context"]["user"] = sa
        reader = tmp_path / "reader.kubeconfig"
        reader.write_text(yaml.safe_dump(config))
        done = subprocess.run(
            [sys.executable, "-m", "weft", "check", "--kubeconfig", str(reader), "-o", "json"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert "Traceback" not in done.stderr, done.stderr
        report = {c["categoryName"]: c["checks"] for c in json.loads(done.stdout)["categories"]}
        assert report["weft-existence"][0]["result"] == "success"  # the namespace
        (data_plane,) = report["weft-data-plane"]
        assert data_plane["result"] == "error" and "403" in data_plane["detail"], data_plane
    finally:
        kube_rig.kubectl_run("delete", "clusterrolebinding", role, "--ignore-not-found")
        kube_rig.kubectl_run("delete", "clusterrole", role, "--ignore-not-found")
