"""Unit tests for the local runtime's state directory, process records and leftover detection."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from weft.runtime.base import Check, PodRef
from weft.runtime.local import cleanup, procs
from weft.runtime.local.state import (
    MeshRecord,
    StateDir,
    StateDirError,
    read_host_record,
    resolve_state_dir,
    write_host_record,
)


def test_resolve_state_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WEFT_STATE_DIR", raising=False)
    assert resolve_state_dir() == Path("/run/weft")
    monkeypatch.setenv("WEFT_STATE_DIR", str(tmp_path / "env"))
    assert resolve_state_dir() == tmp_path / "env"
    assert resolve_state_dir(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.chdir(tmp_path)
    assert resolve_state_dir("rel") == tmp_path / "rel"


def test_state_dir_layout_and_ownership(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s")
    state.prepare()
    assert state.is_weft() and state.logs_dir.is_dir() and state.pods_dir.is_dir()
    assert state.control_endpoint == f"unix:{tmp_path}/s/control.sock"
    assert state.container_log("ns", "p", "app") == tmp_path / "s/pods/ns/p/app.log"
    with pytest.raises(ValueError, match="invalid pod path component"):
        state.pod_dir("..", "p")
    with pytest.raises(ValueError, match="unknown component"):
        state.pid_path("proxy")
    assert state.remove() and not state.root.exists()

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(StateDirError, match="is not a Weft state directory"):
        StateDir(foreign).prepare()
    assert not StateDir(foreign).remove()
    assert (foreign / "precious.txt").exists()


def test_mesh_record_round_trip_and_validation(tmp_path: Path) -> None:
    rec = MeshRecord(str(tmp_path), "10.244.0.0/16", "10.96.0.0/16", "iptables-nft")
    assert MeshRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec
    assert str(rec.network.gateway) == "10.244.0.1"
    with pytest.raises(ValueError, match="must be a private range"):
        MeshRecord(str(tmp_path), "8.8.0.0/16", "10.96.0.0/16", "iptables")
    with pytest.raises(ValueError, match="missing 'iptables'"):
        MeshRecord.from_json(
            {"stateDir": "/x", "podCIDR": "10.1.0.0/16", "serviceCIDR": "10.2.0.0/16"}
        )
    host = tmp_path / "host.json"
    write_host_record(rec, host)
    assert read_host_record(host) == rec
    host.write_text("{not json")
    assert read_host_record(host) is None


def test_proc_records_survive_pid_reuse_and_zombies(tmp_path: Path) -> None:
    me = procs.ProcRecord.of(os.getpid())
    assert me is not None and me.alive()
    assert not procs.ProcRecord(me.pid, me.start + 1).alive()  # same pid, other process
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while procs.state(child.pid) not in ("Z", None) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not procs.running(child.pid)  # exited, not reaped yet: a zombie counts as gone
    child.wait()
    path = tmp_path / "x.pid"
    procs.write_record(path, me)
    assert procs.read_record(path) == me
    path.write_text("garbage")
    assert procs.read_record(path) is None


def test_terminate_escalates_to_sigkill() -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print(1, flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline()  # the handler is installed
    stubborn = procs.terminate([child.pid], timeout=0.3)
    assert stubborn == [child.pid]
    assert child.wait(5) == -signal.SIGKILL


def test_mesh_marker_finds_processes(tmp_path: Path) -> None:
    env = {**os.environ, procs.MESH_ENV: str(tmp_path)}
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env)
    try:
        deadline = time.monotonic() + 10
        while child.pid not in procs.mesh_pids(str(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert procs.mesh_pids(str(tmp_path)) == {child.pid: str(tmp_path)}
        assert child.pid not in procs.mesh_pids("/some/other/mesh")
        # its state directory is not a Weft one: cleanup counts it as a leftover
        found = cleanup.find_leftovers([], host_record=tmp_path / "none.json")
        assert child.pid in found.processes
    finally:
        child.kill()
        child.wait()


def test_leftovers_describe_and_empty(tmp_path: Path) -> None:
    empty = cleanup.Leftovers()
    assert empty.empty and empty.describe() == []
    some = cleanup.Leftovers(
        processes=(1, 2), netns=("weft-node",), routes=("10.244.0.0/16",), host_record=True
    )
    assert not some.empty
    text = "; ".join(some.describe())
    assert "2 processes" in text and "weft-node" in text and "10.244.0.0/16" in text


def test_remove_state_dirs_and_host_record_only(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s")
    state.prepare()
    host = tmp_path / "host.json"
    host.write_text("{}")
    removed = cleanup.remove(
        cleanup.Leftovers(state_dirs=(state.root,), host_record=True),
        host_record=host,
        etc_netns=tmp_path / "etc-netns",
    )
    assert f"state directory {state.root}" in removed
    assert not state.root.exists() and not host.exists()


def test_seam_values() -> None:
    assert str(PodRef("shop", "web-1")) == "shop/web-1"
    with pytest.raises(ValueError, match="namespace must not be empty"):
        PodRef("", "p")
    with pytest.raises(ValueError):
        Check("", True)


def test_state_dir_is_roots_only_even_when_it_existed(tmp_path: Path) -> None:
    # the control socket, tokens, CA, token key and logs live there: no pod's user may enter
    state = StateDir(tmp_path / "s")
    state.root.mkdir(mode=0o755)
    state.root.chmod(0o755)
    state.prepare()
    assert state.root.stat().st_mode & 0o777 == 0o700
