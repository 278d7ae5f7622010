"""``weft inject`` output on the real API server: the injected Deployment is accepted, and the
pods the real kube-controller-manager creates for it carry the native sidecar, the init container
and the projected token exactly as injected (the server's own validation and defaulting included).
``weft uninject`` of the same manifest brings the plain pods back."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.kube.conftest import Kube
from weft.identity.ca import Authority, cert_pem
from weft.install.inject import INIT_CONTAINER

APP = """
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
        - name: web
          image: "registry.invalid/web:1"
          ports: [{{name: http, containerPort: 8080}}]
"""


def by_name(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(i for i in items if i.get("name") == name)


def weft(*args: str, input: str) -> str:
    done = subprocess.run([sys.executable, "-m", "weft", *args], input=input,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def pods(kube: Kube) -> list[dict[str, object]]:
    out = kube.kubectl("get", "pods", "-n", kube.namespace, "-l", "app=web", "-o", "json")
    return list(json.loads(out)["items"])


def test_injected_pods_are_created_as_injected(kube: Kube, tmp_path: Path) -> None:
    ns = kube.namespace
    kube.kubectl("create", "serviceaccount", "default", "-n", ns, check=False)
    anchors = tmp_path / "anchors.pem"  # offline: Weft is not installed on this cluster
    anchors.write_bytes(cert_pem(Authority.new_anchor("cluster.local", now=time.time()).cert))
    manifest = weft("inject", "-f", "-", "--trust-anchors-file", str(anchors),
                    input=APP.format(ns=ns))  # fmt: skip
    kube.kubectl("apply", "-f", "-", input=manifest)
    kube.kubectl("wait", "--for=jsonpath={.status.replicas}=2", "deployment/web", "-n", ns,
                 "--timeout=60s")  # fmt: skip
    created = pods(kube)
    assert len(created) == 2
    for pod in created:
        spec = pod["spec"]
        assert isinstance(spec, dict)
        inits = spec["initContainers"]
        assert [c["name"] for c in inits] == [INIT_CONTAINER, "weft-proxy"]
        assert by_name(inits, "weft-proxy")["restartPolicy"] == "Always"
        assert [c["name"] for c in spec["containers"]] == ["web"]
        token = by_name(spec["volumes"], "weft-identity-token")
        source = token["projected"]["sources"][0]["serviceAccountToken"]
        assert source["audience"] == "identity.weft.io"
    # uninjected, the rollout brings plain pods
    plain = weft("uninject", "-f", "-", input=manifest)
    kube.kubectl("apply", "-f", "-", input=plain)
    kube.kubectl("rollout", "status", "deployment/web", "-n", ns, "--timeout=5s", check=False)
    template = json.loads(kube.kubectl("get", "deployment/web", "-n", ns, "-o", "json"))
    tspec = template["spec"]["template"]["spec"]
    assert "initContainers" not in tspec and [c["name"] for c in tspec["containers"]] == ["web"]
