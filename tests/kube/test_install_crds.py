"""``weft install --crds | kubectl apply -f -`` against the real API server: the CRDs are
accepted and established; an object of each kind that Weft accepts, the server accepts too; the
server refuses what Weft refuses, naming the field; ``kubectl get`` prints the columns; and the
control plane's informers read the objects. The CRDs are deleted afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.kube.conftest import Kube, KubeRig
from weft.control.kube.client import connect
from weft.control.kube.state import KubeState
from weft.install.crds import NAMES
from weft.resources import parse_resource

GROUP = "policy.weft.io"


def weft(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "weft", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def crds(kube_rig: KubeRig) -> Iterator[str]:
    """The CRDs, installed once for this module and deleted after it (the delete is issued
    even when the API server is slow to finish it)."""
    text = weft("install", "--crds")
    kube_rig.kubectl_run("apply", "-f", "-", input=text)
    try:
        names = [f"crd/{plural}.{GROUP}" for plural, _, _ in NAMES.values()]
        kube_rig.kubectl_run("wait", "--for=condition=Established", "--timeout=60s", *names)
        yield text
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                [str(kube_rig.kubectl), "--kubeconfig", str(kube_rig.kubeconfig), "delete",
                 "-f", "-", "--timeout=150s"],
                input=text, capture_output=True, text=True, timeout=180, check=False,
            )  # fmt: skip


def objects(ns: str) -> list[dict[str, Any]]:
    def doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/v1beta1",
            "kind": kind,
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }

    return [
        doc("Server", "web-http", {
            "podSelector": {"matchLabels": {"app": "web"},
                            "matchExpressions": [{"key": "tier", "operator": "In",
                                                  "values": ["front"]}]},
            "port": "http", "proxyProtocol": "HTTP/1", "accessPolicy": "deny"}),
        doc("Server", "web-admin", {"podSelector": {}, "port": 9090}),
        doc("MeshTLSAuthentication", "clients", {
            "identities": ["client.shop.serviceaccount.identity.cluster.local"]}),
        doc("MeshTLSAuthentication", "by-account", {
            "identityRefs": [{"kind": "ServiceAccount", "name": "client"}]}),
        doc("NetworkAuthentication", "cluster", {
            "networks": [{"cidr": "10.0.0.0/8", "except": ["10.9.0.0/16"]}]}),
        doc("AuthorizationPolicy", "web-clients", {
            "targetRef": {"group": GROUP, "kind": "Server", "name": "web-http"},
            "requiredAuthenticationRefs": [
                {"group": GROUP, "kind": "MeshTLSAuthentication", "name": "clients"}],
            "mode": "audit"}),
        doc("HTTPLocalRateLimitPolicy", "web-limit", {
            "targetRef": {"group": GROUP, "kind": "Server", "name": "web-http"},
            "total": {"requestsPerSecond": 100}, "identity": {"requestsPerSecond": 20.5},
            "overrides": [{"requestsPerSecond": 50,
                           "clientRefs": [{"kind": "ServiceAccount", "name": "client"}]}]}),
    ]  # fmt: skip


def test_the_crds_render_the_same_every_time() -> None:
    first = weft("install", "--crds")
    assert first == weft("install", "--crds")
    docs = [d for d in yaml.safe_load_all(first) if d]
    assert [d["spec"]["names"]["kind"] for d in docs] == list(NAMES)
    assert all(d["kind"] == "CustomResourceDefinition" for d in docs)


async def test_the_crds_install_and_the_server_agrees_with_weft(kube: Kube, crds: str) -> None:
    ns = kube.namespace
    docs = objects(ns)
    for doc in docs:
        parse_resource(doc)  # Weft accepts each
    out = kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    assert out.count("created") == len(docs), out
    # kubectl get prints the CRDs' columns
    table = kube.kubectl("get", "srv", "-n", ns)
    assert table.split("\n")[0].split() == ["NAME", "PORT", "PROTOCOL", "ACCESS", "AGE"]
    assert "web-http" in table and "HTTP/1" in table
    every = kube.kubectl("get", "weft", "-n", ns, "-o", "name")  # the category
    assert "server.policy.weft.io/web-http" in every
    assert "authorizationpolicy.policy.weft.io/web-clients" in every
    # the control plane's informers read them
    state = KubeState(connect(kube.kubeconfig), ("Server", "AuthorizationPolicy"), namespace=ns)
    state.start()
    try:
        await asyncio.wait_for(state.wait_synced(("Server", "AuthorizationPolicy")), 30)
        assert sorted(s["metadata"]["name"] for s in state.list("Server", ns)) == [
            "web-admin",
            "web-http",
        ]
        assert [p["spec"]["mode"] for p in state.list("AuthorizationPolicy", ns)] == ["audit"]
    finally:
        await state.stop()


@pytest.mark.parametrize(
    "kind,spec,field",
    [
        ("Server", {"podSelector": {}, "port": 80, "proxyProtocol": "HTTP/3"},
         "spec.proxyProtocol"),
        ("Server", {"podSelector": {}}, "spec.port"),
        ("Server", {"podSelector": {}, "port": 80, "bogus": 1}, "bogus"),
        ("Server", {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]},
                    "port": 80}, "spec.podSelector.matchExpressions[0].operator"),
        ("MeshTLSAuthentication", {}, "set exactly one of identities and identityRefs"),
        ("MeshTLSAuthentication", {"identities": ["a.b"],
                                   "identityRefs": [{"kind": "ServiceAccount"}]},
         "set exactly one of identities and identityRefs"),
        ("NetworkAuthentication", {"networks": []}, "spec.networks"),
        ("AuthorizationPolicy", {"targetRef": {"kind": "Server", "name": "x"}},
         "spec.requiredAuthenticationRefs"),
        ("HTTPLocalRateLimitPolicy", {"targetRef": {"kind": "Server", "name": "x"},
                                      "total": {"requestsPerSecond": 0}},
         "spec.total.requestsPerSecond"),
    ],
)  # fmt: skip
def test_the_server_refuses_what_weft_refuses_naming_the_field(
    kube: Kube, crds: str, kind: str, spec: dict[str, Any], field: str
) -> None:
    doc = {
        "apiVersion": f"{GROUP}/v1beta1",
        "kind": kind,
        "metadata": {"name": "bad", "namespace": kube.namespace},
        "spec": spec,
    }
    with pytest.raises(Exception):  # noqa: B017 - Weft refuses it too (InvalidResources)
        parse_resource(doc)
    done = subprocess.run(
        [str(kube.rig.kubectl), "--kubeconfig", str(kube.kubeconfig), "apply", "-f", "-"],
        input=yaml.safe_dump(doc), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0 and field in done.stderr, done.stderr
