"""One pod's processes: the sidecar first, then the app containers; supervision, readiness,
job completion, draining, log files.

:class:`PodRunner` runs a pod whose network already exists (the agent builds it with
:mod:`weft.runtime.local.net`):

1. the ``weft proxy`` sidecar starts first (as uid 2102, excluded from redirection) and the app
   containers wait until its ``/ready`` answers, so an app never starts without its proxy;
2. each app container runs its ``command + args`` unchanged inside the pod's namespace (through
   ``ip netns exec``, which also bind-mounts the pod's hosts file);
3. a container that exits is restarted as its pod's ``restartPolicy`` says, with exponential
   backoff (:class:`~weft.core.backoff.ExponentialBackoff`, reset after a minute of good running);
   the sidecar is always restarted while the pod runs;
4. readiness: the pod is ready while the proxy's ``/ready`` answers and every app container passes
   its readiness probe (``readinessProbe`` httpGet/tcpSocket, or by default a TCP connect to its
   first declared port; a container without ports is ready once it runs);
5. when every app container has finished for good (a job: ``restartPolicy: OnFailure``/``Never``),
   the pod is ``Succeeded`` (all exited 0) or ``Failed``, and its proxy is stopped;
6. :meth:`PodRunner.terminate` drains: SIGTERM to the apps, up to the grace period, then to the
   proxy (which finishes in-flight requests), SIGKILL to whatever is left.

A cluster's pods (:mod:`weft.runtime.local.kubepod`) also have init containers: those before the
sidecar run first, each to completion (one that fails runs again with backoff, or fails the pod
under ``restartPolicy: Never``), then the sidecar (their injected native sidecar, with its own
environment) starts and must be ready, then the init containers after it, then the apps.

Each start of a container appends to ``<state>/pods/<ns>/<pod>/<container>.log``. Every process
gets ``PR_SET_PDEATHSIG`` (via ``setpriv``) so pods never outlive a killed agent.

What to run (the pod's containers, the sidecar's command line, the identity token's file) is
:mod:`weft.runtime.local.podplan`'s.

How processes start and are probed is :mod:`weft.runtime.local.launch`'s. The decisions (what to
do after an exit, when a probe result flips readiness) are
:mod:`weft.runtime.local.lifecycle`'s, tested without processes; :class:`PodRunner` is the asyncio
shell around them.

Not for: networks, names, or which pods should exist (see :mod:`weft.runtime.local.agent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from weft.core.backoff import ExponentialBackoff
from weft.resources.podspec import ContainerStatus, PodStatus
from weft.runtime.base import PROXY_CONTAINER
from weft.runtime.local.launch import Launcher, Probes
from weft.runtime.local.lifecycle import (
    AfterExit,
    CrashLoop,
    Readiness,
    after_exit,
    exit_code_of,
    iso,
    restart_backoff,
)
from weft.runtime.local.podplan import (
    ContainerSpec,
    PodSpec,
    Probe,
)
from weft.runtime.local.users import RunAs

log = logging.getLogger("weft.node.pod")

LOG_ROTATE_BYTES = 16 * 1024 * 1024


# -- the shell ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Container:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    log_path: Path
    proxy: bool
    probe: Probe | None
    crash: CrashLoop
    readiness: Readiness
    proc: asyncio.subprocess.Process | None = None
    restart_count: int = 0
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "Pending"}})
    started_mono: float = 0.0
    finished: AfterExit | None = None
    ran_once: bool = False
    user: RunAs | None = None


StatusCallback = Callable[[dict[str, Any]], None]


class PodRunner:
    """The processes of one pod (see the module docstring). ``run()`` returns when the pod
    has finished (a completed job) or was terminated; :attr:`phase` says which."""

    def __init__(
        self,
        spec: PodSpec,
        *,
        launcher: Launcher,
        probes: Probes,
        log_dir: Path,
        on_status: StatusCallback,
        proxy_argv: Sequence[str] | None,
        base_env: Mapping[str, str],
        proxy_env: Mapping[str, str] | None = None,
        init: Sequence[ContainerSpec] = (),
        init_after: Sequence[ContainerSpec] = (),
        backoff: ExponentialBackoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        ready_poll: float = 0.1,
    ) -> None:
        if spec.meshed and proxy_argv is None:
            raise ValueError(f"pod {spec.namespace}/{spec.name} is meshed but has no proxy argv")
        self.spec = spec
        self._launcher = launcher
        self._probes = probes
        self._on_status = on_status
        self._clock = clock
        self._wall = wall
        self._ready_poll = ready_poll
        backoff = backoff or restart_backoff()
        env = {**base_env, "HOSTNAME": spec.name}
        self._proxy: _Container | None = None
        if spec.meshed and proxy_argv is not None:
            self._proxy = _Container(
                name=PROXY_CONTAINER,
                argv=list(proxy_argv),
                env={**env, **(proxy_env or {})},
                cwd="/",
                log_path=log_dir / f"{PROXY_CONTAINER}.log",
                proxy=True,
                probe=None,
                crash=CrashLoop(backoff),
                readiness=Readiness(),
            )

        def container(c: ContainerSpec) -> _Container:
            return _Container(
                name=c.name,
                argv=list(c.argv),
                env={**env, **dict(c.env)},
                cwd=c.working_dir or "/",
                log_path=log_dir / f"{c.name}.log",
                proxy=False,
                probe=c.readiness,
                crash=CrashLoop(backoff),
                readiness=Readiness(
                    c.readiness.success_threshold if c.readiness else 1,
                    c.readiness.failure_threshold if c.readiness else 3,
                ),
                user=c.user,
            )

        self._apps = [container(c) for c in spec.containers]
        # init containers (a cluster's pods): before the proxy, and after it is ready
        self._init = [container(c) for c in init]
        self._init_after = [container(c) for c in init_after]
        self._log_dir = log_dir
        self.phase = "Pending"
        self.terminating = False
        self.message: str | None = None
        self._start_time = iso(wall())
        self._stopping = asyncio.Event()
        self._finished = asyncio.Event()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_report: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return (
            f"<PodRunner {self.spec.namespace}/{self.spec.name} {self.phase} "
            f"ready={self.ready} terminating={self.terminating}>"
        )

    # -- observed state ----------------------------------------------------------------------

    @property
    def containers(self) -> list[_Container]:
        return ([self._proxy] if self._proxy else []) + self._apps

    @property
    def init_containers(self) -> list[_Container]:
        return self._init + self._init_after

    @property
    def ready(self) -> bool:
        if self.terminating or self.phase != "Running":
            return False
        return all(c.proc is not None and c.readiness.ready for c in self.containers)

    @property
    def restarts(self) -> int:
        return sum(c.restart_count for c in self.containers)

    def container_pids(self) -> dict[str, int]:
        every = [*self.init_containers, *self.containers]
        return {c.name: c.proc.pid for c in every if c.proc is not None}

    def status(self) -> dict[str, Any]:
        """The Pod's ``status`` as the agent reports it (Kubernetes shape)."""
        extra: dict[str, Any] = {}
        if self.message:
            extra["message"] = self.message
        reason = self._reason()
        if reason:
            extra["reason"] = reason
        if self.init_containers:
            extra["initContainerStatuses"] = [
                ContainerStatus(
                    name=c.name,
                    restart_count=c.restart_count,
                    ready=c.finished is AfterExit.SUCCEEDED,
                    state=dict(c.state),
                ).to_dict()
                for c in self.init_containers
            ]
        return PodStatus(
            phase=self.phase,
            pod_ip=self.spec.ip,
            ready=self.ready,
            container_statuses=tuple(
                ContainerStatus(
                    name=c.name,
                    restart_count=c.restart_count,
                    ready=c.proc is not None and c.readiness.ready and not self.terminating,
                    state=dict(c.state),
                )
                for c in self.containers
            ),
            start_time=self._start_time,
            terminating=self.terminating,
            extra=extra,
        ).to_dict()

    def _reason(self) -> str | None:
        if self.terminating:
            return "Terminating"
        if self.phase in ("Succeeded", "Failed"):
            return "Completed" if self.phase == "Succeeded" else "Error"
        for c in self.containers:
            waiting = c.state.get("waiting")
            if isinstance(waiting, dict) and waiting.get("reason") == "CrashLoopBackOff":
                return "CrashLoopBackOff"
        return None

    def report(self) -> None:
        """Tell the agent the current status if it changed."""
        status = self.status()
        if status != self._last_report:
            self._last_report = status
            self._on_status(status)

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> str:
        """Run the pod until it finishes or is terminated; returns the final phase."""
        self.report()
        try:
            if not await self._run_init(self._init):
                await self._finished.wait()
                return self.phase
            if self._proxy is not None:
                self._spawn_task(self._supervise(self._proxy))
                if not await self._wait_proxy_ready():
                    await self._finished.wait()
                    return self.phase
            if not await self._run_init(self._init_after):
                await self._finished.wait()
                return self.phase
            if self._stopping.is_set():
                await self._finished.wait()
                return self.phase
            for c in self._apps:
                self._spawn_task(self._supervise(c))
            self._spawn_task(self._readiness_loop())
            await self._finished.wait()
            return self.phase
        finally:
            self.report()

    def mark_terminating(self) -> None:
        """The pod is leaving: not ready from now on, so discovery drops it before it drains."""
        if not self.terminating:
            self.terminating = True
            self.report()

    async def terminate(self, grace: float | None = None) -> str:
        """Drain and stop the pod: SIGTERM the apps, wait up to ``grace`` (default: the pod's),
        then SIGTERM the proxy, then SIGKILL anything left. Returns the final phase."""
        grace = self.spec.grace if grace is None else grace
        self.mark_terminating()
        if self._stopping.is_set():
            await self._finished.wait()
            return self.phase
        self._stopping.set()
        self._wake.set()
        deadline = self._clock() + grace
        await self._stop_containers([*self.init_containers, *self._apps], deadline)
        if self._proxy is not None:
            await self._stop_containers([self._proxy], max(deadline, self._clock() + 2.0))
        await self._cancel_tasks()
        if self.phase not in ("Succeeded", "Failed"):
            self.phase = "Succeeded" if self._apps_exited_cleanly() else "Failed"
        self._finished.set()
        self.report()
        return self.phase

    def _apps_exited_cleanly(self) -> bool:
        for c in self._apps:
            term = c.state.get("terminated")
            if isinstance(term, dict) and term.get("exitCode") not in (0, 143):
                return False
        return True

    async def _stop_containers(self, containers: list[_Container], deadline: float) -> None:
        procs = [c.proc for c in containers if c.proc is not None and c.proc.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        if procs:
            timeout = max(0.0, deadline - self._clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), timeout)
        for proc in procs:
            # also whatever the container started and left behind in its process group
            self._kill_group(proc.pid)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5.0)

    @staticmethod
    def _kill_group(pid: int) -> None:
        # each container runs in its own session: its pid is its process group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    async def _cancel_tasks(self) -> None:
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "pod %s/%s: internal error",
                self.spec.namespace,
                self.spec.name,
                exc_info=task.exception(),
            )

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless the pod stops first; returns False when it stopped."""
        if self._stopping.is_set():
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return not self._stopping.is_set()

    async def _run_init(self, containers: list[_Container]) -> bool:
        """Run each init container to completion, in order, as the kubelet does: one that
        fails is run again with backoff, unless the pod's ``restartPolicy`` is ``Never`` (then
        the pod fails). False when the pod stopped or failed meanwhile."""
        for c in containers:
            self.message = f"running init container {c.name}"
            self.report()
            while not self._stopping.is_set():
                try:
                    proc = await self._spawn(c)
                except OSError as exc:
                    c.state = {"waiting": {"reason": "StartError", "message": str(exc)}}
                    code = 127
                else:
                    c.proc = proc
                    c.state = {"running": {"startedAt": iso(self._wall())}}
                    self.report()
                    code = exit_code_of(await proc.wait())
                    c.proc = None
                    c.state = {"terminated": {"exitCode": code,
                                              "reason": "Completed" if code == 0 else "Error",
                                              "finishedAt": iso(self._wall())}}  # fmt: skip
                if self._stopping.is_set():
                    break
                if code == 0:
                    c.finished = AfterExit.SUCCEEDED
                    self.report()
                    break
                if self.spec.restart_policy == "Never":
                    log.warning("pod %s/%s: init container %s failed (%d)", *self._ids(), c.name,
                                code)  # fmt: skip
                    self.message = f"init container {c.name} exited with {code}"
                    self.phase = "Failed"
                    self._stopping.set()
                    self._finished.set()
                    return False
                delay = c.crash.next_delay(0.0)
                c.restart_count += 1
                message = f"exited with {code}; back-off {delay:.1f}s"
                c.state = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
                self.report()
                if not await self._sleep(delay):
                    break
            if self._stopping.is_set():
                return False  # terminate() ends the pod
        self.message = None
        return True

    async def _wait_proxy_ready(self) -> bool:
        assert self._proxy is not None
        self.message = "waiting for the proxy to be ready"
        self.report()
        started = self._clock()
        while not self._stopping.is_set():
            if self._proxy.proc is not None and await self._probes.proxy_ready():
                self._proxy.readiness.observe(True)
                self.message = None
                self.report()
                return True
            # poll fast at first (a proxy is usually ready within a second), then back off
            delay = self._ready_poll if self._clock() - started < 10 else 1.0
            if not await self._sleep(delay):
                break
        return False

    @staticmethod
    def _open_log(path: Path) -> BinaryIO:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size > LOG_ROTATE_BYTES:
                path.replace(path.with_suffix(".log.1"))
        return open(path, "ab")  # the caller closes it once the child has its own copy

    async def _spawn(self, c: _Container) -> asyncio.subprocess.Process:
        logf = self._open_log(c.log_path)
        try:
            return await asyncio.create_subprocess_exec(
                *self._launcher.wrap(c.argv, proxy=c.proxy, user=c.user),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=asyncio.subprocess.STDOUT,
                env=c.env,
                cwd=c.cwd,
                start_new_session=True,
            )
        finally:
            logf.close()

    async def _supervise(self, c: _Container) -> None:
        while not self._stopping.is_set():
            started = False
            try:
                proc = await self._spawn(c)
            except OSError as exc:
                log.warning("pod %s/%s: cannot start %s: %s", *self._ids(), c.name, exc)
                c.state = {"waiting": {"reason": "StartError", "message": str(exc)}}
                returncode = 127
            else:
                started = True
                c.proc = proc
                c.started_mono = self._clock()
                c.state = {"running": {"startedAt": iso(self._wall())}}
                if not c.proxy and not c.ran_once:
                    c.ran_once = True
                    if all(a.ran_once for a in self._apps) and self.phase == "Pending":
                        self.phase = "Running"
                self._wake.set()
                self.report()
                returncode = await proc.wait()
            ran_for = self._clock() - c.started_mono if started else 0.0
            code = exit_code_of(returncode)
            c.proc = None
            c.readiness.reset()
            c.state = {
                "terminated": {
                    "exitCode": code,
                    "reason": "Completed" if code == 0 else "Error",
                    "finishedAt": iso(self._wall()),
                }
            }
            if self._stopping.is_set():
                self.report()
                return
            decision = AfterExit.RESTART if c.proxy else after_exit(self.spec.restart_policy, code)
            if decision is not AfterExit.RESTART:
                c.finished = decision
                self.report()
                self._spawn_task(self._maybe_finish())
                return
            delay = c.crash.next_delay(ran_for)
            log.info(
                "pod %s/%s: container %s exited with %d; restarting in %.1fs",
                *self._ids(),
                c.name,
                code,
                delay,
            )
            c.restart_count += 1
            c.state = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"exited with {code}; back-off {delay:.1f}s",
                }
            }
            self.report()
            if not await self._sleep(delay):
                self.report()
                return

    async def _maybe_finish(self) -> None:
        """When every app container is done for good, the pod is: stop the proxy."""
        if not all(c.finished is not None for c in self._apps) or self._stopping.is_set():
            return
        failed = any(c.finished is AfterExit.FAILED for c in self._apps)
        self._stopping.set()
        self._wake.set()
        if self._proxy is not None:
            # a finished job's proxy has nothing left to serve: a short drain is enough
            await self._stop_containers([self._proxy], self._clock() + min(self.spec.grace, 5.0))
        self.phase = "Failed" if failed else "Succeeded"
        self._finished.set()
        self.report()

    async def _readiness_loop(self) -> None:
        while not self._stopping.is_set():
            checks: list[tuple[_Container, Awaitable[bool]]] = []
            now = self._clock()
            for c in self.containers:
                if c.proc is None:
                    continue
                if c.proxy:
                    checks.append((c, self._probes.proxy_ready()))
                elif c.probe is None:
                    c.readiness.observe(True)
                elif now - c.started_mono >= c.probe.initial_delay:
                    checks.append((c, self._probes.check(c.probe)))
            if checks:
                results = await asyncio.gather(*(aw for _, aw in checks))
                for (c, _), ok in zip(checks, results, strict=True):
                    if c.proc is not None:
                        c.readiness.observe(ok)
            self.report()
            all_ready = all(c.proc is not None and c.readiness.ready for c in self.containers)
            period = min((c.probe.period for c in self._apps if c.probe), default=1.0)
            # until everything is ready, probe quickly: new pods join discovery sooner
            delay = period if all_ready else min(period, self._ready_poll * 2)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _ids(self) -> tuple[str, str]:
        return (self.spec.namespace, self.spec.name)
