"""The node agent as a cluster's kubelet, sans-I/O: what it runs for an injected Pod as the API
server stores it (order, environment, volumes, refusals naming the field), the status it reports,
the Node it registers, the service rules it installs, and the API server it relays to."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weft.identity.ca import Authority, cert_pem
from weft.install.inject import InjectConfig, inject_template
from weft.resources import pods
from weft.resources.models import Pod
from weft.runtime.local import kubepod
from weft.runtime.local.clusternode import loopback_server
from weft.runtime.local.kubenode import AGENT_LABEL, node_object, node_status
from weft.runtime.local.kubeservices import CHAIN, endpoints, hooks, service_rules
from weft.runtime.local.podplan import PodSpecError

ANCHORS = cert_pem(Authority.new_anchor("cluster.local", now=1.8e9).cert).decode()
POD_DIR = Path("/run/weft-node/pods/shop/web-1")


def stored_pod(**spec: Any) -> dict[str, Any]:
    """A Deployment's pod as the API server stores it once the injector meshed it: defaulted
    fields, the service-account volume, the injected containers."""
    template: dict[str, Any] = {
        "metadata": {"labels": {"app": "web"}, "annotations": {}},
        "spec": {
            "serviceAccountName": "web",
            "containers": [{
                "name": "web", "image": "weft/demo", "command": ["python", "-m", "weft.demo.web"],
                "args": ["--port", "$(PORT)"],
                "env": [{"name": "PORT", "value": "8080"},
                        {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                "resources": {}, "terminationMessagePath": "/dev/termination-log",
                "imagePullPolicy": "IfNotPresent",
                "volumeMounts": [{"name": "kube-api-access-x1",
                                  "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
            }],
            "volumes": [{"name": "kube-api-access-x1", "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt"}}]}}],
            "terminationGracePeriodSeconds": 40, "dnsPolicy": "ClusterFirst",
            "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerPriority", "priority": 0,
            "schedulerName": "default-scheduler", "tolerations": [], **spec,
        },
    }  # fmt: skip
    assert inject_template(template, InjectConfig(trust_anchors=ANCHORS), namespace="shop").changed
    template["metadata"].update(name="web-1", namespace="shop", uid="u-1", resourceVersion="7")
    template["spec"]["nodeName"] = "node-1"
    return {"apiVersion": "v1", "kind": "Pod", **template, "status": {"phase": "Pending"}}


def plan(obj: dict[str, Any]) -> kubepod.KubePodPlan:
    return kubepod.plan(obj, "10.246.0.9", pod_dir=POD_DIR, host_ip="10.246.0.1")


def test_an_injected_pod_runs_as_the_kubelet_would_run_it() -> None:
    p = plan(stored_pod())
    assert [c.name for c in p.init] == ["weft-init"] and p.init_after == ()
    assert p.init[0].argv[:2] == ("weft", "proxy-init") and p.init[0].user is not None
    assert p.init[0].user.root  # NET_ADMIN: root in the pod's namespace
    (app,) = p.spec.containers
    assert app.argv == ("python", "-m", "weft.demo.web", "--port", "8080")  # $(PORT) expanded
    env = dict(app.env)
    assert env["ME"] == "web-1"  # the downward API
    assert app.readiness is not None and app.readiness.port == 8080
    assert app.user is not None and not app.user.root  # the pod's own uid
    assert p.spec.meshed and p.spec.grace == 40 and p.spec.service_account == "web"
    # the proxy: its arguments with the downward API's values and the token's path on the node
    assert p.proxy_argv is not None
    argv = list(p.proxy_argv)
    assert argv[argv.index("--identity-token-file") + 1] == str(POD_DIR / "identity" / "token")
    assert "pod=web-1" in argv and "namespace=shop" in argv and "serviceaccount=web" in argv
    assert argv[argv.index("--control") + 1].startswith("https://")
    proxy_env = dict(p.proxy_env)
    assert proxy_env["WEFT_PROXY_CONTROL_TRUST_ANCHORS"] == ANCHORS
    assert proxy_env["WEFT_POD_IPS"] == "10.246.0.9"
    assert p.identity_token and p.unprovided == ("kube-api-access-x1",)


def test_the_classic_sidecar_and_init_containers_after_the_native_one() -> None:
    obj = stored_pod()
    spec = obj["spec"]
    # a user's init container after the injected ones runs once the proxy is ready
    spec["initContainers"].append({"name": "migrate", "image": "x", "command": ["true"]})
    p = plan(obj)
    assert [c.name for c in p.init] == ["weft-init"]
    assert [c.name for c in p.init_after] == ["migrate"]
    classic = copy.deepcopy(obj)
    proxy = next(c for c in classic["spec"]["initContainers"] if c["name"] == "weft-proxy")
    classic["spec"]["initContainers"].remove(proxy)
    del proxy["restartPolicy"]
    classic["spec"]["containers"].insert(0, proxy)
    c = plan(classic)
    assert c.proxy_argv is not None and [x.name for x in c.spec.containers] == ["web"]
    # an unmeshed pod runs as it is: no proxy, no token
    container = {"name": "a", "image": "x", "command": ["sleep", "1"]}
    plain = {"metadata": {"name": "p", "namespace": "shop"}, "spec": {"containers": [container]}}
    u = plan(plain)
    assert u.proxy_argv is None and not u.identity_token and not u.spec.meshed


def test_volumes_the_node_provides_and_paths_rewritten_to_them() -> None:
    obj = stored_pod(volumes=[{"name": "cache", "emptyDir": {}}])
    web = obj["spec"]["containers"][0]
    web["volumeMounts"] = [{"name": "cache", "mountPath": "/cache"}]
    web["args"] = ["--dir=/cache/data", "/cache", "/cached"]
    p = plan(obj)
    (app,) = p.spec.containers
    assert app.argv[-3:] == (f"--dir={POD_DIR}/volumes/cache/data", f"{POD_DIR}/volumes/cache",
                             "/cached")  # fmt: skip
    assert POD_DIR / "volumes" / "cache" in p.directories


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.pop("command"), "command: required on this node"),
        (lambda c: c.update(envFrom=[{"secretRef": {"name": "s"}}]), "envFrom: not supported"),
        (lambda c: c["env"].append({"name": "S", "valueFrom": {"secretKeyRef": {"name": "s"}}}),
         "valueFrom: secretKeyRef is not supported"),
        (lambda c: c["env"].append({"name": "S", "valueFrom": {"fieldRef": {
            "fieldPath": "spec.hostname"}}}), "'spec.hostname' is not one"),
        (lambda c: c.update(readinessProbe={"httpGet": {"port": "nope"}}),
         "no container port named 'nope'"),
    ],
)  # fmt: skip
def test_what_this_node_cannot_run_is_refused_naming_the_field(change: Any, message: str) -> None:
    obj = stored_pod()
    change(obj["spec"]["containers"][0])
    with pytest.raises(PodSpecError, match=message) as info:
        plan(obj)
    assert "spec.containers[0]" in str(info.value)


def test_weft_images_need_no_command_and_other_sidecars_are_refused() -> None:
    obj = stored_pod()
    for c in obj["spec"]["initContainers"]:
        c.pop("command")  # the image's entrypoint is weft
    assert plan(obj).init[0].argv[0] == "weft"
    obj["spec"]["initContainers"].append(
        {"name": "istio-proxy", "image": "x", "command": ["x"], "restartPolicy": "Always"}
    )
    with pytest.raises(PodSpecError, match="native sidecars other than weft-proxy"):
        plan(obj)


@given(st.text(max_size=40))
def test_odd_field_paths_and_values_never_crash_the_plan(text: str) -> None:
    obj = stored_pod()
    obj["spec"]["containers"][0]["env"].append(
        {"name": "X", "valueFrom": {"fieldRef": {"fieldPath": text}}}
    )
    obj["spec"]["containers"][0]["args"].append(text)
    with contextlib.suppress(PodSpecError):  # a clear refusal, or a plan
        plan(obj)


def test_status_as_a_kubelet_reports_it() -> None:
    obj = stored_pod()
    runner = {
        "phase": "Running", "ready": True, "podIP": "10.246.0.9",
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [
            {"name": "weft-proxy", "ready": True, "restartCount": 0, "state": {"running": {}}},
            {"name": "web", "ready": True, "restartCount": 1, "state": {"running": {}}}],
        "initContainerStatuses": [{"name": "weft-init", "ready": True, "restartCount": 0,
                                   "state": {"terminated": {"exitCode": 0}}}],
    }  # fmt: skip
    out = kubepod.cluster_status(obj, runner)
    assert [s["name"] for s in out["initContainerStatuses"]] == ["weft-init", "weft-proxy"]
    assert [s["name"] for s in out["containerStatuses"]] == ["web"]
    assert out["containerStatuses"][0]["image"] == "weft/demo"
    assert out["containerStatuses"][0]["started"] is True
    assert {c["type"]: c["status"] for c in out["conditions"]} == {
        "PodScheduled": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }
    assert "ready" not in out
    # still initializing: the proxy not started, weft-init running
    runner["initContainerStatuses"][0]["state"] = {"running": {}}
    runner["containerStatuses"] = []
    runner["ready"] = False
    early = kubepod.cluster_status(obj, runner)
    assert {c["type"]: c["status"] for c in early["conditions"]}["Initialized"] == "False"
    assert early["initContainerStatuses"][1]["state"] == {"waiting": {"reason": "PodInitializing"}}


def test_a_clusters_pod_is_read_for_policy() -> None:
    obj = stored_pod()
    with pytest.raises(Exception):  # noqa: B017 - the local manifests' model refuses it whole
        Pod.from_dict(obj)
    view = Pod.from_dict(pods.policy_view(obj))
    assert view.metadata.labels["app"] == "web"
    (web,) = view.spec.containers
    assert web.ports[0].container_port == 8080 and "readinessProbe" in web.extra


def test_the_node_it_registers() -> None:
    node = node_object("node-1", "10.246.0.0/16")
    assert node["spec"]["podCIDR"] == "10.246.0.0/16"
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "node-1"
    assert node["metadata"]["labels"][AGENT_LABEL] == "weft"
    status = node_status("node-1", "10.246.0.1", ready=True, now="2026-12-08T00:00:00Z")
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"MemoryPressure": "False", "DiskPressure": "False",
                          "PIDPressure": "False", "Ready": "True"}  # fmt: skip
    assert status["addresses"][0] == {"type": "InternalIP", "address": "10.246.0.1"}
    assert int(status["allocatable"]["pods"]) == 110 and int(status["capacity"]["cpu"]) >= 1
    stopped = node_status("node-1", "10.246.0.1", ready=False)
    assert {c["type"]: c["status"] for c in stopped["conditions"]}["Ready"] == "False"


def _svc(name: str, ip: str | None, *ports: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": list(ports)}
    if ip is not None:
        spec["clusterIP"] = ip
    return {"metadata": {"name": name, "namespace": "shop"}, "spec": spec}


def _slice(service: str, port: dict[str, Any], *eps: tuple[str, bool]) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "shop", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [port],
        "endpoints": [{"addresses": [a], "conditions": {"ready": r}} for a, r in eps],
    }


def test_service_rules_spread_over_ready_endpoints_only() -> None:
    web = _svc("web", "10.96.0.10", {"name": "http", "port": 80, "protocol": "TCP"},
               {"name": "dns", "port": 53, "protocol": "UDP"})  # fmt: skip
    eps = [("10.246.0.2", True), ("10.246.0.3", True), ("10.246.0.4", False)]
    slices = [_slice("web", {"name": "http", "port": 8080}, *eps)]
    assert endpoints(web, slices) == {
        ("10.96.0.10", 80): [("10.246.0.2", 8080), ("10.246.0.3", 8080)]
    }
    rules = service_rules([web, _svc("headless", "None"), _svc("empty", "10.96.0.11",
                          {"name": "", "port": 81})], slices)  # fmt: skip
    lines = [line for line in rules.splitlines() if line.startswith("-A")]
    assert len(lines) == 2  # no endpoint, headless, UDP: no rule
    assert "--probability 0.5000000000" in lines[0] and "10.246.0.2:8080" in lines[0]
    assert "--probability" not in lines[1] and "10.246.0.3:8080" in lines[1]
    assert rules.startswith(f"*nat\n:{CHAIN} - [0:0]\n") and rules.endswith("COMMIT\n")
    assert f"-A PREROUTING -m comment --comment weft/services -j {CHAIN}" in hooks()
    assert "MASQUERADE" in hooks()


def test_the_api_server_is_relayed_only_from_loopback() -> None:
    assert loopback_server("https://127.0.0.1:6443") == ("127.0.0.1", 6443)
    assert loopback_server("https://localhost") == ("localhost", 443)
    assert loopback_server("https://10.0.0.1:6443") is None
    assert loopback_server("https://api.example.com") is None
    assert loopback_server("") is None
