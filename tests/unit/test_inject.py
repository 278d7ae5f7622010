"""Sidecar injection over manifests shaped like real-world apps: what is added, where, and what
is left alone; uninjection restores the input exactly; warnings for bad annotations; and every
injected object validated, strictly, against the official Kubernetes OpenAPI schemas of the
supported versions (kubernetes-validate)."""

from __future__ import annotations

import copy
import subprocess
import sys
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.core.proxyinit import PROXY_UID
from weft.identity.ca import Authority, cert_pem
from weft.install.inject import (
    INIT_CONTAINER,
    InjectConfig,
    templates_of,
    transform,
)
from weft.resources import pods

SUPPORTED = ("1.29.0", "1.33.0", "1.37.0")  # native sidecars are on by default from 1.29
ANCHORS = cert_pem(Authority.new_anchor("cluster.local", now=1.8e9).cert).decode()
CONFIG = InjectConfig(trust_anchors=ANCHORS)

APPS = """
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: None, selector: {app: db}, ports: [{name: pg, port: 5432}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: shop}
spec:
  serviceName: db
  replicas: 3
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      initContainers:
        - {name: migrate, image: "postgres:16", command: [sh, -c, "true"]}
      containers:
        - name: postgres
          image: "postgres:16"
          ports: [{name: pg, containerPort: 5432}]
        - {name: exporter, image: "exporter:1", ports: [{name: metrics, containerPort: 9187}]}
      terminationGracePeriodSeconds: 60
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: shop}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec: {containers: [{name: agent, image: "agent:1"}]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: report, namespace: shop}
spec:
  schedule: "*/5 * * * *"
  jobTemplate:
    spec:
      template:
        metadata:
          annotations: {config.weft.io/proxy-native-sidecar: "false"}
        spec:
          restartPolicy: OnFailure
          containers: [{name: report, image: "report:1"}]
---
apiVersion: v1
kind: Pod
metadata: {name: node-exporter, namespace: shop}
spec: {hostNetwork: true, containers: [{name: exporter, image: "node-exporter:1"}]}
---
apiVersion: v1
kind: List
items:
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web, namespace: shop}
    spec:
      selector: {matchLabels: {app: web}}
      template:
        metadata:
          labels: {app: web}
          annotations:
            config.weft.io/skip-outbound-ports: "5432"
            config.weft.io/proxy-memory-limit: 1Gi
            config.weft.io/proxy-log-level: debug
        spec: {containers: [{name: web, image: "web:1", ports: [{containerPort: 8080}]}]}
  - apiVersion: batch/v1
    kind: Job
    metadata: {name: once, namespace: shop}
    spec:
      template:
        metadata: {annotations: {weft.io/inject: disabled}}
        spec: {restartPolicy: Never, containers: [{name: once, image: "once:1"}]}
"""


def docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(APPS) if d]


def by_name(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(i for i in items if i.get("name") == name)


def spec_of(doc: dict[str, Any]) -> dict[str, Any]:
    template, _ = templates_of(doc)
    assert template is not None
    return dict(template["spec"])


def test_real_world_manifests_are_injected_and_valid_for_every_supported_version() -> None:
    inputs = docs()
    outcomes = [transform(d, CONFIG) for d in inputs]
    service, sts, ds, cron, host, lst = inputs
    assert [o.changed for o in outcomes] == [False, True, True, True, False, True]
    assert outcomes[0].reason == "kind Service has no pod template"
    assert "hostNetwork" in outcomes[4].reason and "initContainers" not in host["spec"]
    # the StatefulSet: our init container first, the proxy a native sidecar, theirs after
    spec = spec_of(sts)
    assert [c["name"] for c in spec["initContainers"]] == [INIT_CONTAINER, "weft-proxy", "migrate"]
    proxy = by_name(spec["initContainers"], "weft-proxy")
    assert proxy["restartPolicy"] == "Always"
    assert [c["name"] for c in spec["containers"]] == ["postgres", "exporter"]
    assert "--shutdown-grace" in proxy["args"] and "60" in proxy["args"]
    # it verifies the control plane's HTTPS API as its service account's identity, with the
    # anchors the injection gives it
    args = proxy["args"]
    assert args[args.index("--control") + 1].startswith("https://weft-control.weft-system.svc")
    assert args[args.index("--control-identity") + 1] == (
        "weft-control.weft-system.serviceaccount.identity.cluster.local"
    )
    env = {e["name"]: e.get("value") for e in proxy["env"]}
    assert env["WEFT_PROXY_CONTROL_TRUST_ANCHORS"] == ANCHORS
    assert proxy["securityContext"]["runAsUser"] == PROXY_UID
    assert proxy["securityContext"]["readOnlyRootFilesystem"] is True
    init = by_name(spec["initContainers"], INIT_CONTAINER)
    assert init["securityContext"]["capabilities"] == {"add": ["NET_ADMIN", "NET_RAW"],
                                                       "drop": ["ALL"]}  # fmt: skip
    token = by_name(spec["volumes"], "weft-identity-token")["projected"]["sources"][0]
    assert token["serviceAccountToken"]["audience"] == "identity.weft.io"
    # the control plane finds the proxy's admin port as on a pod it reads
    pod = {"metadata": {}, "spec": spec, "status": {"podIP": "10.0.0.7"}}
    assert pods.proxy_admin(pod) == "10.0.0.7:4191"
    # the CronJob asked for a classic sidecar: first container, no restartPolicy
    cspec = spec_of(cron)
    assert cspec["containers"][0]["name"] == "weft-proxy"
    assert "restartPolicy" not in cspec["containers"][0]
    assert [c["name"] for c in cspec["initContainers"]] == [INIT_CONTAINER]
    # the List: the Deployment with its annotations honoured, the Job left out
    web, job = lst["items"]
    wspec = spec_of(web)
    wproxy = by_name(wspec["initContainers"], "weft-proxy")
    assert wproxy["resources"]["limits"]["memory"] == "1Gi"
    assert wproxy["args"][wproxy["args"].index("--log-level") + 1] == "debug"
    winit = by_name(wspec["initContainers"], INIT_CONTAINER)
    assert winit["args"][winit["args"].index("--outbound-skip-ports") + 1] == "5432"
    assert "initContainers" not in spec_of(job)
    template, _ = templates_of(ds)
    assert template is not None
    assert template["metadata"]["annotations"]["weft.io/proxy-version"] == CONFIG.version
    assert template["metadata"]["labels"]["weft.io/control-plane-ns"] == "weft-system"
    for doc in [service, sts, ds, cron, host, web, job]:
        for version in SUPPORTED:
            kubernetes_validate.validate(doc, version, strict=True)


def test_injection_is_idempotent_and_uninjection_restores_the_input() -> None:
    original = docs()
    injected = copy.deepcopy(original)
    for d in injected:
        transform(d, CONFIG)
    again = copy.deepcopy(injected)
    assert not any(transform(d, CONFIG).changed for d in again[1:4])
    assert again == injected
    for d in injected:
        transform(d, CONFIG, uninject=True)
    assert injected == original


def test_bad_annotations_are_warnings_and_defaults() -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "annotations": {
                "config.weft.io/proxy-cpu-request": "lots",
                "config.weft.io/proxy-log-level": "loud",
                "config.weft.io/proxy-native-sidecar": "maybe",
                "config.weft.io/skip-inbound-ports": "22,http",
            },
        },
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }
    outcome = transform(doc, CONFIG)
    assert outcome.changed and len(outcome.warnings) == 4
    text = "\n".join(outcome.warnings)
    for key in ("proxy-cpu-request", "proxy-log-level", "proxy-native-sidecar", "skip-inbound"):
        assert key in text
    proxy = by_name(doc["spec"]["initContainers"], "weft-proxy")
    assert proxy["resources"]["requests"]["cpu"] == "20m"
    kubernetes_validate.validate(doc, "1.37.0", strict=True)


def test_the_control_planes_own_pods_and_malformed_objects_are_left_alone() -> None:
    meta = {"name": "c", "namespace": "weft-system"}
    ours = {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "c", "image": "c"}]}}  # fmt: skip
    assert transform(ours, CONFIG).reason == "the control plane's own pods are not meshed"
    broken = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
              "spec": {"template": "nope"}}  # fmt: skip
    assert not transform(broken, CONFIG).changed
    assert not transform({"kind": "Pod", "spec": []}, CONFIG).changed


names = st.text("abcdefgh", min_size=1, max_size=8)


@settings(max_examples=100, deadline=None)
@given(
    containers=st.lists(names, min_size=1, max_size=4, unique=True),
    inits=st.lists(names.map(lambda n: "i" + n), max_size=2, unique=True),
    native=st.booleans(),
    volumes=st.lists(names.map(lambda n: "v" + n), max_size=2, unique=True),
)
def test_any_template_round_trips(
    containers: list[str], inits: list[str], native: bool, volumes: list[str]
) -> None:
    spec: dict[str, Any] = {"containers": [{"name": c, "image": "x"} for c in containers]}
    if inits:
        spec["initContainers"] = [{"name": i, "image": "x"} for i in inits]
    if volumes:
        spec["volumes"] = [{"name": v, "emptyDir": {}} for v in volumes]
    meta: dict[str, Any] = {"name": "p", "labels": {"app": "a"}}
    if not native:
        meta["annotations"] = {"config.weft.io/proxy-native-sidecar": "false"}
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
    original = copy.deepcopy(doc)
    assert transform(doc, CONFIG).changed
    injected = spec_of(doc)
    names_after = [c["name"] for c in injected["containers"]]
    assert names_after[-len(containers) :] == containers  # theirs, in order
    assert [c["name"] for c in injected["initContainers"]][-len(inits) or None :] == (
        inits or [c["name"] for c in injected["initContainers"]]
    )
    kubernetes_validate.validate(doc, "1.37.0", strict=True)
    transform(doc, CONFIG, uninject=True)
    assert doc == original


def test_without_trust_anchors_nothing_is_injected_that_could_not_verify_the_control_plane(
    tmp_path: Any,
) -> None:
    doc = docs()[1]
    outcome = transform(doc, InjectConfig())
    assert not outcome.changed and "trust anchors" in outcome.reason
    # the CLI: no cluster to read them from and no file: an error saying how, nothing printed
    f = tmp_path / "apps.yaml"
    f.write_text(APPS)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "none")}
    done = subprocess.run([sys.executable, "-m", "weft", "inject", "-f", str(f)], env=env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    assert (
        "--trust-anchors-file" in done.stderr and "cannot read Weft's installation" in done.stderr
    )
    (tmp_path / "empty.pem").write_text("not a certificate\n")
    done = subprocess.run([sys.executable, "-m", "weft", "inject", "-f", str(f),
                           "--trust-anchors-file", str(tmp_path / "empty.pem")],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 1 and "no PEM certificate" in done.stderr and done.stdout == ""


def test_the_cli_reads_files_and_stdin_and_refuses_bad_yaml(tmp_path: Any) -> None:
    f = tmp_path / "apps.yaml"
    f.write_text(APPS)
    anchors = tmp_path / "anchors.pem"
    anchors.write_text(ANCHORS)
    done = subprocess.run([sys.executable, "-m", "weft", "inject", "-f", str(f),
                           "--trust-anchors-file", str(anchors)],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert 'statefulset "db" injected' in done.stderr and 'service "db" skipped' in done.stderr
    out = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert len(out) == len(docs())
    back = subprocess.run([sys.executable, "-m", "weft", "uninject", "-f", "-"],
                          input=done.stdout, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert [d for d in yaml.safe_load_all(back.stdout) if d] == docs()
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Pod\n  spec: [\n")
    done = subprocess.run([sys.executable, "-m", "weft", "inject", "-f", str(bad),
                           "--trust-anchors-file", str(anchors)],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 1 and "not valid YAML" in done.stderr and done.stdout == ""


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"])
def test_each_workload_kind_has_its_template_found(kind: str) -> None:
    doc = {"kind": kind, "spec": {"template": {"spec": {"containers": []}}}}
    template, why = templates_of(doc)
    assert template is not None and why == ""
