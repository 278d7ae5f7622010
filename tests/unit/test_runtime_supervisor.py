"""Unit tests for the node agent's supervision of the control plane: the status record and its
transitions, the crash-loop decision, ``weft check``'s line, the start lock of
``LocalMesh.start_control``, and the supervisor's loop over real processes (``sleep``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weft.core.backoff import ExponentialBackoff
from weft.runtime.base import CheckWarning
from weft.runtime.local import procs
from weft.runtime.local.lifecycle import BACKOFF_RESET_AFTER, CrashLoop, restart_backoff
from weft.runtime.local.mesh import LocalMesh
from weft.runtime.local.state import MeshRecord, StateDir
from weft.runtime.local.supervisor import (
    ControlStatus,
    ControlSupervisor,
    read_status,
    supervision_check,
    write_status,
)
from weft.testing import wait_until

ME = procs.ProcRecord.of(os.getpid())
LOG = "/run/weft/logs/control.log"


# -- the record and its decisions -----------------------------------------------------------


def test_exits_count_restarts_and_a_start_clears_the_backoff() -> None:
    s = ControlStatus().running(10, at=100.0)
    assert (s.state, s.pid, s.since, s.restarts) == ("running", 10, 100.0, 0)
    s = s.exited("killed by signal SIGKILL", 105.0, delay=1.0, failures=1)
    assert (s.state, s.pid, s.restarts, s.backoff) == ("waiting", None, 1, 1.0)
    assert (s.last_exit, s.last_exit_at, s.failures) == ("killed by signal SIGKILL", 105.0, 1)
    s = s.running(11, at=106.0)
    assert (s.state, s.pid, s.backoff, s.restarts, s.last_exit) == (
        "running",
        11,
        None,
        1,
        "killed by signal SIGKILL",
    )


def test_crash_loop_is_two_exits_without_a_good_run() -> None:
    once = ControlStatus().exited("exited", 0.0, delay=1.0, failures=1).running(1, at=1.0)
    assert not once.crash_looping(now=2.0)  # one kill is not a crash loop
    twice = once.exited("exit status 1", 2.0, delay=2.0, failures=2)
    assert twice.crash_looping(now=2.5)  # waiting in backoff
    running = twice.running(2, at=4.0)
    assert running.crash_looping(now=4.0 + BACKOFF_RESET_AFTER - 1)
    # a minute of good running: healthy again, as the backoff is forgotten
    assert not running.crash_looping(now=4.0 + BACKOFF_RESET_AFTER)


@given(st.lists(st.floats(min_value=0.0, max_value=200.0), max_size=30))
def test_restarts_count_every_exit_and_failures_follow_the_backoff(runs: list[float]) -> None:
    crash = CrashLoop(restart_backoff(random.Random(1)))
    status, now = ControlStatus().running(1, at=0.0), 0.0
    for i, ran_for in enumerate(runs):
        now += ran_for
        delay = crash.next_delay(ran_for)
        status = status.exited("exited", now, delay=delay, failures=crash.failures)
        assert 1.0 <= delay <= 66.0
        now += delay
        status = status.running(i + 2, at=now)
        assert status.restarts == i + 1
        # a loop only after an exit that came before a good run was over
        assert status.crash_looping(now) == (crash.failures >= 2)
    assert not status.crash_looping(now + BACKOFF_RESET_AFTER + 1)


def test_status_json_round_trip_and_damage(tmp_path: Path) -> None:
    assert ME is not None
    status = ControlStatus(supervisor=ME).running(7, at=1.5).exited("x", 2.0, delay=1, failures=1)
    path = tmp_path / "control-status.json"
    write_status(path, status)
    assert read_status(path) == status
    assert ControlStatus.from_json(json.loads(json.dumps(ControlStatus().to_json()))) == (
        ControlStatus()
    )
    assert read_status(tmp_path / "missing.json") is None
    for bad in ("[]", "{not json", '{"restarts": "1"}', '{"state": "sleeping"}', '{"pid": 1.5}'):
        path.write_text(bad)
        assert read_status(path) is None, bad


def test_crash_loop_counts_failures_and_forgets_them() -> None:
    loop = CrashLoop(ExponentialBackoff(base=1.0, maximum=8.0, jitter=0.0), reset_after=60.0)
    loop.next_delay(0.0)
    loop.next_delay(0.0)
    assert loop.failures == 2
    loop.next_delay(61.0)
    assert loop.failures == 1


# -- weft check's line ----------------------------------------------------------------------


def test_check_counts_restarts_while_the_agent_supervises() -> None:
    assert ME is not None
    fresh = ControlStatus(supervisor=ME).running(5, at=0.0)
    check = supervision_check(fresh, ME, 10.0, log_path=LOG)
    assert check.ok and not isinstance(check, CheckWarning)
    assert check.detail == "restarts: 0"
    once = fresh.exited("killed by signal SIGKILL", 3.0, delay=1.0, failures=1).running(6, 4.0)
    check = supervision_check(once, ME, 10.0, log_path=LOG)
    assert check.ok and not isinstance(check, CheckWarning)
    assert check.detail == "restarts: 1, last 7s ago (killed by signal SIGKILL)"


def test_check_warns_about_a_crash_loop() -> None:
    assert ME is not None
    status = ControlStatus(supervisor=ME).running(5, at=0.0)
    status = status.exited("exit status 2", 1.0, delay=1.0, failures=1).running(6, at=2.0)
    status = status.exited("exit status 2", 3.0, delay=2.0, failures=2)
    check = supervision_check(status, ME, 3.5, log_path=LOG)
    assert isinstance(check, CheckWarning) and check.ok
    assert "restarts: 2" in check.detail and "crash-looping, next start in 1s" in check.detail
    assert LOG in check.hint
    check = supervision_check(status.running(7, at=5.0), ME, 6.0, log_path=LOG)
    assert isinstance(check, CheckWarning) and check.detail.endswith("; crash-looping")


def test_check_fails_when_nothing_would_restart_the_control_plane() -> None:
    assert ME is not None
    status = ControlStatus(supervisor=ME).exited("exited", 1.0, delay=1.0, failures=1)
    check = supervision_check(status, None, 2.0, log_path=LOG)
    assert not check.ok and "node agent is not running" in check.detail
    assert "restarts: 1" in check.detail and "weft up" in check.hint
    other = procs.ProcRecord(ME.pid, ME.start + 1)  # an agent, but not the one that wrote it
    check = supervision_check(status, other, 2.0, log_path=LOG)
    assert not check.ok and "does not supervise it" in check.detail
    assert not supervision_check(None, ME, 2.0, log_path=LOG).ok


# -- starting: one control plane at a time --------------------------------------------------


def test_start_control_adopts_a_running_one(tmp_path: Path) -> None:
    assert ME is not None
    mesh = LocalMesh(tmp_path)
    record = MeshRecord(str(tmp_path), "10.244.0.0/16", "10.96.0.0/16", "iptables")
    procs.write_record(StateDir(tmp_path).pid_path("control"), ME)
    # a running one (here: this process) is returned, and nothing is started
    assert mesh.start_control(record) == ME
    assert not StateDir(tmp_path).log_path("control").exists()
    assert mesh.ended_how("control") == ("", False)


# -- the supervisor, with real processes ----------------------------------------------------


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"])


class SleepControl:
    """A stand-in control plane: ``sleep``, recorded as ``LocalMesh`` records it."""

    def __init__(self, pid_path: Path) -> None:
        self.pid_path = pid_path
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def current(self) -> procs.ProcRecord | None:
        rec = procs.read_record(self.pid_path)
        return rec if rec is not None and rec.alive() else None

    def ended_how(self) -> str:
        code = None if self.popen is None else self.popen.poll()
        if code is None:
            return ""
        return f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"

    def start(self) -> procs.ProcRecord:
        rec = self.current()
        if rec is not None:
            return rec
        self.starts += 1
        self.popen = sleeper()
        rec = procs.ProcRecord.of(self.popen.pid)
        assert rec is not None
        procs.write_record(self.pid_path, rec)
        return rec

    def kill(self) -> int:
        rec = self.current()
        assert rec is not None
        os.kill(rec.pid, signal.SIGKILL)
        return rec.pid

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


@pytest.fixture
async def control(tmp_path: Path) -> AsyncIterator[SleepControl]:
    c = SleepControl(tmp_path / "control.pid")
    try:
        yield c
    finally:
        c.stop()


FAST = ExponentialBackoff(base=0.05, maximum=0.2, jitter=0.0)


async def test_killed_control_plane_is_restarted_and_counted(
    control: SleepControl, tmp_path: Path
) -> None:
    # started by someone else (`weft up`): adopted, and its exit status is not ours to read
    other = sleeper()
    first = procs.ProcRecord.of(other.pid)
    assert first is not None
    procs.write_record(control.pid_path, first)
    path = tmp_path / "control-status.json"
    write_status(path, ControlStatus(restarts=4))  # an earlier agent's count goes on
    sup = ControlSupervisor(control, path, crash=CrashLoop(FAST), poll=0.02)
    task = asyncio.create_task(sup.run())
    try:
        await wait_until(
            lambda: sup.status.pid == first.pid, 20.0, what="the running one to be adopted"
        )
        assert control.starts == 0 and sup.status.restarts == 4
        assert sup.status.supervisor == ME
        old = control.kill()
        other.wait()
        await wait_until(
            lambda: sup.status.state == "running" and sup.status.pid not in (None, old),
            20.0,
            what="a new one",
        )
        status = read_status(path)
        assert status is not None and status.restarts == 5 and status.failures == 1
        assert status.last_exit == "exited"  # not its child: how it ended is unknown
        assert control.starts == 1
        again = control.kill()
        await wait_until(lambda: sup.status.pid not in (None, again), 20.0, what="another new one")
        status = read_status(path)
        assert status is not None and status.restarts == 6 and status.failures == 2
        assert status.last_exit == "killed by signal SIGKILL"  # ours: its exit status says
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if other.poll() is None:
            other.kill()
            other.wait()
    # once cancelled (the agent stops first in `weft down`), nothing starts it again
    starts = control.starts
    control.kill()
    await asyncio.sleep(0.5)
    assert control.current() is None and control.starts == starts


async def test_a_failing_start_is_retried_with_backoff(tmp_path: Path) -> None:
    class Broken(SleepControl):
        def start(self) -> procs.ProcRecord:
            self.starts += 1
            raise OSError("no such file")

    control = Broken(tmp_path / "control.pid")
    sup = ControlSupervisor(control, tmp_path / "status.json", crash=CrashLoop(FAST), poll=0.02)
    task = asyncio.create_task(sup.run())
    try:
        await wait_until(lambda: control.starts >= 3, 20.0, what="three attempts")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert sup.status.restarts >= 3 and sup.status.state == "waiting"
    assert sup.status.crash_looping(time.time())
