"""E2E: `weft up` refuses without root; `weft up` after everything was SIGKILLed removes the
leftovers; `weft down` leaves the host exactly as it was."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from meshlib import E2EMesh, HostSnapshot, wait_for

from weft.runtime.local import net, netrun, procs

APP = """
apiVersion: v1
kind: Namespace
metadata: {name: e2e}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: e2e}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          command: [python, -m, weft.demo.backend]
          ports: [{containerPort: 8080}]
"""


def test_up_without_root_fails_at_once_naming_what_is_missing(tmp_path: Path) -> None:
    # run the real command as an unprivileged user (able to read this Python, nothing more)
    proc = subprocess.run(
        [
            "setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
            "--inh-caps=-all,+dac_override", "--ambient-caps=+dac_override",
            sys.executable, "-m", "weft", "up", "--state-dir", str(tmp_path / "state"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "running as root" in proc.stderr and "sudo" in proc.stderr
    assert not (tmp_path / "state").exists()


def test_up_after_a_crash_cleans_up_and_down_leaves_nothing(tmp_path: Path) -> None:
    before = HostSnapshot.take()
    state = tmp_path / f"s-{uuid.uuid4().hex[:6]}"
    mesh = E2EMesh(state)
    try:
        mesh.weft("up")
        mesh.apply(APP)
        old = {p["metadata"]["name"] for p in mesh.wait_rolled_out("web", 2)}

        # crash: SIGKILL every process of the mesh at once
        victims = set(procs.mesh_pids(str(state)))
        for name in netrun.list_netns():
            if net.is_weft_netns(name):
                victims.update(netrun.netns_pids(name))
        assert len(victims) >= 6  # control, node, 2 x (proxy, app)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not any(procs.running(p) for p in victims), "the processes to die")
        assert netrun.netns_exists(net.NODE_NETNS)  # the leftovers are there

        up = mesh.weft("up")
        assert "removing leftovers of a previous run" in up.stderr
        stale = [n for n in netrun.list_netns() if any(o in n for o in old)]
        assert not stale, f"namespaces of the crashed run survived: {stale}"
        mesh.apply(APP)  # the crash cleanup also removed the old store
        new = {p["metadata"]["name"] for p in mesh.wait_rolled_out("web", 2)}
        assert not new & old
    finally:
        down = mesh.weft("down", check=False, timeout=90)
    assert down.returncode == 0, down.stderr
    problems = before.differences(HostSnapshot.take())
    assert not problems, "weft down left things behind:\n" + "\n".join(problems)
    assert not state.exists()
    # and a second down has nothing left to do
    assert "nothing to remove" in mesh.weft("down").stdout


def test_control_plane_killed_at_start_up_is_started_again(tmp_path: Path) -> None:
    import asyncio

    from weft.control.client import ControlClient
    from weft.runtime.local.mesh import LocalMesh

    # an interpreter wrapper that SIGKILLs the first control plane before it says anything
    marker = tmp_path / "killed-once"
    wrapper = tmp_path / "python"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ "$3" = control ] && [ ! -e {marker} ]; then touch {marker}; kill -9 $$; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    wrapper.chmod(0o755)
    before = HostSnapshot.take()
    said: list[str] = []
    mesh = LocalMesh(tmp_path / "state", python=str(wrapper), echo=said.append)
    try:
        mesh.up()
        assert marker.exists()
        assert any("killed by signal SIGKILL" in s and "starting it again" in s for s in said), said
        assert asyncio.run(ControlClient(mesh.control_endpoint).healthz())
    finally:
        mesh.down()
    assert not before.differences(HostSnapshot.take())
