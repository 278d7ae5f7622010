"""Unit and property tests for weft.resources: models, validation errors with field paths."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.resources import (
    Deployment,
    InvalidResources,
    Namespace,
    Pod,
    Service,
    parse_resource,
    parse_status,
    resolve_kind,
    selector_matches,
)
from weft.resources.models import RollingUpdate


def deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web", "version": "v1"}},
                "spec": {
                    "serviceAccountName": "web",
                    "containers": [
                        {
                            "name": "web",
                            "image": "example/web:1",
                            "command": ["python3", "-m", "http.server"],
                            "args": ["8080"],
                            "env": [{"name": "MODE", "value": "fast"}],
                            "ports": [{"name": "http", "containerPort": 8080}],
                        }
                    ],
                },
            },
        },
    }


def service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "appProtocol": "http"}],
        },
    }


def pod() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-6b7f9c8d5f-abcde",
            "labels": {"app": "web", "pod-template-hash": "6b7f9c8d5f"},
            "annotations": {"weft.io/deployment": "web", "weft.io/proxy-admin": "10.244.0.5:4191"},
        },
        "spec": {"containers": [{"name": "web", "command": ["/bin/web"]}], "nodeName": "local"},
        "status": {"phase": "Running", "podIP": "10.244.0.5", "ready": True},
    }


def errors_of(doc: Any) -> dict[str, str]:
    with pytest.raises(InvalidResources) as info:
        parse_resource(doc)
    out: dict[str, str] = {}
    for e in info.value.errors:
        out[e.path] = f"{out[e.path]}; {e.message}" if e.path in out else e.message
    return out


# -- valid documents ------------------------------------------------------------------------


def test_deployment_parses_with_defaults() -> None:
    d = parse_resource(deployment())
    assert isinstance(d, Deployment)
    assert d.metadata.namespace == "shop"
    assert d.spec.replicas == 2
    assert dict(d.spec.selector) == {"app": "web"}
    container = d.spec.template.spec.containers[0]
    assert container.argv == ("python3", "-m", "http.server", "8080")
    assert container.port_number("http") == 8080
    assert d.spec.template.spec.service_account_name == "web"
    assert d.spec.template.spec.termination_grace_period_seconds == 30
    assert d.spec.strategy == "RollingUpdate"
    out = d.to_dict()
    assert out["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
    }
    assert out["spec"]["template"]["spec"]["containers"][0]["ports"] == [
        {"containerPort": 8080, "protocol": "TCP", "name": "http"}
    ]


def test_to_dict_round_trips() -> None:
    for doc in (deployment(), service(), pod()):
        once = parse_resource(doc).to_dict()
        assert parse_resource(once).to_dict() == once


def test_namespace_defaults_to_default() -> None:
    doc = service()
    del doc["metadata"]["namespace"]
    assert parse_resource(doc).metadata.namespace == "default"


def test_service_defaults_target_port_and_protocol() -> None:
    doc = service()
    doc["spec"]["ports"] = [{"port": 8080, "appProtocol": "opaque"}]
    s = parse_resource(doc)
    assert isinstance(s, Service)
    port = s.spec.ports[0]
    assert (port.target_port, port.protocol, port.opaque) == (8080, "TCP", True)
    assert s.spec.port(8080) is port
    assert s.spec.port(9) is None


def test_numeric_string_target_port_is_a_number() -> None:
    doc = service()
    doc["spec"]["ports"][0]["targetPort"] = "9090"
    s = parse_resource(doc)
    assert isinstance(s, Service)
    assert s.spec.ports[0].target_port == 9090


def test_kubernetes_fields_weft_does_not_use_are_kept() -> None:
    doc = deployment()
    c = doc["spec"]["template"]["spec"]["containers"][0]
    c["resources"] = {"limits": {"cpu": "100m"}}
    c["readinessProbe"] = {"httpGet": {"path": "/", "port": 8080}}
    doc["spec"]["template"]["spec"]["volumes"] = [{"name": "x", "emptyDir": {}}]
    doc["spec"]["revisionHistoryLimit"] = 3
    out = parse_resource(doc).to_dict()
    spec = out["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"] == {"limits": {"cpu": "100m"}}
    assert spec["containers"][0]["readinessProbe"]["httpGet"]["port"] == 8080
    assert spec["volumes"] == [{"name": "x", "emptyDir": {}}]
    assert out["spec"]["revisionHistoryLimit"] == 3


def test_pod_status_and_helpers() -> None:
    p = parse_resource(pod())
    assert isinstance(p, Pod)
    assert p.meshed and p.serving and p.deployment == "web"
    status = p.to_dict()["status"]
    assert status["conditions"] == [{"type": "Ready", "status": "True"}]
    assert status["terminating"] is False
    terminating = pod()
    terminating["status"]["terminating"] = True
    assert not parse_resource(terminating).serving  # type: ignore[attr-defined]


def test_ready_condition_alone_means_ready() -> None:
    status = parse_status(
        "Pod", {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    )
    assert status["ready"] is True


def test_namespace_is_cluster_scoped() -> None:
    ns = parse_resource({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    assert isinstance(ns, Namespace)
    assert ns.metadata.namespace is None
    assert ns.to_dict()["status"] == {"phase": "Active"}


def test_resolve_kind_aliases() -> None:
    assert resolve_kind("po").kind == "Pod"
    assert resolve_kind("deploy").kind == "Deployment"
    assert resolve_kind("Services").kind == "Service"
    assert resolve_kind("ns").kind == "Namespace"
    with pytest.raises(ValueError, match=r"unknown kind 'gadgets'; known kinds: .*Deployment"):
        resolve_kind("gadgets")


def test_selector_matching() -> None:
    assert selector_matches({"app": "web"}, {"app": "web", "v": "1"})
    assert not selector_matches({"app": "web"}, {"app": "api"})
    assert not selector_matches({}, {"app": "web"})
    assert not selector_matches(None, {"app": "web"})


def test_rolling_update_scaling_rounds_like_kubernetes() -> None:
    assert RollingUpdate.scaled("25%", 10, round_up=True) == 3
    assert RollingUpdate.scaled("25%", 10, round_up=False) == 2
    assert RollingUpdate.scaled(2, 10, round_up=True) == 2


# -- every field path ------------------------------------------------------------------------


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set ``a.b[0].c`` in ``doc``; a value of ``...`` deletes the field."""
    parts: list[str | int] = []
    for token in path.split("."):
        while "[" in token:
            head, _, rest = token.partition("[")
            if head:
                parts.append(head)
            idx, _, token = rest.partition("]")
            parts.append(int(idx))
        if token:
            parts.append(token)
    node: Any = doc
    for p in parts[:-1]:
        node = node[p]
    if value is ...:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value


C0 = "spec.template.spec.containers[0]"

DEPLOYMENT_CASES = [
    ("metadata.name", ..., "metadata.name", "required field is missing"),
    ("metadata.name", "Web", "metadata.name", 'invalid name "Web"'),
    ("metadata.name", 7, "metadata.name", "must be a string, got integer 7"),
    ("metadata.namespace", "Shop_1", "metadata.namespace", "invalid name"),
    ("metadata.labels", {"app": 1}, "metadata.labels.app", "must be a string, got integer 1"),
    ("metadata.labels", {"app": "a b"}, "metadata.labels.app", "invalid label value"),
    ("metadata.labels", {"-bad": "x"}, 'metadata.labels["-bad"]', "invalid key"),
    ("metadata.annotations", {"a": None}, "metadata.annotations.a", "got null"),
    ("metadata.colour", "red", "metadata.colour", "unknown field"),
    ("spek", {}, "spek", "unknown field"),
    ("spec", ..., "spec", "required field is missing"),
    ("spec.replicas", -1, "spec.replicas", "must be >= 0, got -1"),
    ("spec.replicas", "3", "spec.replicas", 'must be an integer, got string "3"'),
    ("spec.replicas", True, "spec.replicas", "must be an integer, got boolean"),
    ("spec.replica", 3, "spec.replica", "unknown field; known fields here:"),
    ("spec.selector", ..., "spec.selector", "required field is missing"),
    ("spec.selector", {"matchLabels": {"app": "api"}}, "spec.template.metadata.labels",
     "must match spec.selector.matchLabels: app=api is missing"),
    ("spec.selector", {"matchExpressions": []}, "spec.selector.matchExpressions", "unknown field"),
    ("spec.strategy", {"type": "Blue"}, "spec.strategy.type", "must be one of RollingUpdate"),
    ("spec.strategy", {"rollingUpdate": {"maxSurge": "x%"}},
     "spec.strategy.rollingUpdate.maxSurge", "percentage"),
    ("spec.strategy", {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}},
     "spec.strategy.rollingUpdate.maxUnavailable", "may not be 0"),
    ("spec.template", ..., "spec.template", "required field is missing"),
    ("spec.template.spec.containers", [], "spec.template.spec.containers", "at least one"),
    ("spec.template.spec.containers", "web", "spec.template.spec.containers", "must be a list"),
    ("spec.template.spec.restartPolicy", "Never", "spec.template.spec.restartPolicy",
     "must be one of Always"),
    ("spec.template.spec.terminationGracePeriodSeconds", -5,
     "spec.template.spec.terminationGracePeriodSeconds", "must be >= 0"),
    ("spec.template.spec.serviceAccountName", "A!", "spec.template.spec.serviceAccountName",
     "invalid name"),
    (f"{C0}.name", ..., f"{C0}.name", "required field is missing"),
    (f"{C0}.command", ..., f"{C0}.command", "the local runtime runs the command"),
    (f"{C0}.command", [], f"{C0}.command", "must not be empty"),
    (f"{C0}.command", "python3 app.py", f"{C0}.command", "must be a list"),
    (f"{C0}.args", ["a", 1], f"{C0}.args[1]", "must be a string"),
    (f"{C0}.env[0].name", "1X", f"{C0}.env[0].name", "invalid environment variable name"),
    (f"{C0}.env[0].value", 5, f"{C0}.env[0].value", "quote it in YAML"),
    (f"{C0}.env", [{"name": "A", "valueFrom": {"fieldRef": {}}}], f"{C0}.env[0].valueFrom",
     "not supported"),
    (f"{C0}.env", [{"name": "A"}, {"name": "A"}], f"{C0}.env[1].name", "duplicate"),
    (f"{C0}.ports[0].containerPort", 0, f"{C0}.ports[0].containerPort", "must be >= 1"),
    (f"{C0}.ports[0].containerPort", 70000, f"{C0}.ports[0].containerPort", "must be <= 65535"),
    (f"{C0}.ports[0].containerPort", ..., f"{C0}.ports[0].containerPort", "required"),
    (f"{C0}.ports[0].name", "this-name-is-too-long", f"{C0}.ports[0].name", "invalid port name"),
    (f"{C0}.ports[0].protocol", "HTTP", f"{C0}.ports[0].protocol", "must be one of TCP"),
    (f"{C0}.imagePullPolicy", ["x", float("nan")], f"{C0}.imagePullPolicy[1]", "finite"),
    (f"{C0}.workdir", "/", f"{C0}.workdir", "unknown field"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "error_path", "message"), DEPLOYMENT_CASES)
def test_deployment_field_errors(path: str, value: Any, error_path: str, message: str) -> None:
    doc = deployment()
    _set(doc, path, value)
    errors = errors_of(doc)
    assert error_path in errors, errors
    assert message in errors[error_path]


SERVICE_CASES = [
    ("spec.ports", ..., "spec.ports", "required field is missing"),
    ("spec.ports", [], "spec.ports", "at least one port"),
    ("spec.ports[0].port", 0, "spec.ports[0].port", "must be >= 1, got 0"),
    ("spec.ports[0].port", "80", "spec.ports[0].port", "must be an integer"),
    ("spec.ports[0].targetPort", 99999, "spec.ports[0].targetPort", "must be <= 65535"),
    ("spec.ports[0].targetPort", "HTTP!", "spec.ports[0].targetPort", "invalid port name"),
    ("spec.ports", [{"port": 80}, {"port": 81}], "spec.ports[0].name", "required"),
    ("spec.ports", [{"port": 80, "name": "a"}, {"port": 80, "name": "b"}], "spec.ports[1].port",
     "duplicate port 80"),
    ("spec.ports", [{"port": 80, "name": "a"}, {"port": 81, "name": "a"}], "spec.ports[1].name",
     "duplicate port name"),
    ("spec.type", "ExternalName", "spec.type", "must be one of ClusterIP"),
    ("spec.clusterIP", "None", "spec.clusterIP", "headless"),
    ("spec.clusterIP", "10.96.0.999", "spec.clusterIP", "must be an IP address"),
    ("spec.selector", {"app": 3}, "spec.selector.app", "must be a string"),
    ("metadata.name", "1web", "metadata.name", "starting with a letter"),
    ("apiVersion", "apps/v1", "apiVersion", 'must be "v1" for kind Service'),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "error_path", "message"), SERVICE_CASES)
def test_service_field_errors(path: str, value: Any, error_path: str, message: str) -> None:
    doc = service()
    _set(doc, path, value)
    errors = errors_of(doc)
    assert error_path in errors, errors
    assert message in errors[error_path]


POD_CASES = [
    ("status.phase", "Dancing", "status.phase", "must be one of Pending, Running"),
    ("status.podIP", "10.244.0", "status.podIP", "must be an IP address"),
    ("status.ready", "yes", "status.ready", "must be true or false"),
    ("status.terminating", 1, "status.terminating", "must be true or false"),
    ("status.containerStatuses", [{"name": "web", "restartCount": -1}],
     "status.containerStatuses[0].restartCount", "must be >= 0"),
    ("status.containerStatuses", [{"restartCount": 1}], "status.containerStatuses[0].name",
     "required"),
    ("status.conditions", [{"type": "Ready", "status": "Maybe"}], "status.conditions[0].status",
     "must be one of True, False, Unknown"),
    ("spec.restartPolicy", "Sometimes", "spec.restartPolicy", "must be one of Always, OnFailure"),
    ("spec.containers", [{"name": "a", "command": ["x"]}, {"name": "a", "command": ["y"]}],
     "spec.containers[1].name", "duplicate container name"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "error_path", "message"), POD_CASES)
def test_pod_field_errors(path: str, value: Any, error_path: str, message: str) -> None:
    doc = pod()
    _set(doc, path, value)
    errors = errors_of(doc)
    assert error_path in errors, errors
    assert message in errors[error_path]


def test_pod_restart_policy_is_free_outside_templates() -> None:
    doc = pod()
    doc["spec"]["restartPolicy"] = "Never"
    assert parse_resource(doc).spec.restart_policy == "Never"  # type: ignore[attr-defined]


def test_every_error_is_reported_at_once() -> None:
    doc = deployment()
    doc["spec"]["replicas"] = -1
    doc["metadata"]["labels"] = {"version": 1}
    doc["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = 0
    errors = errors_of(doc)
    assert set(errors) >= {
        "spec.replicas",
        "metadata.labels.version",
        f"{C0}.ports[0].containerPort",
    }


def test_kind_and_api_version_errors() -> None:
    assert "required field is missing" in errors_of({"apiVersion": "v1"})["kind"]
    assert 'unknown kind "Gadget"' in errors_of({"apiVersion": "v1", "kind": "Gadget"})["kind"]
    assert errors_of({"kind": "Pod"})["apiVersion"] == "required field is missing"
    assert "a document must be a mapping" in errors_of(["not", "a", "mapping"])[""]


def test_status_parse_errors_name_the_field() -> None:
    with pytest.raises(InvalidResources) as info:
        parse_status("Pod", {"phase": "Running", "podIP": "nope"})
    assert [e.path for e in info.value.errors] == ["status.podIP"]
    with pytest.raises(InvalidResources) as info:
        parse_status("Deployment", {"readyReplicas": -1})
    assert info.value.errors[0].path == "status.readyReplicas"
    with pytest.raises(InvalidResources):
        parse_status("Pod", "Running")


def test_error_strings_name_source_document_and_line() -> None:
    doc = service()
    doc["spec"]["ports"][0]["port"] = 0
    with pytest.raises(InvalidResources) as info:
        parse_resource(doc)
    located = info.value.errors[0].located(document=1, source="web.yaml", line=12)
    assert str(located) == "web.yaml:12, document 2: spec.ports[0].port: must be >= 1, got 0"
    assert located.to_json() == {
        "path": "spec.ports[0].port",
        "message": "must be >= 1, got 0",
        "document": 1,
        "source": "web.yaml",
        "line": 12,
    }


# -- properties ------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=True, allow_infinity=True),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_parse_accepts_or_raises_invalid_resources_only(value: Any) -> None:
    try:
        parse_resource(value)
    except InvalidResources as exc:
        assert exc.errors
        for e in exc.errors:
            assert isinstance(e.path, str) and e.message


def _mutations() -> st.SearchStrategy[tuple[str, Any]]:
    paths = [case[0] for case in DEPLOYMENT_CASES if "[" not in case[0] or "[0]" in case[0]]
    return st.tuples(st.sampled_from(paths), json_values)


@settings(max_examples=300, deadline=None)
@given(st.lists(_mutations(), max_size=4))
def test_mutated_deployments_validate_or_name_fields(mutations: list[tuple[str, Any]]) -> None:
    doc = deployment()
    for path, value in mutations:
        try:
            _set(doc, path, copy.deepcopy(value))
        except (KeyError, IndexError, TypeError):
            continue
    try:
        d = parse_resource(doc)
    except InvalidResources as exc:
        assert all(isinstance(e.path, str) for e in exc.errors)
        return
    # whatever validates must survive its own round trip
    assert parse_resource(d.to_dict()).to_dict() == d.to_dict()


# -- securityContext --------------------------------------------------------------------------


def _with_security(pod_sc: Any = None, container_sc: Any = None) -> dict[str, Any]:
    doc = deployment()
    spec = doc["spec"]["template"]["spec"]
    if pod_sc is not None:
        spec["securityContext"] = pod_sc
    if container_sc is not None:
        spec["containers"][0]["securityContext"] = container_sc
    return doc


def test_security_context_parses_and_round_trips() -> None:
    doc = _with_security(
        {"runAsUser": 1000, "runAsGroup": 2000, "fsGroup": 3000},
        {"privileged": False, "runAsUser": 1001, "capabilities": {"drop": ["ALL"]}},
    )
    d = parse_resource(doc)
    assert isinstance(d, Deployment)
    spec = d.spec.template.spec
    assert spec.security_context is not None and spec.security_context.run_as_user == 1000
    container = spec.containers[0]
    assert container.security_context is not None
    assert (container.security_context.run_as_user, container.security_context.privileged) == (
        1001,
        False,
    )
    assert spec.root_containers == []
    out = d.to_dict()["spec"]["template"]["spec"]
    assert out["securityContext"] == {"runAsUser": 1000, "runAsGroup": 2000, "fsGroup": 3000}
    assert out["containers"][0]["securityContext"] == {
        "runAsUser": 1001,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert parse_resource(d.to_dict()) == d


@pytest.mark.parametrize(
    ("pod_sc", "container_sc", "root"),
    [
        (None, None, []),
        ({"runAsUser": 0}, None, ["web"]),
        (None, {"runAsUser": 0}, ["web"]),
        (None, {"privileged": True}, ["web"]),
        (None, {"privileged": True, "runAsUser": 0}, ["web"]),
        ({"runAsUser": 0}, {"runAsUser": 5}, []),  # the container's value wins
        ({"runAsUser": 5}, {"runAsUser": 0}, ["web"]),
        ({"runAsGroup": 0}, None, []),  # group root is not root
    ],
)
def test_which_containers_run_as_root(pod_sc: Any, container_sc: Any, root: list[str]) -> None:
    d = parse_resource(_with_security(pod_sc, container_sc))
    assert isinstance(d, Deployment)
    assert d.spec.template.spec.root_containers == root


def test_security_context_errors_name_the_field() -> None:
    pod_path = "spec.template.spec.securityContext"
    c_path = "spec.template.spec.containers[0].securityContext"
    errors = errors_of(_with_security({"runAsUser": -1, "runAsGroup": "0", "privileged": True}))
    assert "must be >= 0" in errors[f"{pod_path}.runAsUser"]
    assert "must be an integer" in errors[f"{pod_path}.runAsGroup"]
    assert "not a pod-level field" in errors[f"{pod_path}.privileged"]
    errors = errors_of(
        _with_security(None, {"privileged": "yes", "runAsUser": 2**31, "runAsNonRot": True})
    )
    assert "must be true or false" in errors[f"{c_path}.privileged"]
    assert "must be <= 2147483647" in errors[f"{c_path}.runAsUser"]
    assert "unknown field" in errors[f"{c_path}.runAsNonRot"]
    assert "must be a mapping" in errors_of(_with_security("root"))[pod_path]
    # combinations no container can run with
    errors = errors_of(_with_security({"runAsNonRoot": True}, {"runAsUser": 0}))
    assert "runAsNonRoot is true" in errors[f"{c_path}.runAsUser"]
    errors = errors_of(_with_security({"runAsNonRoot": True}, {"privileged": True}))
    assert "runAsNonRoot is true" in errors[f"{c_path}.privileged"]
    errors = errors_of(_with_security(None, {"privileged": True, "runAsUser": 1000}))
    assert "run as root on the local runtime" in errors[f"{c_path}.privileged"]
    # a container's runAsNonRoot: false overrides the pod's true
    parse_resource(_with_security({"runAsNonRoot": True}, {"runAsNonRoot": False, "runAsUser": 0}))
