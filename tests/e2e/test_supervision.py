"""E2E: the node agent supervises the control plane: ``kill -9`` of ``weft control`` is followed
by a new one within a bounded wait, ``weft check`` counts the restart, traffic keeps flowing,
and ``weft down`` still stops everything (nothing restarts what it stopped)."""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from pathlib import Path

from meshlib import ECHO, NAMESPACE, E2EMesh, HostSnapshot, wait_for

from weft.runtime.local import procs


def _control(state: Path) -> procs.ProcRecord | None:
    rec = procs.read_record(state / "control.pid")
    return rec if rec is not None and rec.alive() else None


def test_control_plane_killed_is_restarted_by_the_node_agent(tmp_path: Path) -> None:
    before = HostSnapshot.take()
    state = tmp_path / f"s-{uuid.uuid4().hex[:6]}"
    mesh = E2EMesh(state)
    try:
        mesh.weft("up")
        mesh.apply(ECHO)
        (pod,) = mesh.wait_rolled_out("echo", 1)
        name = pod["metadata"]["name"]
        old = mesh.component_pid("control")

        os.kill(old, signal.SIGKILL)

        def restarted() -> bool:
            rec = _control(state)
            if rec is None or rec.pid == old:
                return False
            return mesh.weft("get", "pods", "-n", NAMESPACE, check=False).returncode == 0

        try:
            wait_for(restarted, "a new control plane to answer", limit=20.0)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{mesh.diagnostics()}") from None

        check = mesh.weft("check", check=False)
        counts = [int(n) for n in re.findall(r"restarts: (\d+)", check.stdout)]
        assert counts and counts[0] >= 1, check.stdout
        assert check.returncode == 0, check.stdout

        def served() -> str | None:
            out = mesh.exec(name, "curl", "-s", "-m", "5", "http://echo:8080/", timeout=30)
            return out.stdout if '"authors"' in out.stdout else None

        wait_for(served, "a call through the mesh after the restart", limit=20.0)
    finally:
        down = mesh.weft("down", check=False, timeout=90)
    assert down.returncode == 0, down.stderr
    # longer than the first restart delay: a supervisor that outlived `weft down` would have
    # started a control plane again by now
    time.sleep(3.0)
    problems = before.differences(HostSnapshot.take())
    assert not problems, "weft down left things behind:\n" + "\n".join(problems)
    assert not state.exists()
