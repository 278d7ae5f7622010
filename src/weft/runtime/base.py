"""The runtime seam: what the CLI needs from "the place where pods run".

A runtime brings a mesh up (the control plane plus whatever runs pods), takes it down, checks the
host and the running mesh, runs a command inside a pod as the pod's app would run, and shows a
pod's logs. :class:`~weft.runtime.local.mesh.LocalMesh` implements it with network namespaces on
this machine; a Kubernetes runtime (install manifests, ``exec``/``logs`` through the API server)
implements the same protocol later, so ``weft up/down/check/exec/logs`` do not change.

Resources (Deployments, Services, Pods) are not part of this seam: they go through the control
plane's API whatever the runtime is.

Not for: pod supervision, networking or cleanup details (see :mod:`weft.runtime.local`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

# Container names a user may pass to ``weft logs -c``: the sidecar and "the app" (the pod's first
# app container). Any app container may also be named explicitly.
PROXY_CONTAINER = "weft-proxy"
CONTAINER_ALIASES = {"proxy": PROXY_CONTAINER}


@dataclass(frozen=True, slots=True)
class Check:
    """One line of ``weft check``: what was checked, whether it holds, and how to fix it."""

    name: str
    ok: bool
    detail: str = ""
    hint: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("Check.name must not be empty")


@dataclass(frozen=True, slots=True)
class PodRef:
    """A pod by namespace and name."""

    namespace: str
    name: str

    def __post_init__(self) -> None:
        if not self.namespace:
            raise ValueError(f"PodRef.namespace must not be empty (pod {self.name!r})")
        if not self.name:
            raise ValueError("PodRef.name must not be empty")

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class CheckWarning(Check):
    """A check that holds for now but needs attention soon: printed ⚠ with its hint."""


class RuntimeFailure(Exception):
    """A runtime operation failed; the message says what and how to fix it."""


class Runtime(Protocol):
    """Where the mesh and its pods run."""

    @property
    def name(self) -> str:
        """Short name for messages (``local``, ``kubernetes``)."""
        ...

    @property
    def location(self) -> str:
        """Where this mesh lives, for messages (a state directory, a cluster's context)."""
        ...

    @property
    def control_endpoint(self) -> str:
        """Where clients reach the control plane's API (``unix:/run/weft/control.sock``)."""
        ...

    def host_checks(self) -> list[Check]:
        """Whether this host can run the mesh at all (privileges, kernel features, tools)."""
        ...

    def up(self, *, timeout: float = 30.0) -> None:
        """Start the control plane and the pod runner; return once the API answers.

        Idempotent: a mesh that is already up is left alone (a missing component is restarted);
        leftovers of a crashed mesh are removed first. Raises :class:`RuntimeFailure` naming what
        is missing or what failed.
        """
        ...

    def down(self, *, timeout: float = 30.0) -> list[str]:
        """Stop everything and remove all the runtime created; returns what was removed."""
        ...

    def mesh_checks(self) -> list[Check]:
        """Whether the running mesh is healthy (control plane reachable, every proxy ready)."""
        ...

    def find_pod(self, name: str, namespace: str | None = None) -> tuple[PodRef, Any]:
        """The pod called ``name`` (in ``namespace``, or the only one of that name) and its
        object when known. Raises :class:`RuntimeFailure` when there is none or several."""
        ...

    def exec(self, pod: PodRef, argv: Sequence[str]) -> int:
        """Run ``argv`` inside ``pod`` as its app runs (same network, names, redirection).

        May replace the calling process; returns the command's exit status otherwise.
        """
        ...

    def logs(self, pod: PodRef, container: str | None, *, follow: bool, out: BinaryIO) -> int:
        """Copy a container's log to ``out`` (``None``: the app); ``follow`` waits for more
        until the pod is gone or the caller interrupts. Returns an exit status."""
        ...
