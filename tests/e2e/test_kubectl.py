"""E2E: the real kubectl against the local mesh, through ``weft kubeconfig``: apply a Deployment
and a Service, watch the pods until they run, read a pod's log and the Service's EndpointSlice,
exec into it (output, exit code, stdin, a terminal), see its ReplicaSet, scale, and delete."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from meshlib import E2EMesh, wait_for

REPO = Path(__file__).resolve().parents[2]
APP = """
apiVersion: v1
kind: Namespace
metadata: {name: kctl}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: hello, namespace: kctl}
spec:
  replicas: 1
  selector: {matchLabels: {app: hello}}
  template:
    metadata: {labels: {app: hello}}
    spec:
      containers:
        - name: hello
          command: [python, -m, weft.demo.backend]
          env: [{name: DEMO_NAME, value: authors}]
          ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: hello, namespace: kctl}
spec:
  selector: {app: hello}
  ports: [{name: http, port: 8080, targetPort: http}]
"""


def kubectl_binary() -> str:
    rig = subprocess.run(
        [str(REPO / "scripts" / "k8s-rig"), "bin"], capture_output=True, text=True, check=False
    )
    built = Path(rig.stdout.strip()) / "kubectl" if rig.returncode == 0 else None
    if built is not None and built.exists():
        return str(built)
    found = shutil.which("kubectl")
    assert found is not None, "no kubectl: build the rig (make k8s-rig) or install kubectl"
    return found


def test_kubectl_drives_the_local_mesh(mesh: E2EMesh, tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(mesh.weft("kubeconfig").stdout)
    binary = kubectl_binary()

    def kubectl(*args: str, input: str | None = None, check: bool = True) -> str:
        done = subprocess.run(
            [binary, "--kubeconfig", str(config), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {done.stderr}\n{mesh.diagnostics()}")
        return done.stdout + done.stderr

    applied = kubectl("apply", "-f", "-", input=APP)
    assert "deployment.apps/hello created" in applied and "service/hello created" in applied
    # watch until the pod runs (the table kubectl prints, from the server's columns)
    watch = subprocess.Popen(
        [binary, "--kubeconfig", str(config), "get", "pods", "-n", "kctl", "-w"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stdout is not None
        header = watch.stdout.readline()
        assert header.split()[:5] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"], header
        deadline = time.monotonic() + 90
        running = ""
        while time.monotonic() < deadline:
            line = watch.stdout.readline()
            if "Running" in line:
                running = line
                break
        assert running.startswith("hello-"), f"no Running pod in the watch\n{mesh.diagnostics()}"
    finally:
        watch.kill()
        watch.communicate(timeout=10)
    pod = running.split()[0]
    wide = kubectl("get", "pods", "-n", "kctl", "-o", "wide")
    assert pod in wide and "10.244." in wide
    # its log, and its endpoint in the Service's slice
    wait_for(lambda: kubectl("logs", "-n", "kctl", pod).strip(), "the pod's log", limit=30)
    ip = kubectl("get", "pod", pod, "-n", "kctl", "-o", "jsonpath={.status.podIP}").strip()
    wait_for(
        lambda: (
            ip
            in kubectl(
                "get",
                "endpointslices",
                "-n",
                "kctl",
                "-o",
                "jsonpath={.items[*].endpoints[*].addresses[*]}",
            )
        ),
        "the pod in the Service's EndpointSlice",
    )
    # scale through the scale subresource, then the deployment's pods follow
    assert "scaled" in kubectl("scale", "deployment/hello", "-n", "kctl", "--replicas=2")
    try:
        wait_for(
            lambda: kubectl("get", "pods", "-n", "kctl", "--no-headers").count("Running") == 2,
            "two running pods",
            limit=90,
        )
    except AssertionError as e:
        raise AssertionError(
            f"{e}\n{kubectl('get', 'pods', '-n', 'kctl', '-o', 'wide')}\n"
            f"{kubectl('get', 'deploy', '-n', 'kctl', '-o', 'yaml')}\n{mesh.diagnostics()}"
        ) from None
    # exec, served by the node as a kubelet serves it: both streams, the exit code, stdin
    done = subprocess.run(
        [binary, "--kubeconfig", str(config), "exec", "-n", "kctl", pod, "--",
         "sh", "-c", "echo out; echo err >&2; echo $HOSTNAME; exit 3"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 3, done
    assert done.stdout.split() == ["out", pod] and "err" in done.stderr, done
    echoed = kubectl("exec", "-i", "-n", "kctl", pod, "--", "cat", input="through stdin\n")
    assert echoed == "through stdin\n"
    # the pod reaches its Service from inside, as its app does
    fetched = kubectl("exec", "-n", "kctl", pod, "--", "python", "-c",
                      "import urllib.request as u; "
                      "print(u.urlopen('http://hello:8080/', timeout=10).status)")  # fmt: skip
    assert fetched.strip() == "200", fetched
    # a terminal (kubectl asks for one only from a terminal of its own: script gives it one)
    line = f"{binary} --kubeconfig {config} exec -it -n kctl {pod} -- tty"
    tty = subprocess.run(["script", "-qec", line, "/dev/null"], capture_output=True, text=True,
                         timeout=60, check=False, stdin=subprocess.DEVNULL)  # fmt: skip
    assert "/dev/pts/" in tty.stdout and tty.returncode == 0, tty
    # what owns it, as on a cluster
    rs = kubectl("get", "rs", "-n", "kctl", "--no-headers").split()
    assert rs[0].startswith("hello-") and pod.startswith(rs[0] + "-"), rs
    described = kubectl("describe", "pod", "-n", "kctl", pod)
    assert f"Controlled By:  ReplicaSet/{rs[0]}" in described and "Node:" in described
    deleted = kubectl("delete", "-f", "-", input=APP)
    assert 'namespace "kctl" deleted' in deleted
    wait_for(lambda: not [p for p in mesh.pods(namespace="kctl")], "the pods gone", limit=90)
