"""The proxy injector called by the real API server: a MutatingWebhookConfiguration points at
``weft injector`` (the component ``weft install`` deploys) serving TLS on loopback; the real
kube-controller-manager creates a Deployment's pods; in a namespace annotated ``weft.io/inject:
enabled`` the stored pods carry the native sidecar and the init container; an unannotated
namespace is untouched; with the injector down the pods are still created, unmeshed. Bad
AdmissionReviews get a 400 saying why."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube.conftest import Kube
from weft.identity.ca import Authority, cert_pem
from weft.install.inject import CONTROL_ANCHORS_ENV, INIT_CONTAINER, InjectConfig
from weft.runtime.local import kubepki

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec: {{containers: [{{name: web, image: "registry.invalid/web:1"}}]}}
"""


def webhook(name: str, port: int, ca: bytes) -> dict[str, object]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "inject.weft.io",
                "clientConfig": {
                    "url": f"https://127.0.0.1:{port}/inject",
                    "caBundle": base64.b64encode(ca).decode(),
                },
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                           "resources": ["pods"], "scope": "Namespaced"}],
                "failurePolicy": "Ignore",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 5,
                "namespaceSelector": {"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                     "values": ["weft-system", "kube-system"]}]},
            }
        ],
    }  # fmt: skip


class Served:
    """``weft injector``, the deployed component, as a process on a loopback port."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, anchors: Path) -> None:
        self.proc, self.port, self.anchors = proc, port, anchors

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _get(port: int, ca: bytes, path: str) -> int:
    context = ssl.create_default_context(cadata=ca.decode())
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
    )
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return int(data.split(b" ", 2)[1])


def _anchor() -> bytes:
    return cert_pem(Authority.new_anchor("cluster.local", now=time.time()).cert)


def _proxy_anchors(pod: Mapping[str, Any]) -> str:
    proxy = next(c for c in pod["spec"]["initContainers"] if c["name"] == "weft-proxy")
    return str(next(e["value"] for e in proxy["env"] if e["name"] == CONTROL_ANCHORS_ENV))


@pytest.fixture
async def injector(kube: Kube, tmp_path: Path) -> AsyncIterator[tuple[Served, bytes]]:
    pki = kubepki.ensure(tmp_path / "pki")
    ca = pki.ca.read_bytes()
    port = _free_port()
    anchors = tmp_path / "anchors.pem"
    anchors.write_bytes(_anchor())
    log = tmp_path / "injector.log"
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "weft", "injector", "--kubeconfig", str(kube.kubeconfig),
            "--listen", f"127.0.0.1:{port}", "--tls-cert", str(pki.server_cert),
            "--tls-key", str(pki.server_key), "--control-trust-anchors-file", str(anchors),
            "--reload-interval", "0.2",
            stdout=asyncio.subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    served = Served(proc, port, anchors)
    try:
        for _ in range(200):  # ready once it listed the namespaces
            if proc.returncode is not None:
                raise AssertionError(f"weft injector exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                if await _get(port, ca, "/ready") == 200:
                    break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("weft injector never became ready")
        assert await _get(port, ca, "/live") == 200
        yield served, ca
    finally:
        await served.stop()


async def pod_of(kube: Kube, ns: str) -> dict[str, object]:
    for _ in range(300):
        out = await asyncio.to_thread(kube.kubectl, "get", "pods", "-n", ns, "-o", "json")
        items = json.loads(out)["items"]
        if items:
            return dict(items[0])
        await asyncio.sleep(0.1)
    raise AssertionError(f"no pod in {ns}")


def names(pod: Mapping[str, object], key: str) -> list[str]:
    spec = pod["spec"]
    assert isinstance(spec, dict)
    return [c["name"] for c in spec.get(key) or []]


async def recreated(kube: Kube, ns: str) -> list[dict[str, Any]]:
    """Delete the namespace's pods; the ones their ReplicaSet makes next."""
    kube.kubectl("delete", "pods", "--all", "-n", ns, "--wait=false")
    for _ in range(300):
        out = kube.kubectl("get", "pods", "-n", ns, "-o", "json")
        fresh = [p for p in json.loads(out)["items"] if not p["metadata"].get("deletionTimestamp")]
        if fresh:
            return fresh
        await asyncio.sleep(0.1)
    return []


async def test_the_api_server_calls_the_injector_for_annotated_namespaces(
    kube: Kube, injector: tuple[Served, bytes]
) -> None:
    served, ca = injector
    config_name = f"weft-test-{uuid.uuid4().hex[:8]}"
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(webhook(config_name, served.port, ca)))
    meshed, plain = kube.namespace, f"{kube.namespace}-plain"
    kube.kubectl("create", "namespace", plain)
    try:
        kube.kubectl("annotate", "namespace", meshed, "weft.io/inject=enabled")
        for ns in (meshed, plain):
            kube.kubectl("create", "serviceaccount", "default", "-n", ns, check=False)
            kube.kubectl("apply", "-f", "-", input=DEPLOYMENT.format(ns=ns))
        pod = await pod_of(kube, meshed)
        assert names(pod, "initContainers") == [INIT_CONTAINER, "weft-proxy"], pod["spec"]
        assert names(pod, "containers") == ["web"]
        annotations = pod["metadata"]["annotations"]  # type: ignore[index]
        assert annotations["weft.io/proxy-version"] == InjectConfig().version
        # the proxy verifies the control plane with the anchors of the mounted file ...
        assert _proxy_anchors(pod) == served.anchors.read_text()
        other = await pod_of(kube, plain)
        assert names(other, "initContainers") == [] and names(other, "containers") == ["web"]
        # ... read again when the file changes (an anchor rotation updates the ConfigMap)
        rotated = served.anchors.read_bytes() + _anchor()
        served.anchors.write_bytes(rotated)
        await asyncio.sleep(1.0)  # the injector checks every 0.2 s
        fresh = await recreated(kube, meshed)
        assert fresh and _proxy_anchors(fresh[0]) == rotated.decode()
        # the injector down: pods are still created (failurePolicy Ignore), unmeshed
        await served.stop()
        fresh = await recreated(kube, meshed)
        assert fresh and names(fresh[0], "initContainers") == []
    finally:
        kube.kubectl("delete", "mutatingwebhookconfiguration", config_name, check=False)
        kube.kubectl("delete", "namespace", plain, "--wait=false", check=False)


def test_the_injector_refuses_to_start_with_nothing_to_verify_the_control_plane_with(
    tmp_path: Path,
) -> None:
    pki = kubepki.ensure(tmp_path / "pki")
    done = subprocess.run(
        [sys.executable, "-m", "weft", "injector", "--kubeconfig", str(tmp_path / "none"),
         "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "--control-trust-anchors-file" in done.stderr and "Traceback" not in done.stderr
    (tmp_path / "bad.pem").write_text("nothing\n")
    done = subprocess.run(
        [sys.executable, "-m", "weft", "injector", "--kubeconfig", str(tmp_path / "none"),
         "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
         "--control-trust-anchors-file", str(tmp_path / "bad.pem")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1 and "no PEM certificate" in done.stderr


async def _post(served: Served, ca: bytes, body: bytes) -> tuple[int, bytes]:
    context = ssl.create_default_context(cadata=ca.decode())
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port, ssl=context,
                                                   server_hostname="127.0.0.1")  # fmt: skip
    head = f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
    writer.write(b"POST /inject HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n" + head)
    try:
        writer.write(body)
        await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass  # refused before the body was all sent: the answer is already there
    data = await reader.read()
    writer.close()
    return int(data.split(b" ", 2)[1]), data.split(b"\r\n\r\n", 1)[1]


def _review(pod: dict[str, object], uid: str = "u1") -> bytes:
    return json.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "namespace": "shop", "operation": "CREATE", "object": pod},
    }).encode()  # fmt: skip


def _pod(annotations: dict[str, str], **spec: object) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "shop",
                         "annotations": {"weft.io/inject": "enabled", **annotations}},
            "spec": {"containers": [{"name": "web", "image": "web:1"}], **spec}}  # fmt: skip


async def test_odd_pods_get_a_clear_answer(injector: tuple[Served, bytes]) -> None:
    """Invalid annotations: meshed with warnings naming them. A hostNetwork pod: allowed as it
    is, saying why. An enormous pod (3 MB of annotations, the API server's bound for an
    object): meshed. A body past the injector's bound: 413, and the injector keeps serving."""
    served, ca = injector
    code, body = await _post(served, ca, _review(_pod({
        "config.weft.io/proxy-log-level": "loud", "config.weft.io/proxy-cpu-limit": "lots",
        "config.weft.io/skip-outbound-ports": "http"})))  # fmt: skip
    answer = json.loads(body)["response"]
    assert code == 200 and answer["allowed"] and answer["patchType"] == "JSONPatch"
    warnings = " ".join(answer["warnings"])
    for key in ("proxy-log-level", "proxy-cpu-limit", "skip-outbound-ports"):
        assert key in warnings, warnings
    code, body = await _post(served, ca, _review(_pod({}, hostNetwork=True)))
    answer = json.loads(body)["response"]
    assert code == 200 and answer["allowed"] and "patch" not in answer
    assert "hostNetwork" in " ".join(answer["warnings"])
    big = {f"example.com/note-{i}": "x" * 1000 for i in range(3000)}
    code, body = await _post(served, ca, _review(_pod(big)))
    answer = json.loads(body)["response"]
    assert code == 200 and answer["allowed"] and answer["patchType"] == "JSONPatch"
    code, body = await _post(served, ca, b"{" + b" " * (17 * 1024 * 1024) + b"}")
    assert code == 413, body[:200]
    code, body = await _post(served, ca, _review(_pod({}), uid="after"))
    assert code == 200 and json.loads(body)["response"]["uid"] == "after"


async def test_bad_reviews_get_a_clear_400(injector: tuple[Served, bytes]) -> None:
    served, ca = injector
    context = ssl.create_default_context(cadata=ca.decode())

    async def post(body: bytes) -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port, ssl=context,
                                                       server_hostname="127.0.0.1")  # fmt: skip
        writer.write(b"POST /inject HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                     + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                     + body)  # fmt: skip
        data = await reader.read()
        writer.close()
        return int(data.split(b" ", 2)[1]), data.split(b"\r\n\r\n", 1)[1]

    code, body = await post(b"not json")
    assert code == 400
    code, body = await post(json.dumps({"kind": "AdmissionReview"}).encode())
    assert code == 400 and b"admission.k8s.io/v1" in body
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}
    code, body = await post(json.dumps(review).encode())
    assert code == 400 and b"request.uid" in body
    # another kind: allowed as it is
    review["request"] = {"uid": "u1", "kind": {"group": "apps", "version": "v1",
                                               "kind": "Deployment"}, "object": {}}  # fmt: skip
    code, body = await post(json.dumps(review).encode())
    answer = json.loads(body)["response"]
    assert code == 200 and answer == {"uid": "u1", "allowed": True}
