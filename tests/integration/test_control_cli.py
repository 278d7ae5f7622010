"""Integration tests: the ``weft`` resource commands and ``weft control`` as real processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from weft.control.client import ControlClient
from weft.control.config import ControlConfig
from weft.control.persist import StateDb
from weft.control.server import ControlPlane

APP = """\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        command: [python3, -m, http.server, "8080"]
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
"""


@pytest.fixture
def state_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="weft-cli-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def plane(state_dir: str) -> AsyncIterator[ControlPlane]:
    p = ControlPlane(ControlConfig(state_dir=state_dir, scrape_interval=3600.0))
    await p.start()
    yield p
    await p.stop(grace=1.0)


async def weft(*args: str, state_dir: str) -> tuple[int, str, str]:
    env = {**os.environ, "WEFT_STATE_DIR": state_dir}
    env.pop("WEFT_CONTROL", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "weft", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_commands_without_a_mesh_fail_with_one_clear_line(state_dir: str) -> None:
    for args in (["get", "pods"], ["stat", "deploy"], ["delete", "pod", "x"]):
        rc, out, err = await weft(*args, state_dir=state_dir)
        assert rc == 1, args
        assert out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert f"{state_dir}/control.sock" in lines[0]
        assert "`weft up`" in lines[0]


async def test_invalid_manifest_is_rejected_locally_naming_the_field(
    state_dir: str, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(APP.replace("replicas: 2", "replicas: two"))
    rc, out, err = await weft("apply", "-f", str(bad), state_dir=state_dir)
    assert rc == 1 and out == ""
    assert f"{bad}:6, document 2: spec.replicas: must be an integer, got string" in err
    assert "nothing was applied" in err


async def test_apply_get_delete_round_trip(
    plane: ControlPlane, state_dir: str, tmp_path: Path
) -> None:
    f = tmp_path / "app.yaml"
    f.write_text(APP)
    rc, out, err = await weft("apply", "-f", str(f), state_dir=state_dir)
    assert rc == 0, err
    assert out.splitlines() == [
        "namespace/shop created",
        "deployment.apps/web created",
        "service/web created",
    ]
    rc, out, _ = await weft("apply", "-f", str(tmp_path), state_dir=state_dir)
    assert out.splitlines()[1] == "deployment.apps/web unchanged"

    client = ControlClient(plane.endpoint)
    # the Deployment's ReplicaSet made two pods; a node would start them: one runs here
    for _ in range(100):
        created = sorted(p["metadata"]["name"] for p in await client.list("Pod", "shop"))
        if len(created) == 2:
            break
        await asyncio.sleep(0.05)
    running = created[0]
    status = {
        "phase": "Running",
        "podIP": "10.244.0.9",
        "hostIP": "10.244.0.1",
        "ready": True,
        "containerStatuses": [
            {"name": "web", "ready": True, "restartCount": 3},
            {"name": "weft-proxy", "ready": True, "restartCount": 0},
        ],
    }
    await client.put_status("Pod", "shop", running, status)
    await asyncio.sleep(0.2)  # the controllers take it in
    rc, out, _ = await weft("get", "pods", "-n", "shop", state_dir=state_dir)
    header, *rows = out.strip().splitlines()
    assert header.split() == ["NAME", "READY", "STATUS", "RESTARTS", "IP", "AGE"]
    row = next(r for r in rows if r.startswith(running))
    assert row.split()[:5] == [running, "2/2", "Running", "3", "10.244.0.9"]
    rc, out, _ = await weft("get", "deploy", "-n", "shop", state_dir=state_dir)
    header, row = out.strip().splitlines()
    assert header.split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert row.split()[:4] == ["web", "1/2", "2", "1"]
    rc, out, _ = await weft("get", "svc", "-A", state_dir=state_dir)
    header, row = out.strip().splitlines()
    assert header.split() == ["NAMESPACE", "NAME", "CLUSTER-IP", "PORTS", "AGE"]
    assert row.split()[:4] == ["shop", "web", "10.96.0.2", "80/TCP"]
    rc, out, _ = await weft("get", "svc", "web", "-n", "shop", "-o", "json", state_dir=state_dir)
    assert json.loads(out)["spec"]["clusterIP"] == "10.96.0.2"
    rc, out, _ = await weft("get", "deploy", "-n", "shop", "-o", "yaml", state_dir=state_dir)
    listed = yaml.safe_load(out)
    assert listed["kind"] == "List" and listed["items"][0]["spec"]["replicas"] == 2
    rc, _, err = await weft("get", "pod", "nope", state_dir=state_dir)
    assert rc == 1 and 'Pod "nope" not found' in err
    rc, _, err = await weft("get", "gadgets", state_dir=state_dir)
    assert rc == 1 and "unknown kind 'gadgets'" in err

    rc, out, _ = await weft("delete", "-f", str(f), state_dir=state_dir)
    assert rc == 0
    assert out.splitlines() == [
        "namespace/shop deleted",
        "deployment.apps/web deleted",
        "service/web deleted",
    ]
    rc, _, err = await weft("delete", "deploy", "web", "-n", "shop", state_dir=state_dir)
    assert rc == 1 and "deployment.apps/web not found" in err
    rc, _, _ = await weft(
        "delete", "deploy", "web", "-n", "shop", "--ignore-not-found", state_dir=state_dir
    )
    assert rc == 0


async def test_server_side_rejection_names_file_and_line(
    plane: ControlPlane, state_dir: str, tmp_path: Path
) -> None:
    f = tmp_path / "svc.yaml"
    only_service = APP.split("---\n")[2]
    f.write_text("# a service in a namespace that does not exist\n" + only_service)
    rc, out, err = await weft("apply", "-f", str(f), state_dir=state_dir)
    assert rc == 1 and out == ""
    assert f'{f}:2, document 1: metadata.namespace: namespace "shop" does not exist' in err
    assert await ControlClient(plane.endpoint).list("Service") == []


def leftovers(state_dir: str) -> tuple[bool, dict[str, Any]]:
    """Whether the socket file is still there, and the saved store."""
    db = StateDb(Path(state_dir, "store.db"))
    saved = db.load() or {}
    db.close()
    return os.path.exists(f"{state_dir}/control.sock"), saved


async def test_weft_control_process_serves_and_stops_cleanly(state_dir: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "weft", "control", "--state-dir", state_dir, "--http-listen", "",
        "--scrape-interval", "1s", "--log-level", "warning",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        client = ControlClient(f"unix:{state_dir}/control.sock")

        async def up() -> None:
            while not await client.healthz():  # noqa: ASYNC110 - polling another process
                await asyncio.sleep(0.05)

        await asyncio.wait_for(up(), 30)
        (ns,) = await client.apply(
            [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}]
        )
        assert ns["metadata"]["resourceVersion"] == "2"
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err
        socket_left, saved = leftovers(state_dir)
        assert not socket_left
        assert [o["metadata"]["name"] for o in saved["objects"]] == ["default", "shop"]
    finally:
        if proc.returncode is None:
            proc.kill()
            with contextlib.suppress(Exception):
                await proc.wait()


async def test_weft_control_rejects_bad_flags(state_dir: str) -> None:
    rc, _, err = await weft(
        "control", "--state-dir", state_dir, "--service-cidr", "10.96.0.1/16", state_dir=state_dir
    )
    assert rc == 2 and "service-cidr '10.96.0.1/16' is not a network" in err
    rc, _, err = await weft(
        "control", "--state-dir", state_dir, "--scrape-interval", "soon", state_dir=state_dir
    )
    assert rc == 2 and "invalid duration 'soon'" in err
