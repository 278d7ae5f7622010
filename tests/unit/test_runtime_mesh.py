"""Unit tests for weft.runtime.local.mesh and the local runtime's CLI: failing early and clearly,
the command lines of the control plane and the node agent (identity and policy settings),
finding pods and logs, following a log."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import pytest

from weft.cli.main import main
from weft.runtime.base import PROXY_CONTAINER, PodRef, RuntimeFailure
from weft.runtime.local import hostchecks
from weft.runtime.local.mesh import LocalMesh, follow_file
from weft.runtime.local.meshidentity import IssuerFiles, MeshIdentity
from weft.runtime.local.net import MeshNetwork
from weft.runtime.local.state import MeshRecord


def test_up_without_root_fails_at_once_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    mesh = LocalMesh(tmp_path / "state")
    with pytest.raises(RuntimeFailure) as info:
        mesh.up()
    text = str(info.value)
    assert "running as root" in text and "sudo" in text
    assert "network namespaces work" in text
    assert not (tmp_path / "state").exists()  # nothing was created


def test_up_names_missing_tools(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    which = lambda tool: None if tool == "setpriv" else "/x"  # noqa: E731
    monkeypatch.setattr(hostchecks.shutil, "which", which)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    checks = {c.name: c for c in LocalMesh(tmp_path).host_checks()}
    tools = checks["tools: ip (iproute2), setpriv (util-linux)"]
    assert not tools.ok and tools.detail == "missing: setpriv" and "util-linux" in tools.hint


def test_cli_up_rejects_a_public_range(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["up", "--state-dir", str(tmp_path / "s"), "--pod-cidr", "8.8.0.0/16"])
    assert code == 1
    assert "pod_cidr 8.8.0.0/16 must be a private range" in capsys.readouterr().err


# -- identity and policy settings -----------------------------------------------------------

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def ca_files(d: Path) -> tuple[Path, Path, Path]:
    paths = (d / "anchors.pem", d / "issuer.crt", d / "issuer.key")
    for p in paths:
        p.write_bytes(PEM)
    return paths


def record(state: Path) -> MeshRecord:
    return MeshRecord(str(state), "10.250.0.0/16", "10.251.0.0/16", "iptables-nft")


def test_control_and_node_command_lines_by_default(tmp_path: Path) -> None:
    mesh = LocalMesh(tmp_path, MeshNetwork.parse("10.250.0.0/16", "10.251.0.0/16"), python="/py")
    assert mesh.control_argv(record(tmp_path)) == [
        "ip", "netns", "exec", "weft-node", "/py", "-m", "weft", "control",
        "--state-dir", str(tmp_path),
        "--pod-cidr", "10.250.0.0/16", "--service-cidr", "10.251.0.0/16",
        "--cluster-networks", "10.250.0.0/16",
        "--trust-domain", "cluster.local",
        "--default-inbound-policy", "all-unauthenticated",
    ]  # fmt: skip
    assert mesh.node_argv() == [
        "/py", "-m", "weft", "node", "--state-dir", str(tmp_path),
        "--trust-domain", "cluster.local",
    ]  # fmt: skip


def test_command_lines_carry_the_identity_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca_files(tmp_path)
    monkeypatch.chdir(tmp_path)  # relative paths become absolute: the control plane runs from /
    issuer = IssuerFiles.from_flags("anchors.pem", "issuer.crt", "issuer.key")
    identity = MeshIdentity("example.org", issuer, "cluster-authenticated")
    mesh = LocalMesh(tmp_path, python="/py", identity=identity)
    argv = mesh.control_argv(record(tmp_path))
    assert argv[argv.index("--trust-domain") + 1] == "example.org"
    assert argv[argv.index("--default-inbound-policy") + 1] == "cluster-authenticated"
    assert argv[-6:] == [
        "--trust-anchors", str(tmp_path / "anchors.pem"),
        "--issuer-cert", str(tmp_path / "issuer.crt"),
        "--issuer-key", str(tmp_path / "issuer.key"),
    ]  # fmt: skip
    assert mesh.node_argv()[-2:] == ["--trust-domain", "example.org"]


def test_ca_files_come_all_three_or_none(tmp_path: Path) -> None:
    anchors, _, key = ca_files(tmp_path)
    assert IssuerFiles.from_flags(None, None, None) is None
    with pytest.raises(ValueError, match="go together") as info:
        IssuerFiles.from_flags(str(anchors), None, str(key))
    assert "missing --issuer-cert" in str(info.value)
    with pytest.raises(ValueError, match="missing --issuer-cert, --issuer-key"):
        IssuerFiles.from_flags(str(anchors), None, None)


def test_unreadable_or_non_pem_ca_files_are_named(tmp_path: Path) -> None:
    anchors, cert, key = ca_files(tmp_path)
    with pytest.raises(ValueError, match=r"--issuer-key .*/nope\.key: cannot read it"):
        IssuerFiles.from_flags(str(anchors), str(cert), str(tmp_path / "nope.key"))
    with pytest.raises(ValueError, match=r"--trust-anchors .*: cannot read it: Is a directory"):
        IssuerFiles.from_flags(str(tmp_path), str(cert), str(key))
    key.write_bytes(b"\x30\x82 DER, not PEM")
    with pytest.raises(ValueError, match=r"--issuer-key .*issuer\.key: not a PEM file"):
        IssuerFiles.from_flags(str(anchors), str(cert), str(key))


def test_identity_settings_are_checked_and_recorded(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="trust domain"):
        MeshIdentity(trust_domain="UPPER.case")
    with pytest.raises(ValueError, match="default inbound policy must be one of all-unauth"):
        MeshIdentity(default_inbound_policy="allow-all")
    with pytest.raises(ValueError, match="absolute"):
        IssuerFiles(Path("a.pem"), Path("/b"), Path("/c"))
    issuer = IssuerFiles(*ca_files(tmp_path))
    for identity in (MeshIdentity(), MeshIdentity("corp.example", issuer, "deny")):
        assert MeshIdentity.from_json(identity.to_json()) == identity
    with pytest.raises(ValueError, match="go together"):
        MeshIdentity.from_json({"trustAnchors": "/a"})
    with pytest.raises(ValueError, match="must be an object"):
        MeshIdentity.from_json(["cluster.local"])
    mesh = LocalMesh(tmp_path, identity=MeshIdentity("corp.example", issuer, "deny"))
    assert mesh.read_identity() is None
    mesh.write_identity()
    assert LocalMesh(tmp_path).read_identity() == mesh.identity
    mesh.identity_record_path.write_text('{"trustDomain": "Bad Domain"}')
    with pytest.raises(RuntimeFailure, match=r"mesh-identity\.json: .*trust domain"):
        mesh.read_identity()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--trust-anchors", "/nonexistent.pem"], "go together"),
        (["--trust-domain", "bad_domain"], "trust domain 'bad_domain'"),
    ],
)
def test_cli_up_checks_identity_flags_before_anything_else(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["up", "--state-dir", str(tmp_path / "s"), *flags]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # failed before the host checks: nothing was created


def test_cli_up_refuses_an_unreadable_ca_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    anchors, cert, _ = ca_files(tmp_path)
    flags = ["--trust-anchors", str(anchors), "--issuer-cert", str(cert)]
    code = main(["up", "--state-dir", str(tmp_path / "s"), *flags, "--issuer-key", "/no/key"])
    assert code == 1
    assert "--issuer-key /no/key: cannot read it" in capsys.readouterr().err


def test_cli_up_knows_the_default_inbound_policies(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["up", "--default-inbound-policy", "allow"])
    assert info.value.code == 2
    assert "cluster-authenticated" in capsys.readouterr().err


def test_cli_exec_needs_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["exec", "web-1", "--"]) == 2
    assert "nothing to run" in capsys.readouterr().err


def test_log_paths_and_container_aliases(tmp_path: Path) -> None:
    mesh = LocalMesh(tmp_path)
    pod = PodRef("shop", "web-1")
    obj = {"spec": {"containers": [{"name": "web"}, {"name": "helper"}]}}
    assert mesh.log_path(pod, None, obj).name == "web.log"
    assert mesh.log_path(pod, "app", obj).name == "web.log"
    assert mesh.log_path(pod, "proxy", obj).name == f"{PROXY_CONTAINER}.log"
    assert mesh.log_path(pod, "helper", obj).name == "helper.log"
    with pytest.raises(RuntimeFailure, match="containers: proxy, web, helper"):
        mesh.log_path(pod, "nope", obj)
    # without the control plane, the log directory tells the containers
    d = mesh.state.pod_dir("shop", "web-1")
    d.mkdir(parents=True)
    (d / "web.log").write_text("x")
    (d / f"{PROXY_CONTAINER}.log").write_text("y")
    assert mesh.log_path(pod, None, None).name == "web.log"


def test_find_pod_from_log_directories_when_the_control_plane_is_down(tmp_path: Path) -> None:
    mesh = LocalMesh(tmp_path)
    mesh.state.pod_dir("shop", "web-1").mkdir(parents=True)
    assert mesh.find_pod("web-1") == (PodRef("shop", "web-1"), None)
    with pytest.raises(RuntimeFailure, match="no pod 'other'"):
        mesh.find_pod("other")


def test_follow_file_copies_appends_and_stops_when_the_pod_is_gone(tmp_path: Path) -> None:
    pod_dir = tmp_path / "pod"
    pod_dir.mkdir()
    log = pod_dir / "app.log"
    log.write_bytes(b"one\n")
    out = io.BytesIO()
    assert follow_file(log, out, follow=False) == 0
    assert out.getvalue() == b"one\n"

    out = io.BytesIO()

    def writer() -> None:
        time.sleep(0.1)
        with open(log, "ab") as f:
            f.write(b"two\n")
        time.sleep(0.3)
        log.unlink()
        pod_dir.rmdir()

    t = threading.Thread(target=writer)
    t.start()
    follow_file(log, out, follow=True, until_gone=pod_dir, poll=0.02)
    t.join()
    assert out.getvalue() == b"one\ntwo\n"
