"""The two Kubernetes API servers the contract tests run against: the real one and Weft's own.

The real one (``scripts/k8s-rig``): one rig per test session: etcd, kube-apiserver and
kube-controller-manager built from their Go modules (``make k8s-rig``, which ``make test`` runs
first), started on loopback in a temporary directory, stopped at the end (and by its own
watchdog if the session dies). Tests of what only it serves take the ``kube`` fixture: a
kubeconfig path and a namespace of the test's own, deleted after.

The embedded one: the local mesh's control plane (its store served as the Kubernetes API, and
its EndpointSlice controller), started in the test's event loop on a loopback port.

Contract tests take the ``cluster`` fixture, parametrized over both: the same test, the same
client code, the same ``kubectl``. Not a fake: where the two differ, the real one is right and
the embedded one is fixed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
RIG = REPO / "scripts" / "k8s-rig"


@dataclass(frozen=True)
class KubeRig:
    kubeconfig: Path
    kubectl: Path
    workdir: Path

    def apiserver(self, action: str) -> None:
        """``stop`` or ``start`` the API server alone (an outage; ``start`` waits for /readyz)."""
        done = subprocess.run(
            [str(RIG), "apiserver", action, str(self.workdir)],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"k8s-rig apiserver {action}: {done.stderr[-2000:]}")

    def kubectl_run(self, *args: str, input: str | None = None, check: bool = True) -> str:
        done = subprocess.run(
            [str(self.kubectl), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout


@dataclass(frozen=True)
class Kube:
    """The rig and a namespace of this test's own."""

    rig: KubeRig
    namespace: str

    @property
    def kubeconfig(self) -> Path:
        return self.rig.kubeconfig

    real = True

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return self.rig.kubectl_run(*args, input=input, check=check)

    @contextlib.asynccontextmanager
    async def outage(self) -> AsyncIterator[None]:
        """The API server stopped for the block."""
        import asyncio

        await asyncio.to_thread(self.rig.apiserver, "stop")
        try:
            yield
        finally:
            await asyncio.to_thread(self.rig.apiserver, "start")


def _kubectl_binary() -> str:
    bins = _bin_dir()
    if bins is not None and (bins / "kubectl").exists():
        return str(bins / "kubectl")  # the rig's: the same kubectl for both servers
    found = shutil.which("kubectl")
    if found is None:
        raise RuntimeError("no kubectl: build the rig (make k8s-rig) or install kubectl")
    return found


@dataclass
class Embedded:
    """The local mesh's control plane serving the Kubernetes API, and a namespace of the
    test's own in it."""

    namespace: str
    state_dir: str
    kubeconfig: Path
    kubectl_path: str
    port: int = 0
    plane: Any = None
    real = False
    extra: dict[str, Any] = field(default_factory=dict)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        done = subprocess.run(
            [self.kubectl_path, "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    async def start(self) -> None:
        from weft.control.config import ControlConfig
        from weft.control.server import ControlPlane

        config = ControlConfig(
            state_dir=self.state_dir,
            scrape_interval=3600.0,
            http_listen=("127.0.0.1", self.port),
            watch_bookmark_s=2.0,
        )
        self.plane = ControlPlane(config)
        await self.plane.start()
        assert self.plane.tcp_address is not None
        self.port = self.plane.tcp_address[1]

    async def stop(self) -> None:
        if self.plane is not None:
            await self.plane.stop(grace=0.5)
            self.plane = None

    @contextlib.asynccontextmanager
    async def outage(self) -> AsyncIterator[None]:
        """The control plane stopped for the block (its state kept on disk)."""
        await self.stop()
        try:
            yield
        finally:
            await self.start()


Cluster = Kube | Embedded


@pytest.fixture(params=["real", "embedded"])
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    """Each contract test once against the real API server and once against the embedded."""
    import asyncio

    namespace = f"t-{uuid.uuid4().hex[:10]}"
    if request.param == "real":
        rig: KubeRig = request.getfixturevalue("kube_rig")
        await asyncio.to_thread(rig.kubectl_run, "create", "namespace", namespace)
        try:
            yield Kube(rig, namespace)
        finally:
            await asyncio.to_thread(
                rig.kubectl_run, "delete", "namespace", namespace, "--wait=false", check=False
            )
        return
    state_dir = tempfile.mkdtemp(prefix="weft-kube-", dir="/tmp")  # unix socket paths are short
    kubeconfig = Path(state_dir) / "kubeconfig"
    embedded = Embedded(namespace, state_dir, kubeconfig, _kubectl_binary())
    try:
        await embedded.start()
        kubeconfig.write_text(json.dumps(kubeconfig_for(f"http://127.0.0.1:{embedded.port}")))
        # (``kubectl create namespace`` sends protobuf, which the embedded API does not read:
        # docs/kubernetes.md; apply sends JSON)
        ns_doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        await asyncio.to_thread(embedded.kubectl, "apply", "-f", "-", input=json.dumps(ns_doc))
        yield embedded
    finally:
        await embedded.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


def kubeconfig_for(server: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "weft", "cluster": {"server": server}}],
        "users": [{"name": "admin", "user": {}}],
        "contexts": [{"name": "weft", "context": {"cluster": "weft", "user": "admin"}}],
        "current-context": "weft",
    }


def _bin_dir() -> Path | None:
    done = subprocess.run([str(RIG), "bin"], capture_output=True, text=True, check=False)
    path = Path(done.stdout.strip()) if done.returncode == 0 else None
    return path if path is not None and (path / "kube-apiserver").exists() else None


@pytest.fixture(scope="session")
def kube_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeRig]:
    bins = _bin_dir()
    if bins is None:
        # CI builds it (`make test` runs `make k8s-rig` first); a developer's quick run may not have
        if os.environ.get("CI"):
            raise RuntimeError("the Kubernetes rig is not built: run `make k8s-rig`")
        pytest.skip("the Kubernetes rig is not built (make k8s-rig)")
    workdir = tmp_path_factory.mktemp("k8s-rig")
    up = subprocess.run(
        [str(RIG), "up", str(workdir), "--ttl", "3600"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if up.returncode != 0:
        subprocess.run([str(RIG), "down", str(workdir)], capture_output=True, check=False)
        raise RuntimeError(f"k8s-rig up failed:\n{up.stderr[-3000:]}")
    try:
        yield KubeRig(Path(up.stdout.strip()), bins / "kubectl", workdir)
    finally:
        subprocess.run(
            [str(RIG), "down", str(workdir)], capture_output=True, timeout=60, check=False
        )
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def kube(kube_rig: KubeRig) -> Iterator[Kube]:
    namespace = f"t-{uuid.uuid4().hex[:10]}"
    kube_rig.kubectl_run("create", "namespace", namespace)
    try:
        yield Kube(kube_rig, namespace)
    finally:
        kube_rig.kubectl_run("delete", "namespace", namespace, "--wait=false", check=False)
