"""The node agent's supervision of the control plane: the kubelet restarting control-plane pods.

``weft control`` runs detached (``weft up`` starts it). The node agent watches its process
record (``<state>/control.pid``) and, when the process is gone (it exited, or was killed),
starts it again as a container is restarted: with the same backoff (1 s, 2 s, 4 s ... 60 s,
jitter 10%; :func:`~weft.runtime.local.lifecycle.restart_backoff`) forgotten after a minute of good
running (:class:`~weft.runtime.local.lifecycle.CrashLoop`: one copy of that logic for both). Every
restart is counted in ``<state>/control-status.json`` (:class:`ControlStatus`), which survives
the agent, so that ``weft check`` shows the restarts, warns about a crash loop
(:meth:`ControlStatus.crash_looping`) and says when nothing supervises the control plane (the
agent that wrote the record is gone).

A control plane another process started (``weft up``, an earlier agent) is adopted, not
restarted; starting one goes through :meth:`~weft.runtime.local.mesh.LocalMesh.start_control`,
whose lock makes ``weft up`` and the supervisor agree on a single process. ``weft down`` stops
the agent first, so nothing restarts the control plane it stops next.

Not for: deciding whether a hung control plane should be killed (there is no liveness probe:
only exits are seen), nor supervising the agent itself (``weft up`` restarts a dead agent and
``weft check`` says the control plane is unsupervised meanwhile).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from weft.core.durations import human_duration
from weft.runtime.base import Check, CheckWarning, RuntimeFailure
from weft.runtime.local import procs
from weft.runtime.local.lifecycle import BACKOFF_RESET_AFTER, CrashLoop, restart_backoff
from weft.runtime.local.mesh import LocalMesh
from weft.runtime.local.state import MeshRecord

log = logging.getLogger("weft.node.control")

# How often the agent looks at the control plane's process (its restart delay is >= 1 s anyway).
POLL_INTERVAL = 0.5
# This many exits without a good run in between is a crash loop (Kubernetes' CrashLoopBackOff
# shows from the second).
CRASH_LOOP_FAILURES = 2


@dataclass(frozen=True, slots=True)
class ControlStatus:
    """What ``control-status.json`` holds. Times are wall-clock epoch seconds (read by other
    processes); ``failures`` counts exits since the last good run."""

    restarts: int = 0
    state: str = "running"  # or "waiting": exited, to be started again after ``backoff``
    pid: int | None = None
    since: float | None = None  # when the running process was started (or adopted)
    failures: int = 0
    last_exit: str | None = None  # "killed by signal SIGKILL", "exit status 1", "exited"
    last_exit_at: float | None = None
    backoff: float | None = None
    supervisor: procs.ProcRecord | None = None

    def __post_init__(self) -> None:
        if self.state not in ("running", "waiting"):
            raise ValueError(f"state must be running or waiting, got {self.state!r}")
        if self.restarts < 0 or self.failures < 0:
            raise ValueError("restarts and failures must be >= 0")

    # -- transitions (pure) ------------------------------------------------------------------

    def running(self, pid: int, at: float) -> ControlStatus:
        """A control plane process runs (just started, or found running)."""
        return replace(self, state="running", pid=pid, since=at, backoff=None)

    def exited(self, how: str, at: float, *, delay: float, failures: int) -> ControlStatus:
        """The process is gone: one more restart, after ``delay``."""
        return replace(
            self,
            restarts=self.restarts + 1,
            state="waiting",
            pid=None,
            failures=failures,
            last_exit=how,
            last_exit_at=at,
            backoff=delay,
        )

    def crash_looping(self, now: float, reset_after: float = BACKOFF_RESET_AFTER) -> bool:
        """Whether it keeps exiting: ``CRASH_LOOP_FAILURES`` exits without a good run between,
        and it has not run well (``reset_after``, as the backoff's reset) since."""
        if self.failures < CRASH_LOOP_FAILURES:
            return False
        if self.state == "waiting" or self.since is None:
            return True
        return now - self.since < reset_after

    # -- JSON --------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "restarts": self.restarts,
            "state": self.state,
            "failures": self.failures,
        }
        optional = {
            "pid": self.pid,
            "since": self.since,
            "lastExit": self.last_exit,
            "lastExitAt": self.last_exit_at,
            "backoff": self.backoff,
            "supervisor": self.supervisor.to_json() if self.supervisor else None,
        }
        out.update((k, v) for k, v in optional.items() if v is not None)
        return out

    @classmethod
    def from_json(cls, data: Any) -> ControlStatus:
        """The record; ValueError naming what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"control status must be an object, got {type(data).__name__}")

        def count(key: str) -> int:
            value = data.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"control status: {key} must be an integer, got {value!r}")
            return value

        def number(key: str) -> float | None:
            value = data.get(key)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"control status: {key} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"control status: {key} must be finite, got {value!r}")
            return float(value)

        pid = data.get("pid")
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int)):
            raise ValueError(f"control status: pid must be an integer, got {pid!r}")
        last_exit = data.get("lastExit")
        supervisor = data.get("supervisor")
        return cls(
            restarts=count("restarts"),
            state=str(data.get("state", "running")),
            pid=pid,
            since=number("since"),
            failures=count("failures"),
            last_exit=None if last_exit is None else str(last_exit),
            last_exit_at=number("lastExitAt"),
            backoff=number("backoff"),
            supervisor=None if supervisor is None else procs.ProcRecord.from_json(supervisor),
        )


def read_status(path: Path) -> ControlStatus | None:
    """The recorded status; None when there is none or it cannot be read."""
    try:
        return ControlStatus.from_json(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        if not isinstance(exc, FileNotFoundError):
            log.warning("ignoring %s: %s", path, exc)
        return None


def write_status(path: Path, status: ControlStatus) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(status.to_json(), indent=2) + "\n")
    tmp.replace(path)


class ControlProcess(Protocol):
    """The control plane's process, as the supervisor sees it."""

    def current(self) -> procs.ProcRecord | None:
        """The running control plane's record; None when none runs."""
        ...

    def ended_how(self) -> str:
        """How the last one this object started ended ("" when unknown); reaps it."""
        ...

    def start(self) -> procs.ProcRecord:
        """Start it unless one runs (then return that one's record). Raises OSError or
        RuntimeFailure when it cannot be started."""
        ...


class MeshControl:
    """The control plane of the local mesh in ``state_dir``, started with the command line
    ``weft up`` gives it (:meth:`~weft.runtime.local.mesh.LocalMesh.control_argv`, with the
    recorded ranges and identity settings)."""

    def __init__(self, mesh: LocalMesh, record: MeshRecord) -> None:
        self._mesh = mesh
        self._record = record

    @classmethod
    def of(cls, state_dir: Path, record: MeshRecord, *, python: str) -> MeshControl:
        """Raises RuntimeFailure when the recorded identity settings cannot be read."""
        mesh = LocalMesh(state_dir, record.network, python=python)
        mesh.identity = mesh.read_identity() or mesh.identity
        return cls(mesh, record)

    def current(self) -> procs.ProcRecord | None:
        # the record alone (pid and start time), as start_control checks it
        rec = procs.read_record(self._mesh.state.pid_path("control"))
        return rec if rec is not None and rec.alive() else None

    def ended_how(self) -> str:
        text, _ = self._mesh.ended_how("control")
        return text.strip(" ()")

    def start(self) -> procs.ProcRecord:
        return self._mesh.start_control(self._record)


class ControlSupervisor:
    """Keeps the control plane running (see the module docstring): :meth:`run` until cancelled."""

    def __init__(
        self,
        control: ControlProcess,
        status_path: Path,
        *,
        crash: CrashLoop | None = None,
        poll: float = POLL_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._control = control
        self._path = status_path
        self._crash = crash or CrashLoop(restart_backoff())
        self._poll = poll
        self._clock = clock
        self._wall = wall
        self.status = ControlStatus()
        self._watching: procs.ProcRecord | None = None
        self._since = clock()

    def __repr__(self) -> str:
        return f"<ControlSupervisor {self.status.state} restarts={self.status.restarts}>"

    def _save(self, status: ControlStatus) -> None:
        self.status = status
        try:
            write_status(self._path, status)
        except OSError as exc:  # the count is for `weft check`; supervising goes on without it
            log.warning("cannot record the control plane's status in %s: %s", self._path, exc)

    async def run(self) -> None:
        # the count goes on from an earlier agent's: restarts are the control plane's, not ours
        earlier = read_status(self._path) or ControlStatus()
        self._save(replace(earlier, supervisor=procs.ProcRecord.of(os.getpid())))
        while True:
            try:
                await self.step()
            except Exception:  # a bug here must not leave the control plane unsupervised
                log.exception("control plane supervision failed; going on")
                await asyncio.sleep(self._poll)

    async def step(self) -> None:
        """Look once: adopt a running control plane, or count its exit, wait out the backoff
        and start it again."""
        rec = self._control.current()
        if rec is not None:
            if rec != self._watching:
                self._watching, self._since = rec, self._clock()
                self._save(self.status.running(rec.pid, self._wall()))
            await asyncio.sleep(self._poll)
            return
        watching, self._watching = self._watching, None
        how = self._control.ended_how() or "exited"
        ran_for = self._clock() - self._since if watching is not None else 0.0
        delay = self._crash.next_delay(ran_for)
        log.warning(
            "the control plane ended (%s; pid %s, after %.0fs); starting it again in %.1fs",
            how,
            watching.pid if watching else "?",
            ran_for,
            delay,
        )
        self._save(
            self.status.exited(how, self._wall(), delay=delay, failures=self._crash.failures)
        )
        await asyncio.sleep(delay)
        try:
            started = self._control.start()
        except (OSError, RuntimeFailure) as exc:  # the next step counts it as one more exit
            log.error("cannot start the control plane: %s", exc)
            return
        log.info("control plane running again (pid %d)", started.pid)


def supervision_check(
    status: ControlStatus | None, agent: procs.ProcRecord | None, now: float, *, log_path: str
) -> Check:
    """✔ with the restart count while the running node agent supervises the control plane, ⚠
    when the control plane is crash-looping, ✘ when nothing would restart it."""
    name = "control plane supervised by the node agent"
    detail = f"restarts: {status.restarts if status else 0}"
    if status is not None and status.restarts and status.last_exit_at is not None:
        ago = human_duration(max(now - status.last_exit_at, 0.0))
        detail += f", last {ago} ago ({status.last_exit or 'exited'})"
    if agent is None or status is None or status.supervisor != agent:
        if agent is None:
            why, hint = "the node agent is not running", "weft up (starts the node agent again)"
        else:
            why = "the running node agent does not supervise it"
            hint = "weft node supervises the control plane unless --control is given"
        return Check(
            name, False, f"{why}: nothing restarts the control plane if it exits; {detail}", hint
        )
    if status.crash_looping(now):
        if status.state == "waiting" and status.backoff is not None:
            left = (status.last_exit_at or now) + status.backoff - now
            detail += f"; crash-looping, next start in {human_duration(max(left, 0.0))}"
        else:
            detail += "; crash-looping"
        return CheckWarning(name, True, detail, f"see why in its log: {log_path}")
    return Check(name, True, detail)
