"""The embedded Kubernetes API's parts without I/O: selectors, the three patch types, tables."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weft.control.kubeapi import discovery, tables
from weft.control.kubeapi.patch import (
    PatchError,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
from weft.control.kubeapi.selectors import SelectorError, matcher, parse_labels


def obj(labels: dict[str, str], **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "shop", "labels": labels},
        "spec": {"nodeName": "node-1"},
        "status": status,
    }


def test_label_selectors_as_the_api_reads_them() -> None:
    cases = {
        "app=web": ({"app": "web"}, {"app": "api"}),
        "app==web,tier": ({"app": "web", "tier": "x"}, {"app": "web"}),
        "app!=web": ({"app": "api"}, {"app": "web"}),
        "app in (web, api)": ({"app": "api"}, {"app": "db"}),
        "app notin (web),!canary": ({"app": "db"}, {"app": "db", "canary": "1"}),
        "example.com/team=a": ({"example.com/team": "a"}, {}),
    }
    for text, (yes, no) in cases.items():
        m = matcher("Pod", text, None)
        assert m(obj(yes)) and not m(obj(no)), text
    assert matcher("Pod", "", "")(obj({}))


def test_field_selectors_on_the_fields_the_api_supports() -> None:
    m = matcher("Pod", None, "metadata.namespace=shop,status.phase!=Failed,spec.nodeName=node-1")
    assert m(obj({}, phase="Running")) and not m(obj({}, phase="Failed"))
    with pytest.raises(SelectorError, match="field label not supported"):
        matcher("Service", None, "status.phase=Running")
    for bad in ("app in web", "=x", "a b=c", "app=(x)", "app in ()"):
        with pytest.raises(SelectorError):
            parse_labels(bad)


@given(
    st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from(["1", "2"])),
    st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from(["1", "2"]), max_size=2),
)
def test_an_equality_selector_selects_exactly_the_superset_labels(
    labels: dict[str, str], wanted: dict[str, str]
) -> None:
    text = ",".join(f"{k}={v}" for k, v in wanted.items())
    assert matcher("Pod", text, None)(obj(labels)) == all(
        labels.get(k) == v for k, v in wanted.items()
    )


def test_merge_and_json_patches() -> None:
    doc = {"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"ports": [1, 2]}}
    assert merge_patch(
        doc, {"metadata": {"labels": {"a": None, "c": "3"}}, "spec": {"ports": [3]}}
    ) == {"metadata": {"labels": {"b": "2", "c": "3"}}, "spec": {"ports": [3]}}
    assert doc["metadata"]["labels"] == {"a": "1", "b": "2"}  # not mutated
    assert json_patch(doc, [{"op": "replace", "path": "/spec/ports/0", "value": 9}])["spec"] == {
        "ports": [9, 2]
    }
    with pytest.raises(PatchError) as info:
        json_patch(doc, [{"op": "test", "path": "/spec/ports/0", "value": 5}])
    assert info.value.status == 422
    with pytest.raises(PatchError) as info:
        json_patch(doc, {"op": "add"})
    assert info.value.status == 400


def test_strategic_merge_patch_merges_keyed_lists_as_kubectl_expects() -> None:
    deploy = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": "a:1",
                            "env": [{"name": "X", "value": "1"}],
                            "ports": [{"containerPort": 80}],
                        },
                        {"name": "side", "image": "s:1"},
                    ]
                }
            }
        },
        "metadata": {"finalizers": ["a"]},
    }
    patch = {
        "$setElementOrder/containers": [{"name": "app"}, {"name": "side"}],
        "metadata": {"finalizers": ["b"]},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "app", "image": "a:2", "env": [{"name": "Y", "value": "2"}]},
                        {"name": "side", "$patch": "delete"},
                        {"name": "new", "image": "n:1"},
                    ]
                }
            }
        },
    }
    out = strategic_merge_patch("Deployment", deploy, patch)
    containers = out["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["app", "new"]
    assert containers[0]["image"] == "a:2" and containers[0]["ports"] == [{"containerPort": 80}]
    assert containers[0]["env"] == [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]
    assert out["metadata"]["finalizers"] == ["a", "b"]
    # Service ports merge by port; $patch: replace on a list replaces it
    svc = {"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}}
    merged = strategic_merge_patch(
        "Service", svc, {"spec": {"ports": [{"port": 80, "name": "web"}]}}
    )
    assert merged["spec"]["ports"] == [{"port": 80, "name": "web"}, {"port": 443, "name": "https"}]
    replaced = strategic_merge_patch(
        "Service", svc, {"spec": {"ports": [{"$patch": "replace"}, {"port": 8080}]}}
    )
    assert replaced["spec"]["ports"] == [{"port": 8080}]
    with pytest.raises(PatchError, match="merge key"):
        strategic_merge_patch("Pod", {"spec": {}}, {"spec": {"containers": [{"image": "x"}]}})


def test_tables_have_kubernetes_columns() -> None:
    pod = {
        "metadata": {"name": "web-1", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
        "status": {
            "phase": "Running",
            "podIP": "10.244.0.2",
            "containerStatuses": [
                {"ready": True, "restartCount": 2},
                {"ready": False, "restartCount": 1},
            ],
        },
    }
    t = tables.table("Pod", [pod], "7", now=1767225600 + 3725)
    assert [c["name"] for c in t["columnDefinitions"]] == [
        "Name",
        "Ready",
        "Status",
        "Restarts",
        "Age",
        "IP",
        "Node",
    ]
    assert t["rows"][0]["cells"] == ["web-1", "1/2", "Running", 3, "62m", "10.244.0.2", "n1"]
    assert t["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    assert [tables.human_duration(s) for s in (5, 130, 3725, 30000, 200000, 10**8)] == [
        "5s",
        "2m10s",
        "62m",
        "8h",
        "2d7h",
        "3y",
    ]


def test_discovery_lists_every_kind_under_its_group_version() -> None:
    apps = discovery.resource_list("apps", "v1")
    assert apps is not None
    names = {r["name"] for r in apps["resources"]}
    assert {"deployments", "deployments/status", "deployments/scale"} <= names
    core = discovery.resource_list("", "v1")
    assert core is not None and {"pods", "pods/log", "services", "namespaces"} <= {
        r["name"] for r in core["resources"]
    }
    groups = {g["name"] for g in discovery.group_list()["groups"]}
    assert {"apps", "discovery.k8s.io", "gateway.networking.k8s.io", "policy.weft.io"} <= groups
    assert discovery.resource_list("apps", "v2") is None
