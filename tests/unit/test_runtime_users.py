"""Unit tests for weft.runtime.local.users (which user an app runs as, its command line),
weft.runtime.local.sandbox (Weft's Python made reachable), and what the CLI shows of pods that
run as root (``weft get pods``, ``weft check``). The real-process tests need root (they change
user and mount); they skip otherwise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from weft.cli.commands.check import CheckWarning, privileged_check
from weft.cli.commands.get import table_for
from weft.resources.models import Pod
from weft.resources.security import SecurityContext
from weft.runtime.local import sandbox
from weft.runtime.local.launch import NetnsLauncher
from weft.runtime.local.podplan import pod_spec
from weft.runtime.local.users import (
    POD_UID_BASE,
    ROOT,
    RunAs,
    app_argv,
    blocked_by,
    exec_user,
    pod_uid,
    reach_plan,
    run_as,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changes user and mounts: needs root")


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A directory everyone can search (pytest's own tmp directories are root's only)."""
    path = Path(tempfile.mkdtemp(prefix="weft-users-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for p in path.rglob("*"):
            if p.is_dir():
                p.chmod(0o755)
        shutil.rmtree(path)


def _pod_doc(pod_sc: Any = None, container_sc: Any = None, ip: str | None = "10.244.0.7") -> dict:
    container: dict[str, Any] = {"name": "app", "command": ["sleep", "1"]}
    if container_sc is not None:
        container["securityContext"] = container_sc
    spec: dict[str, Any] = {"containers": [container, {"name": "side", "command": ["x"]}]}
    if pod_sc is not None:
        spec["securityContext"] = pod_sc
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "shop"},
        "spec": spec,
    }
    if ip:
        doc["status"] = {"phase": "Running", "podIP": ip}
    return doc


# -- the decision ---------------------------------------------------------------------------


def test_default_uid_is_the_pods_own() -> None:
    assert pod_uid("10.244.0.7") == POD_UID_BASE + 0xF40007
    assert pod_uid("10.0.0.1") != pod_uid("10.0.0.2")
    # any private range is at most a /8: the low 24 bits tell running pods apart
    assert pod_uid("10.255.255.255") == POD_UID_BASE + 0xFFFFFF < 2**31
    assert pod_uid("192.168.1.9") == POD_UID_BASE + 0xA80109


@pytest.mark.parametrize(
    ("pod_sc", "container_sc", "expected"),
    [
        (None, None, RunAs(POD_UID_BASE + 0xF40007, POD_UID_BASE + 0xF40007)),
        (SecurityContext(run_as_user=0), None, ROOT),
        (None, SecurityContext(privileged=True), ROOT),
        (SecurityContext(run_as_user=0), SecurityContext(run_as_user=1000), RunAs(1000, 1000)),
        (SecurityContext(run_as_user=1000, run_as_group=50), None, RunAs(1000, 50)),
        (SecurityContext(run_as_group=50), None, RunAs(POD_UID_BASE + 0xF40007, 50)),
        (None, SecurityContext(run_as_user=0, run_as_group=7), RunAs(0, 7)),
    ],
)
def test_run_as_decision(
    pod_sc: SecurityContext | None, container_sc: SecurityContext | None, expected: RunAs
) -> None:
    assert run_as(pod_sc, container_sc, "10.244.0.7") == expected


def test_pod_spec_gives_each_container_its_user_and_home() -> None:
    spec = pod_spec(Pod.from_dict(_pod_doc(container_sc={"runAsUser": 0})), "10.244.0.7")
    app, side = spec.containers
    assert app.user == ROOT and dict(app.env).get("HOME") is None  # the base env's /root
    assert side.user == RunAs(pod_uid("10.244.0.7"), pod_uid("10.244.0.7"))
    assert dict(side.env)["HOME"] == "/"


def test_exec_runs_as_the_first_containers_user() -> None:
    assert exec_user(_pod_doc()) == RunAs(pod_uid("10.244.0.7"), pod_uid("10.244.0.7"))
    assert exec_user(_pod_doc({"runAsUser": 0})) == ROOT
    assert exec_user(_pod_doc(None, {"runAsUser": 42}, ip=None)) == RunAs(42, 42)
    with pytest.raises(ValueError, match="no address yet"):
        exec_user(_pod_doc(ip=None))
    with pytest.raises(ValueError, match="invalid Pod"):
        exec_user({"kind": "Pod"})


# -- command lines --------------------------------------------------------------------------


def test_app_argv_forms() -> None:
    assert app_argv(["x"], None, python="/py") == ["setpriv", "--pdeathsig=KILL", "--", "x"]
    assert app_argv(["x"], ROOT, python="/py") == ["setpriv", "--pdeathsig=KILL", "--", "x"]
    assert app_argv(["x"], ROOT, python="/py", pdeathsig=False) == ["x"]
    user = RunAs(1000000007, 1000000008)
    plain = app_argv(["x", "y"], user, python="/py")
    assert plain == [
        "setpriv", "--reuid", "1000000007", "--regid", "1000000008", "--clear-groups",
        "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--pdeathsig=KILL",
        "--", "x", "y",
    ]  # fmt: skip
    reached = app_argv(["x"], user, python="/py", reach=[("/root", "/root/.pyenv")])
    assert reached[:6] == [
        "/py", "-I", "-m", "weft.runtime.local.sandbox", "--reach=/root=/root/.pyenv", "--",
    ]  # fmt: skip
    assert reached[6:] == app_argv(["x"], user, python="/py")
    launcher = NetnsLauncher("weft-ns-p", python="/py", reach=())
    assert launcher.wrap(["x"], proxy=False, user=user)[:5] == [
        "ip", "netns", "exec", "weft-ns-p", "setpriv",
    ]  # fmt: skip
    # the sidecar keeps its own user, whatever the app's
    assert "2102" in launcher.wrap(["weft"], proxy=True, user=user)


def test_reach_plan_finds_the_topmost_blocking_directory(open_tmp: Path) -> None:
    home = open_tmp / "home"
    (home / "tools" / "py" / "lib").mkdir(parents=True)
    (home / "open").mkdir()
    home.chmod(0o700)
    (home / "tools").chmod(0o700)
    py = str(home / "tools" / "py")
    assert blocked_by(py) == str(home)
    assert blocked_by(str(home)) is None and blocked_by(str(open_tmp / "x" / "y")) is None
    plan = reach_plan([py, py + "/lib", str(home / "open")])
    # the inner path comes with the outer one; both paths go under the same tmpfs
    assert plan == ((str(home), str(home / "open")), (str(home), py))
    home.chmod(0o755)
    assert reach_plan([py]) == ((str(home / "tools"), py),)
    (home / "tools").chmod(0o755)
    assert reach_plan([py]) == ()


def test_sandbox_arguments() -> None:
    assert sandbox.parse(["--reach=/a=/a/b", "--", "x", "y"]) == ([("/a", "/a/b")], ["x", "y"])
    for bad in (["--reach=/a=/b/c", "--", "x"], ["--reach=a=/a/b", "--", "x"], ["--", ""][:1]):
        with pytest.raises(ValueError):
            sandbox.parse(bad)
    with pytest.raises(ValueError, match="unknown argument"):
        sandbox.parse(["--other", "--", "x"])


@needs_root
def test_a_non_root_app_reaches_the_bound_path_and_nothing_else_of_its_directory(
    open_tmp: Path,
) -> None:
    home = open_tmp / "home"
    tools = home / "tools"
    tools.mkdir(parents=True)
    (tools / "hello.txt").write_text("hello")
    (home / "secret.txt").write_text("secret")
    home.chmod(0o700)
    user = RunAs(POD_UID_BASE + 12345, POD_UID_BASE + 12345)
    probe = (
        "import json, os\n"
        "def read(p):\n"
        "    try:\n"
        "        return open(p).read()\n"
        "    except OSError as exc:\n"
        "        return type(exc).__name__\n"
        f"print(json.dumps({{'uid': os.getuid(), 'groups': os.getgroups(),"
        f" 'tool': read({str(tools / 'hello.txt')!r}),"
        f" 'secret': read({str(home / 'secret.txt')!r}),"
        f" 'listing': sorted(os.listdir({str(home)!r}))}}))\n"
    )
    # /usr/bin/python3 (reachable to anyone) runs the probe; Weft's may live under /root
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    argv = app_argv(
        [python, "-I", "-c", probe],
        user,
        python=sys.executable,
        reach=reach_plan([str(tools)]),
    )
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, cwd="/")
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert (seen["uid"], seen["groups"]) == (user.uid, [])
    assert seen["tool"] == "hello"
    assert seen["secret"] == "FileNotFoundError"  # hidden under the tmpfs, not just unreadable
    assert seen["listing"] == ["tools"]
    assert reach_plan([str(tools)]) == ((str(home), str(tools)),)
    # nothing changed for the host
    assert (home / "secret.txt").read_text() == "secret"
    assert str(home) not in Path("/proc/self/mountinfo").read_text()


@needs_root
def test_without_the_sandbox_a_non_root_user_is_refused(open_tmp: Path) -> None:
    home = open_tmp / "home"
    home.mkdir()
    (home / "secret.txt").write_text("secret")
    home.chmod(0o700)
    argv = app_argv(["cat", str(home / "secret.txt")], RunAs(POD_UID_BASE + 1, POD_UID_BASE + 1),
                    python=sys.executable)  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode != 0 and "Permission denied" in out.stderr


# -- what the CLI shows ---------------------------------------------------------------------


def test_get_pods_adds_a_privileged_column_only_when_some_pod_runs_as_root() -> None:
    plain = _pod_doc()
    columns, rows = table_for("Pod", [plain], now=0)
    assert columns == ["NAME", "READY", "STATUS", "RESTARTS", "IP", "AGE"]
    rooty = _pod_doc({"runAsUser": 0})
    rooty["metadata"]["name"] = "rooty"
    half = _pod_doc(None, {"privileged": True})
    half["metadata"]["name"] = "half"
    columns, rows = table_for("Pod", [plain, rooty, half], now=0)
    assert columns[-1] == "PRIVILEGED"
    assert [r[-1] for r in rows] == ["-", "root", "root (app)"]


def test_check_warns_naming_the_privileged_pods() -> None:
    assert privileged_check([_pod_doc()]) is None
    rooty = _pod_doc(None, {"runAsUser": 0})
    rooty["metadata"]["name"] = "rooty"
    check = privileged_check([_pod_doc(), rooty])
    assert isinstance(check, CheckWarning) and check.ok
    assert check.name == "privileged pods (run as root): shop/rooty"
