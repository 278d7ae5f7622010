"""``securityContext`` of Pods and containers: which user a container runs as, and whether it
is privileged (Kubernetes' fields and precedence).

Interpreted here: ``runAsUser``, ``runAsGroup`` and ``runAsNonRoot`` (pod and container level;
the container's value wins) and ``privileged`` (container level only, as in Kubernetes). The
other Kubernetes fields (``capabilities``, ``fsGroup``, ``seccompProfile``, ...) are kept
verbatim so that the same files work on Kubernetes; unknown ones are refused (typos).

:func:`effective` is the decision a runtime applies: the uid and gid a container asks for
(``None``: the runtime's default, a non-root user on the local runtime), and whether it runs as
root. A container runs as root when it asks for ``runAsUser: 0`` or ``privileged: true``: such a
pod can administer the local mesh, so ``weft get pods`` and ``weft check`` name it.

Not for: which default uid a pod gets, or starting processes as a user (the runtime's
:mod:`weft.runtime.local.users`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from weft.resources.validate import EMPTY, Checker, join

# Kubernetes' limits for runAsUser and runAsGroup
MAX_ID = 2147483647

_KNOWN_POD = frozenset({"runAsUser", "runAsGroup", "runAsNonRoot"})
_KNOWN_CONTAINER = _KNOWN_POD | {"privileged"}
_PASSTHROUGH_POD = frozenset(
    {
        "fsGroup",
        "fsGroupChangePolicy",
        "supplementalGroups",
        "supplementalGroupsPolicy",
        "seLinuxOptions",
        "seLinuxChangePolicy",
        "seccompProfile",
        "appArmorProfile",
        "sysctls",
        "windowsOptions",
    }
)
_PASSTHROUGH_CONTAINER = frozenset(
    {
        "allowPrivilegeEscalation",
        "capabilities",
        "readOnlyRootFilesystem",
        "procMount",
        "seLinuxOptions",
        "seccompProfile",
        "appArmorProfile",
        "windowsOptions",
    }
)


@dataclass(frozen=True, slots=True)
class SecurityContext:
    """One ``securityContext`` (a pod's or a container's); ``None`` fields are unset."""

    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_non_root: bool | None = None
    privileged: bool | None = None  # containers only
    extra: Mapping[str, Any] = field(default_factory=lambda: EMPTY)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in (
            ("runAsUser", self.run_as_user),
            ("runAsGroup", self.run_as_group),
            ("runAsNonRoot", self.run_as_non_root),
            ("privileged", self.privileged),
        ):
            if value is not None:
                out[key] = value
        out.update(self.extra)
        return out


def parse_security_context(
    c: Checker, data: Any, path: str, *, container: bool
) -> SecurityContext | None:
    """A ``securityContext`` mapping (``None`` when absent), every field checked: ids are
    integers 0..2147483647, flags booleans; ``privileged`` only in a container's."""
    if data is None:
        return None
    m = c.mapping(data, path)
    if m is EMPTY:
        return SecurityContext()
    if not container and "privileged" in m:
        c.error(
            join(path, "privileged"),
            "not a pod-level field: privileged is set per container "
            "(spec.containers[].securityContext.privileged), as in Kubernetes",
        )
        m = {k: v for k, v in m.items() if k != "privileged"}
    known, passthrough = (
        (_KNOWN_CONTAINER, _PASSTHROUGH_CONTAINER) if container else (_KNOWN_POD, _PASSTHROUGH_POD)
    )
    extra = c.known_fields(m, path, known, passthrough)

    def flag(key: str) -> bool | None:
        value = m.get(key)
        if value is None:
            return None
        return c.boolean(value, join(path, key))

    return SecurityContext(
        run_as_user=c.integer(
            m.get("runAsUser"), join(path, "runAsUser"), minimum=0, maximum=MAX_ID
        ),
        run_as_group=c.integer(
            m.get("runAsGroup"), join(path, "runAsGroup"), minimum=0, maximum=MAX_ID
        ),
        run_as_non_root=flag("runAsNonRoot"),
        privileged=flag("privileged") if container else None,
        extra=MappingProxyType(extra),
    )


@dataclass(frozen=True, slots=True)
class Effective:
    """What one container asks for: ``uid``/``gid`` (``None``: the runtime's default user and
    its group) and whether it runs as root (``runAsUser: 0`` or ``privileged: true``)."""

    uid: int | None
    gid: int | None
    privileged: bool

    @property
    def root(self) -> bool:
        return self.uid == 0


def effective(pod: SecurityContext | None, container: SecurityContext | None) -> Effective:
    """The container's settings over the pod's (Kubernetes' precedence). ``privileged: true``
    without a ``runAsUser`` means root; :func:`check_container` refuses it with another uid."""
    p = pod or SecurityContext()
    k = container or SecurityContext()
    uid = k.run_as_user if k.run_as_user is not None else p.run_as_user
    gid = k.run_as_group if k.run_as_group is not None else p.run_as_group
    privileged = bool(k.privileged)
    if privileged and uid is None:
        uid = 0
    return Effective(uid=uid, gid=gid, privileged=privileged or uid == 0)


def check_container(
    c: Checker, pod: SecurityContext | None, container: SecurityContext | None, path: str
) -> None:
    """Combinations a container cannot run with, reported on its ``securityContext`` at
    ``path``: ``runAsNonRoot: true`` with a root user (Kubernetes refuses to start it), and
    ``privileged: true`` with a non-zero ``runAsUser`` (a privileged container runs as root
    on the local runtime)."""
    p = pod or SecurityContext()
    k = container or SecurityContext()
    eff = effective(pod, container)
    non_root = k.run_as_non_root if k.run_as_non_root is not None else p.run_as_non_root
    if non_root and eff.root:
        where = "privileged" if k.privileged else "runAsUser"
        c.error(
            join(path, where),
            "runs as root (uid 0) but runAsNonRoot is true: set a non-zero runAsUser",
        )
    if k.privileged and eff.uid not in (None, 0):
        c.error(
            join(path, "privileged"),
            f"privileged containers run as root on the local runtime, but runAsUser is "
            f"{eff.uid}: drop privileged or runAsUser",
        )


def root_containers(
    pod: SecurityContext | None, containers: Iterable[tuple[str, SecurityContext | None]]
) -> list[str]:
    """The names of the containers that run as root (``runAsUser: 0`` or ``privileged``)."""
    return [name for name, sc in containers if effective(pod, sc).root]


def root_containers_of(spec: Any) -> list[str]:
    """:func:`root_containers` of a pod's ``spec`` as the API serves it (a plain mapping;
    malformed parts count as unset), for the CLI."""
    if not isinstance(spec, Mapping):
        return []
    c = Checker()
    pod = parse_security_context(c, spec.get("securityContext"), "spec", container=False)
    containers: list[tuple[str, SecurityContext | None]] = []
    for item in spec.get("containers") or []:
        if isinstance(item, Mapping):
            sc = parse_security_context(c, item.get("securityContext"), "c", container=True)
            containers.append((str(item.get("name") or "?"), sc))
    return root_containers(pod, containers)
