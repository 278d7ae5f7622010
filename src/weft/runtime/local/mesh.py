"""The local mesh's lifecycle: ``weft up``, ``down``, ``check``, ``exec`` and ``logs`` on this host.

:class:`LocalMesh` implements :class:`~weft.runtime.base.Runtime`:

- :meth:`~LocalMesh.up` checks the host first (root, network namespaces, a usable iptables,
  ``setpriv``) and fails at once naming what is missing; removes leftovers of a crashed run;
  creates the node namespace and the host's blackhole routes; starts ``weft control`` inside the
  node namespace (so it can scrape pods' admin ports) and ``weft node`` on the host, both
  detached (own session, logs and process records in the state directory); and returns once the
  API answers. On a mesh that is already up it only restarts a component that died.
- :meth:`~LocalMesh.start_control` starts the control plane unless one runs, under a lock: the
  node agent's supervisor (:mod:`~weft.runtime.local.supervisor`) restarts it through the same
  method, so the two never start two.
- :class:`MeshIdentity` holds the mesh's identity and inbound-policy settings (trust domain,
  CA material the user supplies, default inbound policy): ``weft up`` checks them before
  anything else, hands them to ``weft control`` and ``weft node`` on their command lines
  (:meth:`~LocalMesh.control_argv`, :meth:`~LocalMesh.node_argv`), and records them in
  ``<state>/mesh-identity.json`` so that a component restarted later gets the same ones.
- :meth:`~LocalMesh.down` stops the node agent (which stops supervising the control plane and
  drains its pods), then the control plane, then removes whatever is left
  (:mod:`~weft.runtime.local.cleanup`).
- :meth:`~LocalMesh.exec` and :meth:`~LocalMesh.logs` find a pod through the API (or its log
  directory) and run in its namespace / read its log files.

Not for: the pods themselves (the node agent runs them) or resources (the control plane's API).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from weft.control.client import ApiError, ControlClient, ControlUnavailable
from weft.resources import pods as podread
from weft.runtime.base import CONTAINER_ALIASES, PROXY_CONTAINER, Check, PodRef, RuntimeFailure
from weft.runtime.local import cleanup, hostchecks, net, netrun, procs
from weft.runtime.local.meshidentity import MeshIdentity
from weft.runtime.local.podexec import ExecError, exec_command
from weft.runtime.local.state import (
    MeshRecord,
    StateDir,
    StateDirError,
    read_host_record,
    write_host_record,
)

# How long `weft up` waits for the control plane's API before giving up.
CONTROL_START_TIMEOUT = 20.0
# sun_path holds 108 bytes including the terminating NUL
MAX_UNIX_PATH = 107
IDENTITY_RECORD = "mesh-identity.json"


class _KilledAtStart(RuntimeFailure):
    """A component was killed by a signal before it logged anything."""


class LocalMesh:
    """A mesh of network-namespace pods on this machine (see the module docstring)."""

    name = "local"

    def __init__(
        self,
        state_dir: Path,
        network: net.MeshNetwork | None = None,
        *,
        python: str = sys.executable,
        echo: Any = None,
        identity: MeshIdentity | None = None,
    ) -> None:
        self.state = StateDir(state_dir)
        self.network = network or net.MeshNetwork.parse()
        self.identity = identity or MeshIdentity()
        self.python = python
        self._echo = echo
        self._iptables: str | None = None
        self._popen: dict[str, subprocess.Popen[bytes]] = {}

    def __repr__(self) -> str:
        return f"<LocalMesh {self.state.root} pods={self.network.pod_cidr}>"

    def _say(self, text: str) -> None:
        if self._echo is not None:
            self._echo(text)

    @property
    def control_endpoint(self) -> str:
        return self.state.control_endpoint

    @property
    def location(self) -> str:
        return str(self.state.root)

    def client(self, timeout: float = 5.0) -> ControlClient:
        return ControlClient(self.control_endpoint, timeout=timeout)

    # -- checks ------------------------------------------------------------------------------

    def host_checks(self) -> list[Check]:
        checks, iptables = hostchecks.host_checks()
        if iptables is not None:
            self._iptables = iptables
        return checks

    # -- status ------------------------------------------------------------------------------

    def _component(self, component: str) -> procs.ProcRecord | None:
        rec = procs.read_record(self.state.pid_path(component))
        if rec is None or not rec.alive():
            return None
        if procs.environ(rec.pid).get(procs.MESH_ENV) != str(self.state.root):
            return None
        return rec

    def running_components(self) -> dict[str, procs.ProcRecord]:
        out = {}
        for component in ("control", "node"):
            rec = self._component(component)
            if rec is not None:
                out[component] = rec
        return out

    def _other_mesh(self) -> str | None:
        """The state directory of another live mesh on this host, if any."""
        record = read_host_record()
        if record is None or Path(record.state_dir) == self.state.root:
            return None
        other = LocalMesh(Path(record.state_dir), record.network)
        return record.state_dir if other.running_components() else None

    # -- up ----------------------------------------------------------------------------------

    def up(self, *, timeout: float = CONTROL_START_TIMEOUT) -> None:
        failed = [c for c in self.host_checks() if not c.ok]
        if failed:
            lines = [f"{c.name}: {c.detail} ({c.hint})" if c.detail else c.name for c in failed]
            raise RuntimeFailure("this host cannot run the mesh:\n  " + "\n  ".join(lines))
        assert self._iptables is not None
        if len(os.fsencode(self.state.control_sock)) > MAX_UNIX_PATH:
            raise RuntimeFailure(
                f"state directory {self.state.root} is too long: unix socket paths are limited "
                f"to {MAX_UNIX_PATH} bytes; choose a shorter --state-dir"
            )
        other = self._other_mesh()
        if other is not None:
            raise RuntimeFailure(
                f"another Weft mesh is running on this host (state directory {other}); "
                f"stop it first: weft down --state-dir {other}"
            )
        running = self.running_components()
        record = self._read_record()
        if running and record is not None:
            if (record.pod_cidr, record.service_cidr) != (
                str(self.network.pod_cidr),
                str(self.network.service_cidr),
            ):
                self._say(
                    f"mesh already up with pod range {record.pod_cidr} and service range "
                    f"{record.service_cidr}; keeping them (weft down first to change them)"
                )
            self._repair(record, running, timeout)
            return
        leftovers = cleanup.find_leftovers([self.state.root])
        if not leftovers.empty:
            self._say("removing leftovers of a previous run: " + "; ".join(leftovers.describe()))
            try:
                cleanup.remove(leftovers)
            except cleanup.CleanupError as exc:
                raise RuntimeFailure(str(exc)) from None
        conflicts = netrun.host_route_conflicts(self.network)
        if conflicts:
            raise RuntimeFailure(
                "the mesh's address ranges overlap routes of this host:\n  "
                + "\n  ".join(conflicts)
                + "\nchoose other ranges with --pod-cidr/--service-cidr"
            )
        try:
            self.state.prepare()
        except (StateDirError, OSError) as exc:
            raise RuntimeFailure(str(exc)) from None
        record = MeshRecord(
            state_dir=str(self.state.root),
            pod_cidr=str(self.network.pod_cidr),
            service_cidr=str(self.network.service_cidr),
            iptables=self._iptables,
        )
        self.state.write_record(record)
        write_host_record(record)
        self.write_identity()
        try:
            netrun.run_plan(net.node_up_plan(self.network))
            netrun.run_plan(net.host_routes_plan(self.network))
            self._start_control(record)
            try:
                self._wait_control(timeout)
            except _KilledAtStart as exc:
                # killed by a signal before it said anything: start it once more (a supervisor
                # would), and say so; an error exit is not retried
                self._say(f"{exc}; starting it again")
                self._start_control(record)
                self._wait_control(timeout)
            self._start_node()
            self._wait_alive("node", 0.5)
        except (net.NetError, RuntimeFailure, OSError) as exc:
            self._say(f"weft up failed: {exc}; cleaning up")
            with contextlib.suppress(RuntimeFailure, cleanup.CleanupError):
                self.down(timeout=5.0)
            if isinstance(exc, RuntimeFailure):
                raise
            raise RuntimeFailure(str(exc)) from None

    def _read_record(self) -> MeshRecord | None:
        try:
            return self.state.read_record()
        except StateDirError:
            return None

    @property
    def identity_record_path(self) -> Path:
        return self.state.root / IDENTITY_RECORD

    def write_identity(self) -> None:
        """Record the identity settings (so a component restarted later gets the same ones)."""
        path = self.identity_record_path
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.identity.to_json(), indent=2) + "\n")
        tmp.replace(path)

    def read_identity(self) -> MeshIdentity | None:
        """The identity settings the mesh was brought up with (None: none recorded)."""
        try:
            return MeshIdentity.from_json(json.loads(self.identity_record_path.read_text()))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise RuntimeFailure(f"{self.identity_record_path}: {exc}") from None

    def _repair(
        self, record: MeshRecord, running: dict[str, procs.ProcRecord], timeout: float
    ) -> None:
        self.network = record.network
        recorded = self.read_identity()
        if recorded is None:
            self.write_identity()
        elif recorded != self.identity:
            self._say(
                f"mesh already up with trust domain {recorded.trust_domain} and default inbound "
                f"policy {recorded.default_inbound_policy}; keeping its identity settings "
                "(weft down first to change them)"
            )
            self.identity = recorded
        if "control" not in running:
            self._say("control plane is not running: restarting it")
            self._start_control(record)
        self._wait_control(timeout)
        if "node" not in running:
            self._say("node agent is not running: restarting it")
            self._start_node()
            self._wait_alive("node", 0.5)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env[procs.MESH_ENV] = str(self.state.root)
        env["WEFT_STATE_DIR"] = str(self.state.root)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _spawn(self, component: str, argv: list[str]) -> procs.ProcRecord:
        self.state.logs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state.log_path(component), "ab") as logf:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd="/",
                start_new_session=True,
            )
        self._popen[component] = proc
        rec = procs.ProcRecord.of(proc.pid)
        if rec is None:
            raise RuntimeFailure(
                f"{component} exited at once; see {self.state.log_path(component)}"
            )
        procs.write_record(self.state.pid_path(component), rec)
        # The process is detached on purpose: it outlives this command. The Popen object is
        # kept only to learn how it ended if it dies during start-up (see ended_how).
        return rec

    def _exited(self, component: str) -> bool:
        """Whether a component has ended. For one this command started, its exit status says
        so: the process-record check reads ``/proc/PID/environ``, which until the child has
        exec'd is its parent's, without the mesh's variable, so a control plane still being
        started was reported as gone (seen in CI under load)."""
        proc = self._popen.get(component)
        if proc is not None:
            return proc.poll() is not None
        return self._component(component) is None

    def ended_how(self, component: str) -> tuple[str, bool]:
        """How a component this object started ended: (text, killed by a signal); ("", False)
        while it runs or when another process started it. Reaps it when it has ended."""
        proc = self._popen.get(component)
        code = None if proc is None else proc.poll()
        if code is None:
            return "", False
        if code < 0:
            return f" (killed by signal {signal.Signals(-code).name})", True
        return f" (exit status {code})", False

    def control_argv(self, record: MeshRecord) -> list[str]:
        """``weft control``'s command line: inside the node namespace, with the mesh's ranges
        (the pod range is also the cluster's network for the ``cluster-*`` default policies)
        and identity settings."""
        argv = [
            "ip", "netns", "exec", net.NODE_NETNS,
            self.python, "-m", "weft", "control",
            "--state-dir", str(self.state.root),
            "--pod-cidr", record.pod_cidr,
            "--service-cidr", record.service_cidr,
            "--cluster-networks", record.pod_cidr,
            "--trust-domain", self.identity.trust_domain,
            "--default-inbound-policy", self.identity.default_inbound_policy,
        ]  # fmt: skip
        if self.identity.issuer is not None:
            for flag, path in self.identity.issuer.flags():
                argv += [flag, str(path)]
        return argv

    def node_argv(self) -> list[str]:
        """``weft node``'s command line."""
        return [
            self.python, "-m", "weft", "node",
            "--state-dir", str(self.state.root),
            "--trust-domain", self.identity.trust_domain,
        ]  # fmt: skip

    def _start_control(self, record: MeshRecord) -> None:
        self.start_control(record)

    def start_control(self, record: MeshRecord) -> procs.ProcRecord:
        """Start the control plane unless one is running; returns the running one's record.

        ``weft up`` and the node agent's supervisor may both find it gone at once: the check
        and the start happen under ``<state>/control.lock``, so only one of them starts it.
        The check is the process record alone (pid and start time): the environment check of
        :meth:`_component` misreads a child that has not exec'd yet."""
        fd = os.open(self.state.control_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            rec = procs.read_record(self.state.pid_path("control"))
            if rec is not None and rec.alive():
                self._popen.pop("control", None)  # not ours: its exit status is not ours to read
                return rec
            return self._spawn("control", self.control_argv(record))
        finally:
            os.close(fd)  # releases the lock

    def _start_node(self) -> None:
        self._spawn("node", self.node_argv())

    def _wait_control(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = self.client(timeout=1.0)
        while time.monotonic() < deadline:
            if asyncio.run(client.healthz()):
                return
            if self._exited("control"):
                how, killed = self.ended_how("control")
                tail = self._log_tail("control")
                message = f"the control plane exited during start-up{how}:\n" + tail
                if killed and not tail.strip():
                    raise _KilledAtStart(message.strip())
                raise RuntimeFailure(message)
            time.sleep(0.1)
        raise RuntimeFailure(
            f"the control plane did not answer within {timeout:g}s:\n" + self._log_tail("control")
        )

    def _wait_alive(self, component: str, seconds: float) -> None:
        time.sleep(seconds)
        if self._exited(component):
            how, _ = self.ended_how(component)
            raise RuntimeFailure(
                f"the {component} process exited during start-up{how}:\n"
                + self._log_tail(component)
            )

    def _log_tail(self, component: str, lines: int = 20) -> str:
        try:
            text = self.state.log_path(component).read_text(errors="replace")
        except OSError:
            return "  (no log)"
        return "\n".join("  " + line for line in text.splitlines()[-lines:])

    # -- down --------------------------------------------------------------------------------

    def down(self, *, timeout: float = 30.0) -> list[str]:
        removed: list[str] = []
        node = self._component("node")
        if node is not None:
            # the agent drains its pods (SIGTERM, grace) before it exits
            procs.terminate([node.pid], timeout=timeout)
            removed.append("node agent")
        control = self._component("control")
        if control is not None:
            procs.terminate([control.pid], timeout=min(timeout, 10.0))
            removed.append("control plane")
        leftovers = cleanup.find_leftovers([self.state.root])
        try:
            removed += cleanup.remove(leftovers, grace=2.0)
        except cleanup.CleanupError as exc:
            raise RuntimeFailure(str(exc)) from None
        return removed

    # -- mesh checks -------------------------------------------------------------------------

    def mesh_checks(self) -> list[Check]:
        from weft.runtime.local import supervisor  # which imports this module

        checks = self._health_checks()
        status = supervisor.read_status(self.state.control_status)
        node = self.running_components().get("node")
        log_path = str(self.state.log_path("control"))
        checks.append(supervisor.supervision_check(status, node, time.time(), log_path=log_path))
        return checks

    def _health_checks(self) -> list[Check]:
        checks: list[Check] = []
        running = self.running_components()
        checks.append(
            Check(
                "node agent running",
                "node" in running,
                f"pid {running['node'].pid}" if "node" in running else "",
                "start the mesh: weft up",
            )
        )
        healthy = asyncio.run(self.client(timeout=2.0).healthz())
        checks.append(
            Check(
                "control plane reachable",
                healthy,
                self.control_endpoint,
                "start the mesh (weft up); its log: " + str(self.state.log_path("control")),
            )
        )
        if not healthy:
            return checks
        try:
            pods = asyncio.run(self.client().list("Pod"))
        except (ControlUnavailable, ApiError) as exc:
            checks.append(Check("pods listed", False, str(exc), "see the control plane's log"))
            return checks
        results = asyncio.run(_probe_proxies(pods))
        for pod, ok, detail in results:
            meta = pod.get("metadata") or {}
            ref = f"{meta.get('namespace', 'default')}/{meta.get('name')}"
            checks.append(
                Check(
                    f"proxy of {ref} ready",
                    ok,
                    detail,
                    f"weft logs {meta.get('name')} -n {meta.get('namespace', 'default')} -c proxy",
                )
            )
        return checks

    # -- exec and logs -----------------------------------------------------------------------

    def find_pod(
        self, name: str, namespace: str | None = None
    ) -> tuple[PodRef, dict[str, Any] | None]:
        """The pod called ``name`` (in ``namespace``, or the only one of that name), and its
        object when the control plane answers. Raises RuntimeFailure when there is none or
        several."""
        objects: list[dict[str, Any]] = []
        with contextlib.suppress(ControlUnavailable, ApiError, OSError):
            objects = asyncio.run(self.client(timeout=3.0).list("Pod", namespace))
        matches = [o for o in objects if (o.get("metadata") or {}).get("name") == name]
        if not matches:
            # the control plane may be down: the pod's log directory still knows its namespace
            dirs = [
                d
                for d in self.state.pods_dir.glob(f"*/{name}")
                if namespace is None or d.parent.name == namespace
            ]
            if len(dirs) == 1:
                return PodRef(dirs[0].parent.name, name), None
            where = f" in namespace {namespace}" if namespace else ""
            raise RuntimeFailure(f"no pod {name!r}{where}; list them with: weft get pods -A")
        if len(matches) > 1:
            spaces = sorted((m.get("metadata") or {}).get("namespace", "") for m in matches)
            raise RuntimeFailure(
                f"pod {name!r} exists in several namespaces ({', '.join(spaces)}): pass -n"
            )
        meta = matches[0].get("metadata") or {}
        return PodRef(meta.get("namespace") or "default", name), matches[0]

    def exec(self, pod: PodRef, argv: Sequence[str]) -> int:
        if not argv:
            raise RuntimeFailure("nothing to run: weft exec POD -- COMMAND [ARGS...]")
        netns = net.pod_netns_name(pod.namespace, pod.name)
        if not netrun.netns_exists(netns):
            raise RuntimeFailure(f"pod {pod} is not running here (no namespace {netns})")
        obj: dict[str, Any] | None = None
        with contextlib.suppress(ControlUnavailable, ApiError, OSError):
            obj = asyncio.run(self.client(timeout=3.0).get("Pod", pod.namespace, pod.name))
        if obj is None:
            raise RuntimeFailure(
                f"cannot tell which user pod {pod} runs as: the control plane does not answer "
                f"(as root: ip netns exec {netns} COMMAND)"
            )
        try:
            command, env = exec_command(
                obj, argv, state_dir=str(self.state.root), python=self.python,
                term=os.environ.get("TERM", "dumb"),
            )  # fmt: skip
        except ExecError as exc:
            raise RuntimeFailure(str(exc)) from None
        sys.stdout.flush()
        sys.stderr.flush()
        os.execvpe(command[0], command, env)

    def container_names(self, pod: PodRef, obj: dict[str, Any] | None) -> list[str]:
        """App containers first (spec order), then the sidecar."""
        names: list[str] = []
        if obj is not None:
            for c in (obj.get("spec") or {}).get("containers") or []:
                if isinstance(c, dict) and c.get("name"):
                    names.append(str(c["name"]))
        if not names:
            with contextlib.suppress(OSError):
                names = sorted(
                    p.name[: -len(".log")]
                    for p in self.state.pod_dir(pod.namespace, pod.name).glob("*.log")
                    if p.name != f"{PROXY_CONTAINER}.log"
                )
        return [*names, PROXY_CONTAINER]

    def log_path(self, pod: PodRef, container: str | None, obj: dict[str, Any] | None) -> Path:
        names = self.container_names(pod, obj)
        wanted = CONTAINER_ALIASES.get(container or "app", container)
        if wanted in (None, "app"):
            wanted = names[0]
        if wanted not in names:
            raise RuntimeFailure(
                f"pod {pod} has no container {container!r}; containers: "
                + ", ".join(["proxy", *names[:-1]])
            )
        return self.state.container_log(pod.namespace, pod.name, wanted)

    def logs(self, pod: PodRef, container: str | None, *, follow: bool, out: BinaryIO) -> int:
        obj: dict[str, Any] | None = None
        with contextlib.suppress(ControlUnavailable, ApiError, OSError):
            obj = asyncio.run(self.client(timeout=3.0).get("Pod", pod.namespace, pod.name))
        path = self.log_path(pod, container, obj)
        if not path.exists() and not follow:
            raise RuntimeFailure(f"no log yet for {pod} ({path.name})")
        return follow_file(path, out, follow=follow, until_gone=path.parent)


async def _probe_proxies(pods: list[dict[str, Any]]) -> list[tuple[dict[str, Any], bool, str]]:
    async def one(pod: dict[str, Any]) -> tuple[dict[str, Any], bool, str]:
        admin = ((pod.get("metadata") or {}).get("annotations") or {}).get(
            "weft.io/proxy-admin", ""
        )
        host, _, port = admin.rpartition(":")
        if not host or not port.isdigit():
            return pod, False, f"bad proxy-admin annotation {admin!r}"
        ok = await netrun.http_probe(net.NODE_NETNS, host, int(port), "/ready", time_limit=2.0)
        return pod, ok, f"http://{admin}/ready" + ("" if ok else " does not answer 200")

    candidates = [
        p
        for p in pods
        if ((p.get("metadata") or {}).get("annotations") or {}).get("weft.io/proxy-admin")
        and podread.phase(p) == "Running"
        and not podread.is_terminating(p)
    ]
    return list(await asyncio.gather(*(one(p) for p in candidates)))


def follow_file(
    path: Path,
    out: BinaryIO,
    *,
    follow: bool,
    until_gone: Path | None = None,
    poll: float = 0.2,
) -> int:
    """Copy ``path`` to ``out``; with ``follow``, keep copying what is appended (reopening when
    the file is rotated) until ``until_gone`` disappears. Returns 0."""
    position = 0
    inode: int | None = None
    while True:
        try:
            st = path.stat()
        except FileNotFoundError:
            st = None
        if st is not None:
            if inode is not None and (st.st_ino != inode or st.st_size < position):
                position = 0  # rotated or truncated: start over on the new file
            inode = st.st_ino
            if st.st_size > position:
                with open(path, "rb") as f:
                    f.seek(position)
                    while chunk := f.read(65536):
                        out.write(chunk)
                        position += len(chunk)
                out.flush()
        if not follow:
            return 0
        if until_gone is not None and not until_gone.exists():
            return 0
        time.sleep(poll)
