"""What to run for a Pod on this machine: its containers as commands (env with ``$(VAR)``
expansion, the user each runs as, readiness probes), the sidecar's command line, and the
identity token's file.

:func:`pod_spec` reads a :class:`~weft.resources.models.Pod` into a :class:`PodSpec` (or raises
:class:`PodSpecError` naming the field); :func:`proxy_argv` is the ``weft proxy`` command line
the sidecar runs (the contract in docs/local-runtime.md). A meshed pod's identity token (issued
by the agent as the kubelet issues a projected service-account token) lives in
``<state>/pods/<ns>/<pod>/identity/token``: :func:`write_token` puts it there for the proxy's uid
only, :func:`remove_token` takes it away with the pod.

Not for: running anything (:mod:`weft.runtime.local.pod`).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weft.resources.models import Pod
from weft.runtime.base import PROXY_CONTAINER
from weft.runtime.local import net, users
from weft.runtime.local.users import RunAs

ANNOTATION_INJECT = "weft.io/inject"
RESTART_POLICIES = ("Always", "OnFailure", "Never")


class PodSpecError(ValueError):
    """A pod cannot run locally; the message names the field and the value."""


# -- what to run ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Probe:
    """A readiness check: ``http`` GET (2xx/3xx passes) or ``tcp`` connect, on the pod's IP."""

    kind: str
    port: int
    path: str = "/"
    period: float = 1.0
    initial_delay: float = 0.0
    timeout: float = 1.0
    failure_threshold: int = 3
    success_threshold: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("http", "tcp"):
            raise ValueError(f"Probe.kind must be http or tcp, got {self.kind!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"Probe.port must be 1-65535, got {self.port!r}")
        for name in ("period", "timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Probe.{name} must be positive, got {getattr(self, name)!r}")
        if self.initial_delay < 0:
            raise ValueError(f"Probe.initial_delay must be >= 0, got {self.initial_delay!r}")
        if self.failure_threshold < 1 or self.success_threshold < 1:
            raise ValueError("Probe thresholds must be >= 1")


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """One app container as the local runtime runs it (``argv`` already expanded)."""

    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    working_dir: str | None = None
    readiness: Probe | None = None
    user: RunAs | None = None  # None: as the agent (root); see weft.runtime.local.users

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ContainerSpec.name must not be empty")
        if not self.argv:
            raise ValueError(f"container {self.name!r}: argv must not be empty")


@dataclass(frozen=True, slots=True)
class PodSpec:
    """A pod as the local runtime runs it, read from a Pod resource by :func:`pod_spec`."""

    namespace: str
    name: str
    ip: str
    containers: tuple[ContainerSpec, ...]
    restart_policy: str = "Always"
    grace: float = 30.0
    meshed: bool = True
    deployment: str | None = None
    service_account: str = "default"
    skip_inbound: tuple[net.PortRange, ...] = ()
    skip_outbound: tuple[net.PortRange, ...] = ()

    def __post_init__(self) -> None:
        if self.restart_policy not in RESTART_POLICIES:
            raise ValueError(
                f"restart_policy must be one of {', '.join(RESTART_POLICIES)}, "
                f"got {self.restart_policy!r}"
            )
        if not self.containers:
            raise ValueError(f"pod {self.namespace}/{self.name} has no containers")
        if self.grace < 0:
            raise ValueError(f"grace must be >= 0, got {self.grace!r}")
        names = [c.name for c in self.containers]
        if PROXY_CONTAINER in names:
            raise ValueError(f"container name {PROXY_CONTAINER!r} is reserved for the sidecar")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate container names in {names}")

    @property
    def netns(self) -> str:
        return net.pod_netns_name(self.namespace, self.name)


_VAR = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in command and args: defined variables are replaced,
    undefined references stay as written, ``$$`` is a literal ``$``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR.sub(sub, text)


def _probe_from(raw: Any, path: str, ports: Mapping[str, int]) -> Probe | None:
    """A ``readinessProbe`` mapping -> Probe; None for kinds the local runtime cannot run."""
    if not isinstance(raw, Mapping):
        raise PodSpecError(f"{path}: must be a mapping, got {raw!r}")
    kind: str
    spec: Any
    if "httpGet" in raw:
        kind, spec = "http", raw["httpGet"]
    elif "tcpSocket" in raw:
        kind, spec = "tcp", raw["tcpSocket"]
    else:
        return None  # exec/grpc probes: fall back to the default readiness
    sub = f"{path}.{'httpGet' if kind == 'http' else 'tcpSocket'}"
    if not isinstance(spec, Mapping):
        raise PodSpecError(f"{sub}: must be a mapping, got {spec!r}")
    port_raw = spec.get("port")
    if isinstance(port_raw, str) and not port_raw.isdigit():
        if port_raw not in ports:
            raise PodSpecError(f"{sub}.port: no container port named {port_raw!r}")
        port = ports[port_raw]
    else:
        try:
            port = int(str(port_raw))
        except (TypeError, ValueError):
            raise PodSpecError(
                f"{sub}.port: must be a port number or name, got {port_raw!r}"
            ) from None
    probe_path = str(spec.get("path") or "/") if kind == "http" else "/"

    def num(key: str, default: float) -> float:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PodSpecError(f"{path}.{key}: must be a number, got {value!r}")
        return float(value)

    try:
        return Probe(
            kind=kind,
            port=port,
            path=probe_path if probe_path.startswith("/") else "/" + probe_path,
            period=num("periodSeconds", 1.0),
            initial_delay=num("initialDelaySeconds", 0.0),
            timeout=num("timeoutSeconds", 1.0),
            failure_threshold=int(num("failureThreshold", 3)),
            success_threshold=int(num("successThreshold", 1)),
        )
    except ValueError as exc:
        raise PodSpecError(f"{path}: {exc}") from None


def pod_spec(pod: Pod, ip: str) -> PodSpec:
    """What to run for a Pod resource at address ``ip``. Raises PodSpecError naming the field."""
    meta = pod.metadata
    namespace = meta.namespace or "default"
    annotations = meta.annotations
    meshed = annotations.get(ANNOTATION_INJECT, "enabled").lower() != "disabled"
    try:
        skip_in = net.parse_ports(
            annotations.get(net.ANNOTATION_SKIP_INBOUND, net.DEFAULT_SKIP_PORTS),
            f"metadata.annotations[{net.ANNOTATION_SKIP_INBOUND!r}]",
        )
        skip_out = net.parse_ports(
            annotations.get(net.ANNOTATION_SKIP_OUTBOUND, net.DEFAULT_SKIP_PORTS),
            f"metadata.annotations[{net.ANNOTATION_SKIP_OUTBOUND!r}]",
        )
    except ValueError as exc:
        raise PodSpecError(str(exc)) from None
    base_env = {
        "WEFT_POD_NAME": meta.name,
        "WEFT_POD_NAMESPACE": namespace,
        "WEFT_POD_IP": ip,
        "WEFT_NODE_NAME": pod.spec.node_name or "local",
        "WEFT_SERVICE_ACCOUNT": pod.spec.service_account_name,
    }
    containers: list[ContainerSpec] = []
    for i, c in enumerate(pod.spec.containers):
        cpath = f"spec.containers[{i}]"
        user = users.run_as(pod.spec.security_context, c.security_context, ip)
        env = dict(base_env)
        if not user.root:
            env["HOME"] = users.HOME_NON_ROOT
        env.update((e.name, expand(e.value, env)) for e in c.env)
        argv = tuple(expand(a, env) for a in c.argv)
        if not argv:
            raise PodSpecError(f"{cpath}.command: must not be empty")
        ports = {p.name: p.container_port for p in c.ports if p.name}
        readiness: Probe | None = None
        raw_probe = c.extra.get("readinessProbe")
        if raw_probe is not None:
            readiness = _probe_from(raw_probe, f"{cpath}.readinessProbe", ports)
        if readiness is None:
            tcp = [p.container_port for p in c.ports if p.protocol == "TCP"]
            if tcp:
                readiness = Probe(kind="tcp", port=tcp[0])
        containers.append(
            ContainerSpec(
                name=c.name,
                argv=argv,
                env=tuple(env.items()),
                working_dir=c.working_dir,
                readiness=readiness,
                user=user,
            )
        )
    try:
        return PodSpec(
            namespace=namespace,
            name=meta.name,
            ip=ip,
            containers=tuple(containers),
            restart_policy=pod.spec.restart_policy,
            grace=float(pod.spec.termination_grace_period_seconds),
            meshed=meshed,
            deployment=pod.deployment,
            service_account=pod.spec.service_account_name,
            skip_inbound=skip_in,
            skip_outbound=skip_out,
        )
    except ValueError as exc:
        raise PodSpecError(f"spec: {exc}") from None


def proxy_argv(
    spec: PodSpec,
    *,
    python: str,
    control_endpoint: str,
    token_file: Path,
    trust_domain: str,
    log_level: str = "info",
) -> list[str]:
    """The sidecar's command line (the contract in docs/local-runtime.md)."""
    argv = [
        python, "-m", "weft", "proxy",
        "--outbound", f"127.0.0.1:{net.PROXY_OUTBOUND_PORT}",
        "--inbound", f"0.0.0.0:{net.PROXY_INBOUND_PORT}",
        "--admin", f"0.0.0.0:{net.PROXY_ADMIN_PORT}",
        "--control", control_endpoint,
        "--identity-token-file", str(token_file),
        "--trust-domain", trust_domain,
        "--label", f"pod={spec.name}",
        "--label", f"namespace={spec.namespace}",
    ]  # fmt: skip
    if spec.deployment:
        argv += ["--label", f"deployment={spec.deployment}"]
    argv += [
        "--label", f"serviceaccount={spec.service_account}",
        "--shutdown-grace", f"{max(spec.grace, 1.0):g}",
        "--log-level", log_level,
    ]  # fmt: skip
    return argv


# -- identity token -------------------------------------------------------------------------

TOKEN_DIR = "identity"
TOKEN_FILE = "token"


def token_path(pod_dir: Path) -> Path:
    """Where the token of the pod whose files live in ``pod_dir`` goes."""
    return pod_dir / TOKEN_DIR / TOKEN_FILE


def write_token(path: Path, token: str, *, owner: int | None) -> None:
    """Write a pod's identity token to ``path`` so that only ``owner`` (the proxy's uid; None:
    whoever runs this) can read it: its directory mode 0700, the file 0400, both owned by
    ``owner``. The file is written atomically (a temporary file whose mode and owner are set
    before the token goes in, then renamed over the earlier token): a proxy reading it at any
    moment sees the old token or the new one, whole, and nobody else ever could read either."""
    if not token or not token.isascii() or not token.isprintable():
        raise ValueError("a token must be non-empty printable ASCII")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkdir's mode is filtered by the umask and an existing directory keeps its own: set both,
    # through a descriptor so that a symlink put in its place is refused rather than followed
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if owner is not None:
            os.fchown(dfd, owner, owner)
        os.fchmod(dfd, 0o700)
    finally:
        os.close(dfd)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        try:
            os.fchmod(fd, 0o400)
            if owner is not None:
                os.fchown(fd, owner, owner)
            data = memoryview(token.encode("ascii"))
            while data:
                data = data[os.write(fd, data) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_token(path: Path) -> None:
    """Remove a pod's token, temporary files a crash left beside it, and its directory when
    that is then empty. Nothing to do when they are gone already."""
    for leftover in path.parent.glob(f".{path.name}.*"):
        leftover.unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # gone already, or something else lives there
        path.parent.rmdir()
