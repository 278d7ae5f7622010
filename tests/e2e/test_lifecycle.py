"""E2E: a job pod that completes and stops its sidecar; invalid manifests rejected whole with the
field named; exec, logs and check against running pods."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshlib import ECHO, NAMESPACE, E2EMesh, wait_for

from weft.runtime.local import net, netrun, procs

JOB = """
apiVersion: v1
kind: Pod
metadata: {name: fetch-once, namespace: e2e}
spec:
  restartPolicy: Never
  containers:
    - name: job
      command:
        - python
        - -c
        - |
          import json, urllib.request
          body = json.load(urllib.request.urlopen("http://echo:8080/", timeout=10))
          print("job fetched", len(body["authors"]), "authors", flush=True)
"""


@pytest.fixture(scope="module")
def echo(mesh: E2EMesh) -> Iterator[dict[str, Any]]:
    mesh.apply(ECHO)
    (pod,) = mesh.wait_rolled_out("echo", 1)
    yield pod


def _pod(mesh: E2EMesh, name: str) -> dict[str, Any] | None:
    return next((p for p in mesh.pods() if p["metadata"]["name"] == name), None)


def test_job_pod_completes_and_its_sidecar_stops(mesh: E2EMesh, echo: dict[str, Any]) -> None:
    mesh.apply(JOB)

    def finished() -> dict[str, Any] | None:
        pod = _pod(mesh, "fetch-once")
        phase = (pod or {}).get("status", {}).get("phase")
        return pod if phase in ("Succeeded", "Failed") else None

    pod = wait_for(finished, "the job to finish", limit=60)
    logs = mesh.weft("logs", "-n", NAMESPACE, "fetch-once").stdout
    assert pod["status"]["phase"] == "Succeeded", f"{pod['status']}\n{logs}"
    assert "job fetched 2 authors" in logs
    states = {c["name"]: c["state"] for c in pod["status"]["containerStatuses"]}
    assert states["job"]["terminated"]["exitCode"] == 0
    assert "terminated" in states["weft-proxy"]
    # nothing of the pod runs any more: no sidecar, no namespace
    assert not netrun.netns_exists(net.pod_netns_name(NAMESPACE, "fetch-once"))
    assert not [
        p
        for p in procs.mesh_pids(str(mesh.state_dir))
        if "pod=fetch-once" in " ".join(procs.cmdline(p))
    ]
    proxy_log = mesh.weft("logs", "-n", NAMESPACE, "fetch-once", "-c", "proxy").stdout
    assert proxy_log.strip()
    mesh.weft("delete", "-f", "-", input=JOB)
    wait_for(lambda: _pod(mesh, "fetch-once") is None, "the job pod to be deleted")
    logs_dir = mesh.state_dir / "pods" / NAMESPACE / "fetch-once"
    wait_for(lambda: not logs_dir.exists(), "the deleted pod's logs to go with it")


def test_invalid_manifest_is_rejected_whole_with_the_field_named(
    mesh: E2EMesh, echo: dict[str, Any], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        """
apiVersion: v1
kind: Service
metadata: {name: never-applied, namespace: e2e}
spec:
  selector: {app: x}
  ports: [{port: 80}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: broken, namespace: e2e}
spec:
  replicas: three
  selector: {matchLabels: {app: broken}}
  template:
    metadata: {labels: {app: broken}}
    spec:
      containers: [{name: app, command: [sleep, "1"]}]
"""
    )
    result = mesh.weft("apply", "-f", str(bad), check=False)
    assert result.returncode != 0
    assert re.search(
        r"bad\.yaml:\d+, document 2: spec\.replicas: must be an integer", result.stderr
    ), result.stderr
    names = [s["metadata"]["name"] for s in mesh.objects("svc")]
    assert "never-applied" not in names
    assert not mesh.pods("broken")


def test_exec_logs_and_check(mesh: E2EMesh, echo: dict[str, Any]) -> None:
    name = echo["metadata"]["name"]
    hosts = mesh.exec(name, "cat", "/etc/hosts").stdout
    assert "echo.e2e.svc.cluster.local" in hosts and f"\t{name}" in hosts
    # exec runs meshed like the app: its connection to the service goes through the proxy
    body = mesh.exec(name, "curl", "-s", "-m", "5", "http://echo:8080/").stdout
    assert '"authors"' in body
    assert "listening on 0.0.0.0:8080" in mesh.weft("logs", "-n", NAMESPACE, name).stdout
    assert mesh.weft("logs", "-n", NAMESPACE, name, "-c", "proxy").stdout.strip()
    missing = mesh.weft("logs", "-n", NAMESPACE, name, "-c", "nope", check=False)
    assert missing.returncode == 1 and "containers: proxy, echo" in missing.stderr
    check = mesh.weft("check")
    assert f"proxy of {NAMESPACE}/{name} ready" in check.stdout
    assert "✘" not in check.stdout
