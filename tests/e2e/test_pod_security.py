"""E2E (issue 12): root in a pod no longer administers the mesh.

From a default pod, as the user its app runs as (``weft exec`` runs as the container's user,
as ``kubectl exec``): the control socket cannot be reached (no apply, delete, certify), no
token (another pod's, its own proxy's), no CA or token key, no log, no store can be read, and
another pod's app cannot be signalled. The demo backend serves as that user. A pod that asks
for root (``runAsUser: 0`` at pod level, ``privileged: true`` in a container) runs as root and
is named in ``weft get pods`` and ``weft check``; ``runAsUser``/``runAsGroup`` give other ids.

Pods: ``app`` (demo backend, default user), ``other`` (default user), ``rooty`` (pod-level
``runAsUser: 0``), ``priv`` (container ``privileged: true``), ``custom`` (4321:4322).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshlib import E2EMesh

from weft.runtime.local import net
from weft.runtime.local.users import POD_UID_BASE, pod_uid

NS = "psec"


def _deployment(name: str, container: str, pod_extra: str = "") -> str:
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {NS}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
{pod_extra}      containers: [{container}]
"""


SLEEP = '{name: c, command: [sleep, "3600"]}'
MANIFEST = "---\n".join(
    [
        f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n",
        _deployment(
            "app",
            "{name: app, command: [python, -m, weft.demo.backend], "
            "ports: [{name: http, containerPort: 8080}]}",
        ),
        "apiVersion: v1\nkind: Service\n"
        f"metadata: {{name: app, namespace: {NS}}}\n"
        "spec: {selector: {app: app}, ports: [{port: 8080, targetPort: 8080}]}\n",
        _deployment("other", SLEEP),
        _deployment("rooty", SLEEP, "      securityContext: {runAsUser: 0}\n"),
        _deployment(
            "priv", '{name: c, command: [sleep, "3600"], securityContext: {privileged: true}}'
        ),
        _deployment(
            "custom", SLEEP, "      securityContext: {runAsUser: 4321, runAsGroup: 4322}\n"
        ),
    ]
)

# What the pod's user can do to the mesh: each attempt is "denied" or says what it got.
PROBE = r"""
import http.client, json, os, signal, socket, sys

state, other_pid = sys.argv[1], int(sys.argv[2])
out = {}

def attempt(name, fn):
    try:
        out[name] = fn()
    except PermissionError as exc:
        out[name] = "denied"
    except Exception as exc:
        out[name] = f"{type(exc).__name__}: {exc}"

def read(path):
    with open(path, "rb") as f:
        return f"read {len(f.read())} bytes"

class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(os.path.join(state, "control.sock"))

def api(method, path, body=None):
    conn = Unix("weft")
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"content-type": "application/json"})
    status = conn.getresponse().status
    return "denied" if status in (401, 403) else f"HTTP {status}"

ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "pwned"}}
attempt("apply", lambda: api("POST", "/api/v1/apply", {"documents": [ns]}))
attempt("delete", lambda: api("POST", "/api/v1/delete", {"documents": [ns]}))
attempt("certify", lambda: api("POST", "/api/v1/identity/certify", {"token": "x", "csr": "x"}))
attempt("list_state", lambda: sorted(os.listdir(state)))
token = lambda pod: os.path.join(state, "pods", sys.argv[3], pod, "identity", "token")
attempt("own_token", lambda: read(token(sys.argv[4])))
attempt("other_token", lambda: read(token(sys.argv[5])))
attempt("token_key", lambda: read(os.path.join(state, "identity", "token.key")))
attempt("ca", lambda: read(os.path.join(state, "identity", "ca.json")))
attempt("store", lambda: read(os.path.join(state, "store.db")))
attempt("logs", lambda: read(os.path.join(state, "logs", "node.log")))
attempt("signal_other_app", lambda: os.kill(other_pid, 0) or "signalled")
out["uid"], out["gid"], out["groups"] = os.getuid(), os.getgid(), os.getgroups()
print(json.dumps(out))
"""
ATTEMPTS = (
    "apply",
    "delete",
    "certify",
    "list_state",
    "own_token",
    "other_token",
    "token_key",
    "ca",
    "store",
    "logs",
    "signal_other_app",
)


@pytest.fixture(scope="module")
def pods(mesh: E2EMesh) -> Iterator[dict[str, dict[str, Any]]]:
    mesh.apply(MANIFEST)
    found = {}
    for name in ("app", "other", "rooty", "priv", "custom"):
        mesh.wait_rolled_out(name, 1, NS, limit=90)
        found[name] = mesh.pods(name, NS)[0]
    yield found


def _name(pod: dict[str, Any]) -> str:
    return str(pod["metadata"]["name"])


def _app_pids(pod: dict[str, Any]) -> dict[int, int]:
    """pid -> uid of the processes in the pod's namespace other than its proxy's."""
    netns = net.pod_netns_name(NS, _name(pod))
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, check=True)
    result: dict[int, int] = {}
    for pid in (int(p) for p in out.stdout.split()):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        uid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:"))
        if uid != net.PROXY_UID:
            result[pid] = uid
    return result


def _probe(mesh: E2EMesh, pods: dict[str, dict[str, Any]], who: str) -> dict[str, Any]:
    other_pid = min(_app_pids(pods["other"]))
    argv = ["python", "-c", PROBE, str(mesh.state_dir), str(other_pid), NS, _name(pods[who])]
    out = mesh.exec(_name(pods[who]), *argv, _name(pods["other"]), namespace=NS).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def test_default_pods_run_as_a_non_root_user_of_their_own(
    mesh: E2EMesh, pods: dict[str, dict[str, Any]]
) -> None:
    expected = {}
    for name in ("app", "other"):
        ip = pods[name]["status"]["podIP"]
        expected[name] = pod_uid(ip)
        pids = _app_pids(pods[name])
        assert set(pids.values()) == {expected[name]}, name
        for pid in pids:  # no capabilities, and no way to gain any (setuid binaries)
            status = dict(
                line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            )
            assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == 0, (name, status)
            assert status["NoNewPrivs"].strip() == "1"
        ids = mesh.exec(_name(pods[name]), "id", "-u", namespace=NS).stdout.split()
        assert ids == [str(expected[name])]
    assert expected["app"] != expected["other"] and min(expected.values()) >= POD_UID_BASE
    # the demo backend (Weft's Python) serves as that user, through both proxies
    code = mesh.exec(
        _name(pods["other"]),
        "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "10", "http://app:8080/",
        namespace=NS,
    ).stdout  # fmt: skip
    assert code == "200"
    # the state directory is root's only
    assert mesh.state_dir.stat().st_mode & 0o777 == 0o700


def test_a_default_pod_reaches_nothing_of_the_mesh_administration(
    mesh: E2EMesh, pods: dict[str, dict[str, Any]]
) -> None:
    result = _probe(mesh, pods, "app")
    assert result["uid"] == pod_uid(pods["app"]["status"]["podIP"]) and result["groups"] == []
    assert {k: result[k] for k in ATTEMPTS} == dict.fromkeys(ATTEMPTS, "denied"), result
    names = {o["metadata"]["name"] for o in mesh.objects("namespaces", NS)}
    assert "pwned" not in names


def test_root_pods_run_as_root_and_are_shown_privileged(
    mesh: E2EMesh, pods: dict[str, dict[str, Any]]
) -> None:
    for name in ("rooty", "priv"):
        assert set(_app_pids(pods[name]).values()) == {0}, name
        assert mesh.exec(_name(pods[name]), "id", "-u", namespace=NS).stdout.split() == ["0"]
    # root gets what it asked for: the mesh's secrets are in its reach (which is why it shows)
    result = _probe(mesh, pods, "rooty")
    assert result["uid"] == 0 and result["token_key"].startswith("read "), result
    assert mesh.exec(_name(pods["custom"]), "id", "-u", namespace=NS).stdout.split() == ["4321"]
    group = mesh.exec(_name(pods["custom"]), "id", "-g", namespace=NS).stdout.split()
    assert group == ["4322"]
    assert set(_app_pids(pods["custom"]).values()) == {4321}

    table = mesh.weft("get", "pods", "-n", NS).stdout.splitlines()
    header = table[0].split()
    assert header[-1] == "PRIVILEGED", table
    marks = {row.split()[0]: row.split()[-1] for row in table[1:]}
    assert marks[_name(pods["rooty"])] == "root" and marks[_name(pods["priv"])] == "root"
    for name in ("app", "other", "custom"):
        assert marks[_name(pods[name])] == "-"

    check = mesh.weft("check", check=False).stdout
    lines = [line for line in check.splitlines() if "privileged pods" in line]
    assert len(lines) == 1 and lines[0].lstrip().startswith("⚠"), check
    assert f"{NS}/{_name(pods['rooty'])}" in lines[0] and f"{NS}/{_name(pods['priv'])}" in lines[0]
    assert _name(pods["app"]) not in lines[0]


def test_a_privileged_field_at_pod_level_is_refused_naming_it(mesh: E2EMesh) -> None:
    bad = _deployment("bad", SLEEP, "      securityContext: {privileged: true}\n")
    proc = mesh.apply(bad, check=False)
    assert proc.returncode != 0
    assert "spec.template.spec.securityContext.privileged" in proc.stderr + proc.stdout
