"""Unit tests for weft.runtime.local.mesh and the local runtime's CLI: failing early and clearly,
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
from weft.runtime.local import mesh as mesh_mod
from weft.runtime.local.mesh import LocalMesh, follow_file


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
    monkeypatch.setattr(mesh_mod.shutil, "which", lambda tool: None if tool == "setpriv" else "/x")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    checks = {c.name: c for c in LocalMesh(tmp_path).host_checks()}
    tools = checks["tools: ip (iproute2), setpriv (util-linux)"]
    assert not tools.ok and tools.detail == "missing: setpriv" and "util-linux" in tools.hint


def test_cli_up_rejects_a_public_range(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["up", "--state-dir", str(tmp_path / "s"), "--pod-cidr", "8.8.0.0/16"])
    assert code == 1
    assert "pod_cidr 8.8.0.0/16 must be a private range" in capsys.readouterr().err


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
