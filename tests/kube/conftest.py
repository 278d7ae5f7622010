"""A real upstream Kubernetes API server for the contract tests (``scripts/k8s-rig``).

One rig per test session: etcd, kube-apiserver and kube-controller-manager built from their Go
modules (``make k8s-rig``, which ``make test`` runs first), started on loopback in a temporary
directory, stopped at the end (and by its own watchdog if the session dies). Tests that need it
take the ``kube`` fixture: a kubeconfig path and a namespace of the test's own, deleted after.

Not a fake: where the embedded API server and this one differ, this one is right.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return self.rig.kubectl_run(*args, input=input, check=check)


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
