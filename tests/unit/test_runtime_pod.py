"""Unit tests for weft.runtime.local.pod: what a Pod resource runs, the supervision decisions,
and PodRunner with real processes (in this process's network namespace, no root needed): sidecar
before app, restarts with backoff, jobs, readiness, draining."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from weft.core.backoff import ExponentialBackoff
from weft.resources.models import Pod
from weft.runtime.base import PROXY_CONTAINER
from weft.runtime.local import net
from weft.runtime.local.launch import NetnsLauncher, NetnsProbes, base_env
from weft.runtime.local.lifecycle import AfterExit, CrashLoop, Readiness, after_exit, exit_code_of
from weft.runtime.local.pod import PodRunner
from weft.runtime.local.podplan import (
    ContainerSpec,
    PodSpec,
    PodSpecError,
    Probe,
    expand,
    pod_spec,
    proxy_argv,
    remove_token,
    token_path,
    write_token,
)
from weft.testing import wait_until

# -- reading pods ---------------------------------------------------------------------------


def _pod(spec: dict[str, Any], annotations: dict[str, str] | None = None) -> Pod:
    return Pod.from_dict(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web-abc",
                "namespace": "shop",
                "annotations": {"weft.io/deployment": "web", **(annotations or {})},
            },
            "spec": spec,
        }
    )


def test_expand_is_kubernetes_dollar_paren() -> None:
    env = {"A": "1", "B": "x y"}
    assert expand("$(A)-$(B)", env) == "1-x y"
    assert expand("$(MISSING)", env) == "$(MISSING)"
    assert expand("$$(A) costs $$5", env) == "$(A) costs $5"
    assert expand("$A", env) == "$A"


def test_pod_spec_reads_containers_env_and_default_probe() -> None:
    spec = pod_spec(
        _pod(
            {
                "serviceAccountName": "web-sa",
                "terminationGracePeriodSeconds": 7,
                "containers": [
                    {
                        "name": "web",
                        "command": ["python", "-m", "app"],
                        "args": ["--name", "$(WEFT_POD_NAME)", "--greeting", "$(GREETING)"],
                        "env": [{"name": "GREETING", "value": "hi from $(WEFT_POD_IP)"}],
                        "ports": [{"name": "http", "containerPort": 8080}],
                    }
                ],
            }
        ),
        "10.244.0.9",
    )
    assert (spec.namespace, spec.name, spec.ip) == ("shop", "web-abc", "10.244.0.9")
    assert spec.netns == "weft-shop-web-abc"
    assert spec.deployment == "web" and spec.service_account == "web-sa"
    assert spec.grace == 7.0 and spec.restart_policy == "Always" and spec.meshed
    (c,) = spec.containers
    assert c.argv == (
        "python",
        "-m",
        "app",
        "--name",
        "web-abc",
        "--greeting",
        "hi from 10.244.0.9",
    )
    assert dict(c.env)["WEFT_POD_NAMESPACE"] == "shop"
    assert c.readiness == Probe(kind="tcp", port=8080)
    assert [str(p.first) for p in spec.skip_inbound] == ["4567", "4568"]


def test_pod_spec_readiness_probe_forms() -> None:
    def probe_of(probe: dict[str, Any]) -> Probe | None:
        spec = pod_spec(
            _pod(
                {
                    "containers": [
                        {
                            "name": "a",
                            "command": ["x"],
                            "ports": [{"name": "admin", "containerPort": 9000}],
                            "readinessProbe": probe,
                        }
                    ]
                }
            ),
            "10.0.0.2",
        )
        return spec.containers[0].readiness

    assert probe_of({"httpGet": {"path": "healthz", "port": "admin"}, "periodSeconds": 2}) == (
        Probe(kind="http", port=9000, path="/healthz", period=2.0)
    )
    assert probe_of({"tcpSocket": {"port": 81}, "failureThreshold": 1}) == Probe(
        kind="tcp", port=81, failure_threshold=1
    )
    # kinds the local runtime cannot run fall back to the declared port
    assert probe_of({"exec": {"command": ["true"]}}) == Probe(kind="tcp", port=9000)
    with pytest.raises(PodSpecError, match=r"readinessProbe\.httpGet\.port: no container port"):
        probe_of({"httpGet": {"port": "nope"}})
    with pytest.raises(PodSpecError, match=r"readinessProbe\.periodSeconds: must be a number"):
        probe_of({"tcpSocket": {"port": 1}, "periodSeconds": "often"})


def test_pod_spec_annotations() -> None:
    containers = {"containers": [{"name": "a", "command": ["x"]}]}
    spec = pod_spec(
        _pod(
            containers,
            {
                "weft.io/inject": "disabled",
                "config.weft.io/skip-outbound-ports": "5432,6000-6001",
            },
        ),
        "10.0.0.2",
    )
    assert not spec.meshed
    assert [(p.first, p.last) for p in spec.skip_outbound] == [(5432, 5432), (6000, 6001)]
    assert spec.containers[0].readiness is None
    with pytest.raises(PodSpecError, match=r"skip-inbound-ports'\]: invalid port or range 'x'"):
        pod_spec(_pod(containers, {"config.weft.io/skip-inbound-ports": "x"}), "10.0.0.2")
    reserved = {"containers": [{"name": PROXY_CONTAINER, "command": ["x"]}]}
    with pytest.raises(PodSpecError, match="reserved for the sidecar"):
        pod_spec(_pod(reserved), "10.0.0.2")


def test_proxy_argv_is_the_contract() -> None:
    spec = PodSpec(
        namespace="shop",
        name="web-1",
        ip="10.244.0.2",
        containers=(ContainerSpec("web", ("app",)),),
        grace=12,
        deployment="web",
        service_account="sa",
    )
    token = token_path(Path("/run/weft/pods/shop/web-1"))
    argv = proxy_argv(
        spec,
        python="/py",
        control_endpoint="unix:/run/weft/control.sock",
        token_file=token,
        trust_domain="example.org",
    )
    assert argv == [
        "/py", "-m", "weft", "proxy",
        "--outbound", "127.0.0.1:4140", "--inbound", "0.0.0.0:4143", "--admin", "0.0.0.0:4191",
        "--control", "unix:/run/weft/control.sock",
        "--identity-token-file", "/run/weft/pods/shop/web-1/identity/token",
        "--trust-domain", "example.org",
        "--label", "pod=web-1", "--label", "namespace=shop", "--label", "deployment=web",
        "--label", "serviceaccount=sa", "--shutdown-grace", "12", "--log-level", "info",
    ]  # fmt: skip


# -- identity tokens ------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_token_is_written_for_its_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    path = token_path(tmp_path / "pods" / "shop" / "web-1")
    old_umask = os.umask(0)  # would leave everything world-writable if modes were not set
    try:
        write_token(path, "v1.claims.mac", owner=None)
    finally:
        os.umask(old_umask)
    assert path.read_text() == "v1.claims.mac"  # exactly the token: no newline
    assert mode(path) == 0o400 and mode(path.parent) == 0o700
    assert os.listdir(path.parent) == ["token"]  # no temporary file left


def test_an_existing_directory_is_tightened(tmp_path: Path) -> None:
    path = token_path(tmp_path)
    path.parent.mkdir(mode=0o755)
    os.chmod(path.parent, 0o755)
    write_token(path, "t1", owner=None)
    assert mode(path.parent) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_token_and_directory_belong_to_the_proxy_uid(tmp_path: Path) -> None:
    path = token_path(tmp_path)
    write_token(path, "t1", owner=net.PROXY_UID)
    for p in (path, path.parent):
        st = p.stat()
        assert (st.st_uid, st.st_gid) == (net.PROXY_UID, net.PROXY_UID)
    assert mode(path) == 0o400


def test_mode_and_owner_are_set_before_the_token_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, int]] = []
    real_write = os.write

    def checking_write(fd: int, data: bytes) -> int:
        st = os.fstat(fd)
        seen.append((stat.S_IMODE(st.st_mode), st.st_uid))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", checking_write)
    owner = net.PROXY_UID if os.geteuid() == 0 else None
    write_token(token_path(tmp_path), "secret", owner=owner)
    assert seen and all(m == 0o400 for m, _ in seen)
    if owner is not None:
        assert all(uid == owner for _, uid in seen)


def test_rewriting_is_atomic_for_a_concurrent_reader(tmp_path: Path) -> None:
    path = token_path(tmp_path)
    tokens = {"a" * 3000, "b" * 5000}
    write_token(path, "a" * 3000, owner=None)
    stop = threading.Event()
    reads: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            reads.append(path.read_text())

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(200):
            write_token(path, sorted(tokens)[i % 2], owner=None)
    finally:
        stop.set()
        t.join(timeout=10)
    assert reads and set(reads) <= tokens  # never empty, never a mix, never missing


def test_a_failed_write_keeps_the_old_token_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = token_path(tmp_path)
    write_token(path, "old", owner=None)

    def full_disk(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_token(path, "new", owner=None)
    monkeypatch.undo()
    assert path.read_text() == "old" and os.listdir(path.parent) == ["token"]


def test_bad_tokens_and_a_symlinked_directory_are_refused(tmp_path: Path) -> None:
    for bad in ("", "line\nbreak", "caf\u00e9"):
        with pytest.raises(ValueError, match="printable ASCII"):
            write_token(token_path(tmp_path / "a"), bad, owner=None)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    pod_dir = tmp_path / "pod"
    pod_dir.mkdir()
    (pod_dir / "identity").symlink_to(elsewhere)
    with pytest.raises(OSError):
        write_token(token_path(pod_dir), "t", owner=None)
    assert list(elsewhere.iterdir()) == []


def test_remove_token(tmp_path: Path) -> None:
    path = token_path(tmp_path / "pod")
    write_token(path, "t", owner=None)
    (path.parent / ".token.crashed").write_text("partial")  # a crash mid-write left it
    remove_token(path)
    assert not path.parent.exists() and (tmp_path / "pod").is_dir()
    remove_token(path)  # gone already: nothing to do
    write_token(path, "t", owner=None)
    (path.parent / "other").write_text("not ours")
    remove_token(path)
    assert not path.exists() and (path.parent / "other").exists()


def test_launcher_wraps_namespace_user_and_parent_death() -> None:
    app = NetnsLauncher("weft-ns-p").wrap(["python", "app.py"], proxy=False)
    assert app == [
        "ip", "netns", "exec", "weft-ns-p", "setpriv", "--pdeathsig=KILL", "--", "python", "app.py",
    ]  # fmt: skip
    proxy = NetnsLauncher("weft-ns-p").wrap(["weft"], proxy=True)
    assert proxy[:8] == [
        "ip",
        "netns",
        "exec",
        "weft-ns-p",
        "setpriv",
        "--reuid",
        "2102",
        "--regid",
    ]
    assert "--ambient-caps=+dac_override" in proxy and "--no-new-privs" in proxy
    assert NetnsLauncher(None, proxy_uid=None).wrap(["x"], proxy=True) == [
        "setpriv", "--pdeathsig=KILL", "--", "x",
    ]  # fmt: skip


# -- decisions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "code", "expected"),
    [
        ("Always", 0, AfterExit.RESTART),
        ("Always", 1, AfterExit.RESTART),
        ("OnFailure", 0, AfterExit.SUCCEEDED),
        ("OnFailure", 2, AfterExit.RESTART),
        ("Never", 0, AfterExit.SUCCEEDED),
        ("Never", 137, AfterExit.FAILED),
    ],
)
def test_after_exit(policy: str, code: int, expected: AfterExit) -> None:
    assert after_exit(policy, code) is expected


def test_after_exit_unknown_policy() -> None:
    with pytest.raises(ValueError, match="Sometimes"):
        after_exit("Sometimes", 0)


def test_exit_codes_of_signals() -> None:
    assert exit_code_of(0) == 0 and exit_code_of(3) == 3
    assert exit_code_of(-signal.SIGKILL) == 137 and exit_code_of(-signal.SIGTERM) == 143


def test_readiness_thresholds() -> None:
    r = Readiness(success_threshold=2, failure_threshold=3)
    assert not r.observe(True) and not r.ready
    assert r.observe(True) and r.ready
    assert not r.observe(False) and not r.observe(False) and r.ready
    assert r.observe(False) and not r.ready
    assert not r.observe(True) and r.observe(True)
    r.reset()
    assert not r.ready
    with pytest.raises(ValueError):
        Readiness(0, 1)


def test_crash_loop_backs_off_and_forgets_after_a_good_run() -> None:
    loop = CrashLoop(ExponentialBackoff(base=1.0, maximum=8.0, jitter=0.0), reset_after=60.0)
    assert [loop.next_delay(0.5) for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert loop.next_delay(61.0) == 1.0
    assert loop.next_delay(1.0) == 2.0


def test_probe_and_spec_validation() -> None:
    with pytest.raises(ValueError, match="kind must be http or tcp"):
        Probe(kind="exec", port=1)
    with pytest.raises(ValueError, match=r"Probe\.port"):
        Probe(kind="tcp", port=0)
    with pytest.raises(ValueError, match="restart_policy must be one of"):
        PodSpec("ns", "p", "10.0.0.2", (ContainerSpec("a", ("x",)),), restart_policy="Sometimes")
    with pytest.raises(ValueError, match="argv must not be empty"):
        ContainerSpec("a", ())


# -- the runner, with real processes --------------------------------------------------------

SIDECAR = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ready" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
print("sidecar up", flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""

# exits 0 only when the sidecar already answers: proves the order of starts
CHECK_SIDECAR = (
    "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1).close()"
)

LISTEN = """
import signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
time.sleep(float(sys.argv[2])); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
while True:
    c, _ = s.accept(); c.close()
"""


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.admin = free_port()
        self.statuses: list[dict[str, Any]] = []

    def runner(
        self,
        *containers: ContainerSpec,
        policy: str = "Always",
        grace: float = 5.0,
        meshed: bool = True,
        init: tuple[ContainerSpec, ...] = (),
        init_after: tuple[ContainerSpec, ...] = (),
        proxy_env: dict[str, str] | None = None,
    ) -> PodRunner:
        spec = PodSpec(
            namespace="t",
            name="pod-1",
            ip="127.0.0.1",
            containers=containers,
            restart_policy=policy,
            grace=grace,
            meshed=meshed,
        )
        return PodRunner(
            spec,
            launcher=NetnsLauncher(None, proxy_uid=None),
            probes=NetnsProbes(None, "127.0.0.1", None, admin_port=self.admin),
            log_dir=self.tmp,
            on_status=self.statuses.append,
            proxy_argv=[sys.executable, "-c", SIDECAR, str(self.admin)] if meshed else None,
            base_env=base_env(state_dir=str(self.tmp), python=sys.executable),
            backoff=ExponentialBackoff(base=0.05, maximum=0.2, jitter=0.0),
            ready_poll=0.02,
            init=init,
            init_after=init_after,
            proxy_env=proxy_env,
        )

    def py(self, name: str, code: str, *args: str, **kw: Any) -> ContainerSpec:
        return ContainerSpec(name, (sys.executable, "-c", code, *args), **kw)


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


async def test_job_runs_after_its_sidecar_and_stops_it(harness: Harness) -> None:
    runner = harness.runner(harness.py("job", CHECK_SIDECAR, str(harness.admin)), policy="Never")
    phase = await asyncio.wait_for(runner.run(), 20)
    assert phase == "Succeeded"
    final = harness.statuses[-1]
    assert final["phase"] == "Succeeded" and final["ready"] is False
    states = {c["name"]: c["state"] for c in final["containerStatuses"]}
    assert states["job"]["terminated"]["exitCode"] == 0
    assert "terminated" in states[PROXY_CONTAINER]  # the sidecar was stopped with the job
    assert runner.container_pids() == {}
    assert "sidecar up" in (harness.tmp / f"{PROXY_CONTAINER}.log").read_text()


# appends argv[2] to the file argv[1]
APPEND = (
    "import pathlib, sys; p = pathlib.Path(sys.argv[1]); "
    "p.write_text((p.read_text() if p.exists() else '') + sys.argv[2] + ' ')"
)
# the same, only when the sidecar answers on port argv[3]
APPEND_IF_SIDECAR = (
    "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[3])), 1).close(); "
    + APPEND.split("; ", 1)[1].replace("import pathlib, sys; ", "")
)


async def test_init_containers_run_in_order_around_the_sidecar(harness: Harness) -> None:
    order = harness.tmp / "order"
    before = harness.py("weft-init", APPEND, str(order), "init")
    # after the sidecar: it must already answer
    after = harness.py("migrate", "import pathlib; " + APPEND_IF_SIDECAR, str(order), "migrate",
                       str(harness.admin))  # fmt: skip
    app = harness.py("app", APPEND, str(order), "app")
    runner = harness.runner(app, policy="Never", init=(before,), init_after=(after,),
                            proxy_env={"WEFT_PROXY_CONTROL_TRUST_ANCHORS": "pem"})  # fmt: skip
    task = asyncio.create_task(runner.run())
    await wait_until(lambda: order.exists() and "app" in order.read_text(), 20, what="the app")
    assert order.read_text().split() == ["init", "migrate", "app"]
    assert await asyncio.wait_for(task, 20) == "Succeeded"
    final = harness.statuses[-1]
    inits = {c["name"]: c for c in final["initContainerStatuses"]}
    assert inits["weft-init"]["state"]["terminated"]["exitCode"] == 0
    assert inits["migrate"]["ready"] is True


async def test_the_sidecar_gets_its_own_environment(harness: Harness) -> None:
    runner = harness.runner(harness.py("app", LISTEN, str(free_port()), "0"),
                            proxy_env={"WEFT_PROXY_CONTROL_TRUST_ANCHORS": "pem"})  # fmt: skip
    task = asyncio.create_task(runner.run())
    await wait_until(lambda: PROXY_CONTAINER in runner.container_pids(), 10, what="the sidecar")
    pid = runner.container_pids()[PROXY_CONTAINER]
    environ = (await asyncio.to_thread(Path(f"/proc/{pid}/environ").read_bytes)).split(b"\0")
    assert b"WEFT_PROXY_CONTROL_TRUST_ANCHORS=pem" in environ
    await asyncio.wait_for(runner.terminate(grace=1.0), 10)
    await asyncio.wait_for(task, 5)


async def test_a_failing_init_container_fails_the_pod_or_is_retried(harness: Harness) -> None:
    # restartPolicy Never: the pod fails, and nothing else starts
    started = harness.tmp / "started"
    runner = harness.runner(harness.py("app", APPEND, str(started), "app"), policy="Never",
                            init=(harness.py("weft-init", "import sys; sys.exit(2)"),))  # fmt: skip
    assert await asyncio.wait_for(runner.run(), 20) == "Failed"
    assert not started.exists() and runner.container_pids() == {}
    assert "weft-init exited with 2" in str(harness.statuses[-1].get("message"))
    # otherwise it runs again (with backoff) until it succeeds
    marker = harness.tmp / "attempts"
    code = (
        "import pathlib, sys; p = pathlib.Path(sys.argv[1]); n = len(p.read_text()) "
        "if p.exists() else 0; p.write_text('x' * (n + 1)); sys.exit(0 if n >= 2 else 1)"
    )
    runner = harness.runner(harness.py("app", APPEND, str(started), "app"), policy="OnFailure",
                            init=(harness.py("weft-init", code, str(marker)),),
                            meshed=False)  # fmt: skip
    assert await asyncio.wait_for(runner.run(), 20) == "Succeeded"
    assert marker.read_text() == "xxx" and started.read_text().split() == ["app"]


async def test_terminate_stops_a_running_init_container(harness: Harness) -> None:
    sleeper = harness.py("weft-init", "import time; time.sleep(60)")
    runner = harness.runner(harness.py("app", LISTEN, str(free_port()), "0"), init=(sleeper,))
    task = asyncio.create_task(runner.run())
    await wait_until(lambda: "weft-init" in runner.container_pids(), 10, what="the init")
    await asyncio.wait_for(runner.terminate(grace=1.0), 10)
    await asyncio.wait_for(task, 5)
    assert runner.container_pids() == {}


async def test_failed_job_with_restart_policy_never(harness: Harness) -> None:
    runner = harness.runner(
        harness.py("job", "import sys; sys.exit(3)"), policy="Never", meshed=False
    )
    assert await asyncio.wait_for(runner.run(), 20) == "Failed"
    assert harness.statuses[-1]["reason"] == "Error"
    assert runner.restarts == 0


async def test_on_failure_restarts_until_success(harness: Harness) -> None:
    marker = harness.tmp / "attempts"
    code = (
        "import pathlib, sys; p = pathlib.Path(sys.argv[1]); n = len(p.read_text()) "
        "if p.exists() else 0; p.write_text('x' * (n + 1)); sys.exit(0 if n >= 2 else 1)"
    )
    runner = harness.runner(harness.py("job", code, str(marker)), policy="OnFailure", meshed=False)
    assert await asyncio.wait_for(runner.run(), 20) == "Succeeded"
    assert marker.read_text() == "xxx"
    assert runner.restarts == 2
    assert any(s.get("reason") == "CrashLoopBackOff" for s in harness.statuses)


async def test_crashing_app_is_restarted_and_terminate_stops_everything(
    harness: Harness,
) -> None:
    runner = harness.runner(harness.py("app", "import sys; sys.exit(1)"))
    task = asyncio.create_task(runner.run())
    await wait_until(lambda: runner.restarts >= 3, 15.0, what="three restarts")
    assert not runner.ready
    assert await asyncio.wait_for(runner.terminate(grace=2.0), 10) in ("Succeeded", "Failed")
    await asyncio.wait_for(task, 5)
    assert runner.container_pids() == {}
    assert harness.statuses[-1]["terminating"] is True


async def test_ready_only_once_the_app_listens_then_drains(harness: Harness) -> None:
    port = free_port()
    runner = harness.runner(
        harness.py("web", LISTEN, str(port), "0.3", readiness=Probe(kind="tcp", port=port))
    )
    task = asyncio.create_task(runner.run())
    await wait_until(lambda: runner.phase == "Running", 15.0, what="the app to start")
    await wait_until(lambda: runner.ready, 15.0, what="readiness")
    assert harness.statuses[-1]["ready"] is True
    assert all(c["ready"] for c in harness.statuses[-1]["containerStatuses"])
    runner.mark_terminating()
    assert not runner.ready and harness.statuses[-1]["terminating"] is True
    phase = await asyncio.wait_for(runner.terminate(), 10)
    assert phase == "Succeeded"  # the app exited 0 on SIGTERM
    await asyncio.wait_for(task, 5)


async def test_app_ignoring_sigterm_is_killed_after_the_grace_period(harness: Harness) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ignoring SIGTERM', flush=True); time.sleep(60)"
    )
    runner = harness.runner(harness.py("stubborn", code), meshed=False, grace=0.5)
    task = asyncio.create_task(runner.run())
    await wait_until(lambda: runner.ready, 15.0, what="readiness (no probe: ready once running)")
    log = harness.tmp / "stubborn.log"
    await wait_until(
        lambda: log.exists() and "ignoring SIGTERM" in log.read_text(), 15.0, what="the handler"
    )
    phase = await asyncio.wait_for(runner.terminate(), 10)
    assert phase == "Failed"  # killed: 137
    final = {c["name"]: c["state"] for c in harness.statuses[-1]["containerStatuses"]}
    assert final["stubborn"]["terminated"]["exitCode"] == 137
    await asyncio.wait_for(task, 5)


async def test_terminate_before_the_sidecar_is_ready(harness: Harness) -> None:
    runner = harness.runner(harness.py("app", "import time; time.sleep(60)"))
    harness.admin = free_port()  # nothing answers there: the app must never start
    runner._probes = NetnsProbes(None, "127.0.0.1", None, admin_port=harness.admin)
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0.3)
    assert "app" not in runner.container_pids()
    await asyncio.wait_for(runner.terminate(grace=1.0), 10)
    await asyncio.wait_for(task, 5)
    assert runner.container_pids() == {}


def test_base_env_finds_this_python_first() -> None:
    env = base_env(state_dir="/run/weft", python="/venv/bin/python")
    assert env["PATH"].startswith("/venv/bin:")
    assert env["WEFT_MESH_STATE_DIR"] == "/run/weft"
    assert net.PROXY_UID == 2102
