"""``weft install``'s control plane: values, certificates and the objects, offline.

Every object is validated strictly against the official OpenAPI schemas of the supported
Kubernetes versions (kubernetes-validate); the real API server's acceptance is tests/kube's."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from weft.identity.ca import Authority, cert_pem, key_pem, load_certs_pem
from weft.install import certs as certs_mod
from weft.install import controlplane, render
from weft.install.gatewayapi import gateway_crds
from weft.install.values import Values, ValuesError, dump, load_file, resolve

SUPPORTED = ("1.29.0", "1.33.0", "1.37.0")
NOW = time.time()
CERTS = certs_mod.make("cluster.local", now=NOW)


def weft(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weft", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def by(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (obj,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def container(deploy: dict[str, Any]) -> dict[str, Any]:
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    return dict(c)


def test_every_object_is_valid_for_every_supported_version() -> None:
    for ha in (False, True):
        objs = controlplane.objects(resolve({"ha": ha}), CERTS)
        for obj in objs:
            for version in SUPPORTED:
                kubernetes_validate.validate(obj, version, strict=True)
        names = {(o["kind"], o["metadata"]["name"]) for o in objs}
        assert len(names) == len(objs)  # no object twice


def test_the_same_values_and_certificates_print_the_same_bytes() -> None:
    values = resolve({"proxy-log-level": "debug"})
    first = render(controlplane.objects(values, CERTS))
    assert first == render(controlplane.objects(resolve({"proxy-log-level": "debug"}), CERTS))
    other = render(controlplane.objects(resolve({}), CERTS))
    assert other != first
    # apply order: the namespace first, the webhook last (the injector exists when called)
    kinds = [d["kind"] for d in yaml.safe_load_all(first) if d]
    assert kinds[0] == "Namespace" and kinds[-1] == "MutatingWebhookConfiguration"


def test_the_control_plane_deployments() -> None:
    objs = controlplane.objects(resolve({}), CERTS)
    control = by(objs, "Deployment", "weft-control")
    c = container(control)
    assert c["args"][:4] == ["control", "--kubeconfig", "in-cluster", "--leader-elect"]
    assert c["image"] == f"weft/control:{Values().image_tag}"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == "api"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    pod = control["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert control["spec"]["template"]["metadata"]["annotations"]["weft.io/inject"] == "disabled"
    assert "preferredDuringSchedulingIgnoredDuringExecution" in pod["affinity"]["podAntiAffinity"]
    assert control["spec"]["replicas"] == 1
    # the issuer and anchors mounted where the flags say
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert c["args"][c["args"].index("--issuer-key") + 1].startswith(mounts["issuer"])
    assert c["args"][c["args"].index("--trust-anchors") + 1].startswith(mounts["trust-roots"])
    injector = container(by(objs, "Deployment", "weft-injector"))
    assert injector["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert injector["args"][injector["args"].index("--proxy-image") + 1] == (
        f"weft/proxy:{Values().image_tag}"
    )
    for component in ("control", "injector"):
        pdb = by(objs, "PodDisruptionBudget", f"weft-{component}")
        assert pdb["spec"]["maxUnavailable"] == 1


def test_ha_spreads_three_replicas_and_an_explicit_value_still_wins() -> None:
    objs = controlplane.objects(resolve({"ha": True}), CERTS)
    for name in ("weft-control", "weft-injector"):
        deploy = by(objs, "Deployment", name)
        assert deploy["spec"]["replicas"] == 3
        anti = deploy["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        assert "requiredDuringSchedulingIgnoredDuringExecution" in anti
    values = resolve({"ha": True}, {"controller-replicas": "5"})
    assert values.controller_replicas == 5 and values.injector_replicas == 3
    assert values.recorded() == {"controller-replicas": 5, "ha": True}


def test_rbac_is_least_privilege() -> None:
    objs = controlplane.objects(resolve({}), CERTS)
    control = by(objs, "ClusterRole", "weft-control")["rules"]
    writes = [
        (tuple(r["resources"]), v)
        for r in control
        for v in r["verbs"]
        if v not in ("get", "list", "watch")
    ]
    assert sorted(writes) == sorted([
        (("httproutes/status", "grpcroutes/status"), "patch"),
        (("httproutes/status", "grpcroutes/status"), "update"),
        (("tokenreviews",), "create"),
    ])  # fmt: skip
    for obj in objs:
        for rule in obj.get("rules", []):
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]
            assert "secrets" not in rule["resources"]  # the issuer is mounted, not read
    assert by(objs, "ClusterRole", "weft-injector")["rules"] == [
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}
    ]
    lease = by(objs, "Role", "weft-control-leader-election")["rules"]
    assert {"get", "update"} <= set(lease[1]["verbs"]) and lease[1]["resourceNames"] == [
        "weft-control"
    ]


def test_the_webhook_ignores_failures_skips_its_namespace_and_trusts_the_injector() -> None:
    objs = controlplane.objects(resolve({}), CERTS)
    (hook,) = by(objs, "MutatingWebhookConfiguration", "weft-proxy-injector")["webhooks"]
    assert hook["failurePolicy"] == "Ignore"
    excluded = hook["namespaceSelector"]["matchExpressions"][0]
    assert excluded["operator"] == "NotIn" and "weft-system" in excluded["values"]
    assert hook["clientConfig"]["service"] == {
        "name": "weft-injector", "namespace": "weft-system", "path": "/inject", "port": 443,
    }  # fmt: skip
    assert base64.b64decode(hook["clientConfig"]["caBundle"]) == CERTS.injector_ca
    secret = by(objs, "Secret", "weft-injector-tls")
    assert base64.b64decode(secret["data"]["tls.crt"]) == CERTS.injector_cert
    namespace = by(objs, "Namespace", "weft-system")
    assert namespace["metadata"]["annotations"]["weft.io/inject"] == "disabled"


def test_supplied_identity_files_are_installed_as_linkerd_keeps_them(tmp_path: Path) -> None:
    anchor = Authority.new_anchor("example.org", now=NOW)
    issuer = anchor.new_issuer("example.org", now=NOW)
    files = {"anchors.pem": cert_pem(anchor.cert), "issuer.crt": cert_pem(issuer.cert),
             "issuer.key": key_pem(issuer.key)}  # fmt: skip
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    done = weft(
        "install", "--trust-domain", "example.org",
        "--identity-trust-anchors-file", str(tmp_path / "anchors.pem"),
        "--identity-issuer-certificate-file", str(tmp_path / "issuer.crt"),
        "--identity-issuer-key-file", str(tmp_path / "issuer.key"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    objs = [d for d in yaml.safe_load_all(done.stdout) if d]
    roots = by(objs, "ConfigMap", "weft-identity-trust-roots")["data"]["ca-bundle.crt"]
    assert roots.encode() == files["anchors.pem"]
    issuer_secret = by(objs, "Secret", "weft-identity-issuer")
    assert issuer_secret["type"] == "kubernetes.io/tls"
    assert base64.b64decode(issuer_secret["data"]["tls.key"]) == files["issuer.key"]
    config = by(objs, "ConfigMap", "weft-config")["data"]
    assert yaml.safe_load(config["values.yaml"]) == {"trust-domain": "example.org"}
    # an issuer from another anchor is refused, naming the problem
    other = Authority.new_anchor("example.org", now=NOW)
    (tmp_path / "anchors.pem").write_bytes(cert_pem(other.cert))
    done = weft(
        "install",
        "--identity-trust-anchors-file", str(tmp_path / "anchors.pem"),
        "--identity-issuer-certificate-file", str(tmp_path / "issuer.crt"),
        "--identity-issuer-key-file", str(tmp_path / "issuer.key"),
    )  # fmt: skip
    assert done.returncode == 2 and "not signed by any trust anchor" in done.stderr
    assert done.stdout == ""
    done = weft("install", "--identity-trust-anchors-file", str(tmp_path / "anchors.pem"))
    assert done.returncode == 2 and "all of the files" in done.stderr


def test_generated_certificates_chain_and_name_the_injector_service() -> None:
    CERTS.check(now=NOW)
    expiry = CERTS.expiry()
    assert expiry["issuer"] - NOW == pytest.approx(365 * 86400, abs=600)
    assert min(v for k, v in expiry.items() if k.startswith("anchor")) > expiry["issuer"]
    (cert,) = load_certs_pem(CERTS.injector_cert)[:1]
    assert "weft-injector.weft-system.svc" in cert.subject.rfc4514_string()


def test_values_from_a_file_then_flags_and_clear_errors(tmp_path: Path) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text("proxy-log-level: debug\nimage-registry: registry.example/weft\n")
    done = weft("install", "-f", str(values_file), "--image-registry", "other.example")
    assert done.returncode == 0, done.stderr
    objs = [d for d in yaml.safe_load_all(done.stdout) if d]
    injector = container(by(objs, "Deployment", "weft-injector"))
    assert injector["image"].startswith("other.example/control:")
    assert injector["args"][injector["args"].index("--proxy-log-level") + 1] == "debug"
    for bad, message in (
        ("nope: 1\n", "unknown value 'nope'"),
        ("controller-replicas: many\n", "controller-replicas: a whole number"),
        ("controller-replicas: 0\n", "from 1 to 10"),
        ("cluster-networks: 10.0.0.1/8\n", "cluster-networks"),
        ("proxy-log-level: loud\n", "proxy-log-level: one of"),
        ("- a list\n", "expected a mapping"),
        ("a: [\n", "not YAML"),
    ):
        values_file.write_text(bad)
        done = weft("install", "-f", str(values_file))
        assert done.returncode == 2 and message in done.stderr, (bad, done.stderr)
        assert done.stdout == ""
    with pytest.raises(ValuesError, match="ha: true or false"):
        resolve({"ha": "perhaps"})
    assert load_file("", "empty") == {}
    assert dump(resolve({})) == "{}\n"


def test_crds_and_gateway_api_only_when_asked() -> None:
    plain = weft("install", "--crds")
    assert plain.returncode == 0
    kinds = [d["spec"]["names"]["kind"] for d in yaml.safe_load_all(plain.stdout) if d]
    assert "HTTPRoute" not in kinds and "Server" in kinds
    with_gw = weft("install", "--crds", "--gateway-api")
    gw = [d for d in yaml.safe_load_all(with_gw.stdout) if d and
          d["spec"]["group"] == "gateway.networking.k8s.io"]  # fmt: skip
    assert [d["spec"]["names"]["kind"] for d in gw] == ["HTTPRoute", "GRPCRoute"]
    for crd in gateway_crds():
        served = [v["name"] for v in crd["spec"]["versions"] if v["served"]]
        assert "v1" in served  # what Weft reads
        assert crd["metadata"]["annotations"]["gateway.networking.k8s.io/channel"] == "standard"
    assert weft("install", "--gateway-api").returncode == 2


def test_uninstall_lists_the_webhook_first_and_the_crds_unless_kept() -> None:
    done = weft("uninstall")
    assert done.returncode == 0 and "every Weft policy" in done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert docs[0]["kind"] == "MutatingWebhookConfiguration"
    kinds = [d["kind"] for d in docs]
    assert "Namespace" in kinds and "CustomResourceDefinition" in kinds
    assert all(set(d) == {"apiVersion", "kind", "metadata"} for d in docs)
    assert not any("gateway.networking.k8s.io" in d["metadata"]["name"] for d in docs)
    kept = [d for d in yaml.safe_load_all(weft("uninstall", "--keep-crds").stdout) if d]
    assert "CustomResourceDefinition" not in [d["kind"] for d in kept]
