"""Helpers of the end-to-end tests: host snapshots, a driver for the real ``weft`` command, a
bounded load client inside a pod.

Not for: fixtures (see ``conftest.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weft.resources import pods as podread
from weft.runtime.local import net, netrun, procs
from weft.runtime.local.state import HOST_RECORD

NAMESPACE = "e2e"

# one Deployment and Service serving the demo backend on 8080, for tests that need an app
ECHO = """
apiVersion: v1
kind: Namespace
metadata: {name: e2e}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: e2e}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers:
        - name: echo
          command: [python, -m, weft.demo.backend]
          env: [{name: DEMO_NAME, value: authors}]
          ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: e2e}
spec:
  selector: {app: echo}
  ports: [{port: 8080, targetPort: http}]
"""


def e2e_unavailable() -> str | None:
    """Why the e2e tests cannot run here (None: they can)."""
    if sys.platform != "linux":
        return "needs Linux network namespaces"
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables)"
    for tool in ("ip", "setpriv"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not any(shutil.which(f"{b}-restore") for b in netrun.IPTABLES_CANDIDATES):
        return "needs iptables"
    probe = f"weft--e2e-probe-{os.getpid()}"
    try:
        netrun.run_plan([net.Cmd(("ip", "netns", "add", probe))])
    except net.NetError as exc:
        return f"cannot create network namespaces: {exc}"
    netrun.run_plan(net.netns_delete_plan(probe))
    return None


# -- host snapshots -------------------------------------------------------------------------


def _run(*argv: str) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except FileNotFoundError:
        return ""
    return proc.stdout


def _iptables_rules() -> list[str]:
    lines: list[str] = []
    for binary in ("iptables-nft-save", "iptables-legacy-save"):
        if shutil.which(binary) is None:
            continue
        for line in _run(binary).splitlines():
            if line.startswith("#"):
                continue
            # chain counters change with traffic; the rules are what matters
            lines.append(line.split(" [")[0] if line.startswith(":") else line)
    return lines


@dataclass(frozen=True)
class HostSnapshot:
    netns: frozenset[str]
    links: frozenset[str]
    routes: frozenset[str]
    iptables: tuple[str, ...]
    etc_netns: frozenset[str] | None
    mesh_processes: frozenset[int]
    host_record: bool

    @classmethod
    def take(cls) -> HostSnapshot:
        links = frozenset(
            line.split(":")[1].strip().split("@")[0]
            for line in _run("ip", "-o", "link", "show").splitlines()
            if ":" in line
        )
        routes = frozenset(
            line.strip() for line in _run("ip", "route", "show", "table", "all").splitlines()
        )
        etc = Path("/etc/netns")
        weft_netns = [n for n in netrun.list_netns() if net.is_weft_netns(n)]
        in_netns = {p for n in weft_netns for p in netrun.netns_pids(n) if procs.running(p)}
        return cls(
            netns=frozenset(netrun.list_netns()),
            links=links,
            routes=routes,
            iptables=tuple(_iptables_rules()),
            etc_netns=frozenset(p.name for p in etc.iterdir()) if etc.is_dir() else None,
            mesh_processes=frozenset(set(procs.mesh_pids()) | in_netns),
            host_record=HOST_RECORD.exists(),
        )

    def differences(self, after: HostSnapshot) -> list[str]:
        out = []
        for name in ("netns", "links", "routes", "etc_netns"):
            a, b = getattr(self, name), getattr(after, name)
            if a != b:
                added = sorted((b or frozenset()) - (a or frozenset()))
                removed = sorted((a or frozenset()) - (b or frozenset()))
                out.append(f"{name}: added {added}, removed {removed}")
        if self.iptables != after.iptables:
            out.append(
                f"iptables rules changed: {sorted(set(after.iptables) ^ set(self.iptables))}"
            )
        left = sorted(after.mesh_processes - self.mesh_processes)
        if left:
            out.append(f"processes left: {[(p, procs.cmdline(p)[:6]) for p in left]}")
        if after.host_record and not self.host_record:
            out.append(f"{HOST_RECORD} left")
        return out


# -- driving the mesh -----------------------------------------------------------------------


def wait_for(cond: Callable[[], Any], what: str, limit: float = 60.0, every: float = 0.3) -> Any:
    deadline = time.monotonic() + limit
    last: Any = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {limit:g}s waiting for {what} (last: {last!r})")


class E2EMesh:
    """Runs the real ``weft`` command against one mesh (its state directory in the env)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.env = {**os.environ, "WEFT_STATE_DIR": str(state_dir)}
        self.env.pop("WEFT_CONTROL", None)

    def weft(
        self, *args: str, check: bool = True, timeout: float = 60.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "weft", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"weft {' '.join(args)} exited {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}\n{self.diagnostics()}"
            )
        return proc

    def diagnostics(self) -> str:
        """The end of the agent's and control plane's logs, for failure messages."""
        parts = []
        for name in ("node", "control"):
            path = self.state_dir / "logs" / f"{name}.log"
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-25:]
                parts.append(f"--- {name}.log\n" + "\n".join(tail))
        return "\n".join(parts)

    def apply(self, text: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(text)
            path = f.name
        try:
            return self.weft("apply", "-f", path, check=check)
        finally:
            os.unlink(path)

    def objects(self, kind: str, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        out = self.weft("get", kind, "-n", namespace, "-o", "json").stdout
        return list(json.loads(out).get("items", [])) if out.strip() else []

    def pods(
        self, deployment: str | None = None, namespace: str = NAMESPACE
    ) -> list[dict[str, Any]]:
        pods = self.objects("pods", namespace)
        if deployment is None:
            return pods
        return [p for p in pods if podread.deployment(p) == deployment]

    def rolled_out(
        self, deployment: str, replicas: int, namespace: str = NAMESPACE
    ) -> list[dict[str, Any]] | None:
        """The deployment's pods when exactly ``replicas`` of one template are ready and no
        other pod of it is left (a finished rollout); else None."""
        pods = self.pods(deployment, namespace)
        hashes = {p["metadata"]["labels"].get("pod-template-hash") for p in pods}
        ready = [p for p in pods if podread.is_ready(p) and not podread.is_terminating(p)]
        if len(pods) == replicas and len(ready) == replicas and len(hashes) <= 1:
            return pods
        return None

    def wait_rolled_out(
        self, deployment: str, replicas: int, namespace: str = NAMESPACE, limit: float = 60.0
    ) -> list[dict[str, Any]]:
        try:
            result: list[dict[str, Any]] = wait_for(
                lambda: self.rolled_out(deployment, replicas, namespace),
                f"{deployment} to have {replicas} ready pods",
                limit,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnostics()}") from None
        return result

    def exec(
        self, pod: str, *argv: str, namespace: str = NAMESPACE, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return self.weft("exec", "-n", namespace, pod, "--", *argv, timeout=timeout)

    def start_exec(self, pod: str, *argv: str, namespace: str = NAMESPACE) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "weft", "exec", "-n", namespace, pod, "--", *argv],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def component_pid(self, component: str) -> int:
        record = procs.read_record(self.state_dir / f"{component}.pid")
        assert record is not None and record.alive(), f"{component} is not running"
        return record.pid


class Load:
    """A bounded load run from inside a pod with the demo's traffic generator."""

    def __init__(
        self,
        mesh: E2EMesh,
        client_pod: str,
        url: str,
        *,
        rate: float = 25,
        namespace: str = NAMESPACE,
    ) -> None:
        self.proc = mesh.start_exec(
            client_pod,
            "python", "-m", "weft.demo.traffic",
            "--url", url, "--rate", str(rate), "--concurrency", "3",
            "--count", "5000", "--duration", "90", "--timeout", "10", "--json",
            namespace=namespace,
        )  # fmt: skip

    def stop(self) -> dict[str, Any]:
        """Stop sending (SIGTERM: the generator prints its summary) and return the summary."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        lines = [line for line in out.splitlines() if line.startswith("{")]
        assert lines, f"no summary from the load generator: {out!r} {err!r}"
        summary: dict[str, Any] = json.loads(lines[-1])
        return summary


def pod_names(pods: list[dict[str, Any]]) -> list[str]:
    return sorted(p["metadata"]["name"] for p in pods)
