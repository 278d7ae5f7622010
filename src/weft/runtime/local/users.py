"""Which user each app container runs as on the local runtime, and the command line that
starts it as that user.

Pods share the host's filesystem, users and process table (only the network is isolated), so
the user is what keeps a pod from the mesh's secrets and from other pods:

- **Default: a uid of the pod's own**, :data:`POD_UID_BASE` plus the low 24 bits of the pod's
  IPv4 address (gid the same), no supplementary groups, no capabilities, ``no_new_privs`` (a
  setuid binary gives nothing). Pod ranges are private IPv4 ranges (a /8 at most), so the low
  24 bits tell running pods apart: no two running pods share a default uid, so one pod's app
  cannot signal or ptrace another's (they share the process table), nor read the files it
  keeps private. The state directory (control socket, tokens, CA, token key, logs) is 0700
  root: nothing in it is reachable to such a user.
- ``securityContext.runAsUser: N`` / ``runAsGroup: G`` (pod or container level, the
  container's wins): that uid and gid (gid N when only the uid is given). Two pods that ask
  for the same uid share it, with what that means above.
- ``runAsUser: 0`` or ``privileged: true``: root, as before this module existed. Such a pod can
  administer the mesh; ``weft get pods`` and ``weft check`` say so.

Weft's own Python may live where another user cannot reach it (a pyenv or a virtualenv under
``/root``, mode 0700), and apps such as the demo run ``python -m ...`` from it. For a non-root
container whose path to that Python is blocked, :func:`app_argv` runs
:mod:`weft.runtime.local.sandbox` first (as root, in the container's private mount namespace):
a tmpfs over the blocking directory with just the Python's directories bound into it, the
rest of that directory hidden. Nothing else of the host's filesystem changes for the app.

Not for: validating ``securityContext`` (:mod:`weft.resources.security`), starting processes
(:mod:`weft.runtime.local.pod`).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import stat
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weft.resources.security import SecurityContext, effective

# Far above login users (1000...) and the usual subordinate-id ranges of rootless containers
# (100000 + 65536 per user), below 2**31 for tools that read uids as signed: 1000000000 ..
# 1016777215.
POD_UID_BASE = 1_000_000_000
HOME_NON_ROOT = "/"  # what Kubernetes gives a user without a passwd entry


@dataclass(frozen=True, slots=True)
class RunAs:
    """The uid and gid of a container's processes."""

    uid: int
    gid: int

    def __post_init__(self) -> None:
        for name in ("uid", "gid"):
            value = getattr(self, name)
            if not 0 <= value < 2**32 - 1:
                raise ValueError(f"RunAs.{name} must be 0..4294967294, got {value!r}")

    @property
    def root(self) -> bool:
        return self.uid == 0


ROOT = RunAs(0, 0)


def pod_uid(ip: str) -> int:
    """The default uid of the pod at ``ip``: :data:`POD_UID_BASE` + the address's low 24 bits."""
    return POD_UID_BASE + (int(ipaddress.IPv4Address(ip)) & 0xFFFFFF)


def run_as(pod: SecurityContext | None, container: SecurityContext | None, ip: str) -> RunAs:
    """The user a container of the pod at ``ip`` runs as (see the module docstring)."""
    eff = effective(pod, container)
    uid = pod_uid(ip) if eff.uid is None else eff.uid
    gid = eff.gid if eff.gid is not None else uid
    return RunAs(uid, gid)


# -- reaching Weft's Python ------------------------------------------------------------------


def python_dirs(python: str) -> list[str]:
    """The directories a process needs to run ``python`` with Weft importable: the
    interpreter's own, its prefixes (the stdlib, a virtualenv) and the ``weft`` package's
    parent (an editable install)."""
    import weft

    dirs = [
        os.path.dirname(os.path.realpath(python)),
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        str(Path(weft.__file__).resolve().parent.parent),
    ]
    return [os.path.realpath(d) for d in dirs]


def blocked_by(path: str) -> str | None:
    """The topmost directory above ``path`` that other users cannot search (no ``o+x``), or
    None when every directory above it can be searched."""
    parts = Path(path).parts
    for i in range(2, len(parts)):  # never "/" itself
        ancestor = os.path.join(*parts[:i])
        try:
            mode = os.stat(ancestor).st_mode
        except OSError:
            return None
        if not mode & stat.S_IXOTH:
            return ancestor
    return None


def reach_plan(paths: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """``(blocking directory, path)`` for each of ``paths`` another user cannot reach: the
    sandbox mounts a tmpfs over the blocking directory and binds the path into it. Paths
    inside another path of the plan are left out (the outer bind brings them along)."""
    unique = sorted({os.path.normpath(p) for p in paths})
    plan: list[tuple[str, str]] = []
    for path in unique:
        if any(path == p or path.startswith(p + os.sep) for _, p in plan):
            continue
        ancestor = blocked_by(path)
        if ancestor is not None:
            plan.append((ancestor, path))
    return tuple(plan)


@functools.cache
def python_reach(python: str) -> tuple[tuple[str, str], ...]:
    """:func:`reach_plan` for Weft's Python (computed once per process)."""
    return reach_plan(python_dirs(python))


# -- command lines ---------------------------------------------------------------------------


def app_argv(
    argv: Sequence[str],
    user: RunAs | None,
    *,
    python: str,
    reach: Sequence[tuple[str, str]] = (),
    pdeathsig: bool = True,
) -> list[str]:
    """The command (to run as root, already inside the pod's namespace) that runs ``argv`` as
    ``user``; None or root: unchanged (with the parent-death signal). A non-root user gets no
    groups, no capabilities and ``no_new_privs``; with a ``reach`` plan the sandbox makes
    Weft's Python reachable first (see the module docstring)."""
    death = ["--pdeathsig=KILL"] if pdeathsig else []
    if user is None or user.root:
        return ["setpriv", *death, "--", *argv] if pdeathsig else list(argv)
    out: list[str] = []
    if reach:
        # -I: neither the working directory nor PYTHON* variables reach this root process
        out += [python, "-I", "-m", "weft.runtime.local.sandbox"]
        out += [f"--reach={ancestor}={path}" for ancestor, path in reach]
        out += ["--"]
    out += [
        "setpriv",
        "--reuid", str(user.uid), "--regid", str(user.gid), "--clear-groups",
        "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
        *death, "--", *argv,
    ]  # fmt: skip
    return out


def exec_user(doc: Mapping[str, Any]) -> RunAs:
    """The user ``weft exec`` runs as in the pod ``doc`` (a Pod object as the control plane
    serves it): its first app container's, as Kubernetes runs ``kubectl exec`` as the
    container's user. Raises ValueError when it cannot be told (an invalid object, a pod
    without an address yet)."""
    from weft.resources.errors import InvalidResources
    from weft.resources.models import Pod

    try:
        pod = Pod.from_dict(doc)
    except InvalidResources as exc:
        raise ValueError(f"invalid Pod object: {exc}") from None
    first = pod.spec.containers[0]
    eff = effective(pod.spec.security_context, first.security_context)
    if eff.uid is None and not pod.status.pod_ip:
        raise ValueError("the pod has no address yet, so no user")
    return run_as(pod.spec.security_context, first.security_context, pod.status.pod_ip or "0.0.0.0")
