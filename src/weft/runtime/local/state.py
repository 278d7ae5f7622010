"""The local mesh's state directory: where every file of a running mesh lives, and its records.

Layout under the state directory (default ``/run/weft``, ``--state-dir`` or ``WEFT_STATE_DIR``)::

    .weft-state              marker: this directory belongs to Weft (``weft down`` removes it whole)
                             (the directory is mode 0700: nothing in it is for pods' apps)
    mesh.json                the mesh's settings (ranges, iptables flavour) for the node agent
    control.sock             the control plane's API (written by ``weft control``)
    control.pid, node.pid    process records (pid + start time) of the two long-running processes
    control.lock             held while the control plane is being started (by ``weft up`` or the
                             node agent's supervisor), so that only one ever starts
    control-status.json      the node agent's supervision of the control plane: restarts, last
                             exit, backoff (``weft check`` reads it)
    logs/control.log, logs/node.log
    pods/<ns>/<pod>/<container>.log

plus the control plane's own files (its persisted store). One host-wide file,
``/run/weft-mesh.json``, names the state directory of the mesh that owns the host's ``weft-*``
namespaces, so that ``weft down`` and crash cleanup find it whatever directory was used.

Not for: creating namespaces or processes (see :mod:`weft.runtime.local.mesh`).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weft.runtime.local.net import MeshNetwork

DEFAULT_STATE_DIR = Path("/run/weft")
STATE_DIR_ENV = "WEFT_STATE_DIR"
HOST_RECORD = Path("/run/weft-mesh.json")
MARKER = ".weft-state"
COMPONENTS = ("control", "node")


def resolve_state_dir(arg: str | os.PathLike[str] | None = None) -> Path:
    """``--state-dir`` if given, else ``$WEFT_STATE_DIR``, else ``/run/weft``; made absolute."""
    raw = arg if arg is not None else os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR
    return Path(os.path.abspath(os.fspath(raw)))


@dataclass(frozen=True, slots=True)
class MeshRecord:
    """What ``weft up`` decided, for the node agent and for ``weft down``."""

    state_dir: str
    pod_cidr: str
    service_cidr: str
    iptables: str

    def __post_init__(self) -> None:
        if not os.path.isabs(self.state_dir):
            raise ValueError(f"state_dir must be absolute, got {self.state_dir!r}")
        MeshNetwork.parse(self.pod_cidr, self.service_cidr)
        if not self.iptables.startswith("iptables"):
            raise ValueError(f"iptables must name an iptables binary, got {self.iptables!r}")

    @property
    def network(self) -> MeshNetwork:
        return MeshNetwork.parse(self.pod_cidr, self.service_cidr)

    def to_json(self) -> dict[str, Any]:
        return {
            "stateDir": self.state_dir,
            "podCIDR": self.pod_cidr,
            "serviceCIDR": self.service_cidr,
            "iptables": self.iptables,
        }

    @classmethod
    def from_json(cls, data: Any) -> MeshRecord:
        if not isinstance(data, dict):
            raise ValueError(f"mesh record must be an object, got {type(data).__name__}")
        try:
            return cls(
                state_dir=str(data["stateDir"]),
                pod_cidr=str(data["podCIDR"]),
                service_cidr=str(data["serviceCIDR"]),
                iptables=str(data["iptables"]),
            )
        except KeyError as exc:
            raise ValueError(f"mesh record is missing {exc.args[0]!r}") from None


class StateDirError(Exception):
    pass


class StateDir:
    """Paths inside one mesh's state directory."""

    __slots__ = ("root",)

    def __init__(self, root: Path) -> None:
        if not root.is_absolute():
            raise ValueError(f"state directory must be absolute, got {root}")
        self.root = root

    def __repr__(self) -> str:
        return f"<StateDir {self.root}>"

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    @property
    def record_path(self) -> Path:
        return self.root / "mesh.json"

    @property
    def control_sock(self) -> Path:
        return self.root / "control.sock"

    @property
    def control_endpoint(self) -> str:
        return f"unix:{self.control_sock}"

    def pid_path(self, component: str) -> Path:
        if component not in COMPONENTS:
            raise ValueError(f"unknown component {component!r}; known: {', '.join(COMPONENTS)}")
        return self.root / f"{component}.pid"

    @property
    def control_lock(self) -> Path:
        return self.root / "control.lock"

    @property
    def control_status(self) -> Path:
        return self.root / "control-status.json"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def log_path(self, component: str) -> Path:
        return self.logs_dir / f"{component}.log"

    @property
    def pods_dir(self) -> Path:
        return self.root / "pods"

    def pod_dir(self, namespace: str, pod: str) -> Path:
        for part in (namespace, pod):
            if not part or "/" in part or part in (".", ".."):
                raise ValueError(f"invalid pod path component {part!r}")
        return self.pods_dir / namespace / pod

    def container_log(self, namespace: str, pod: str, container: str) -> Path:
        if not container or "/" in container or container in (".", ".."):
            raise ValueError(f"invalid container name {container!r}")
        return self.pod_dir(namespace, pod) / f"{container}.log"

    def is_weft(self) -> bool:
        return self.marker.exists()

    def prepare(self) -> None:
        """Create the directory (and mark it as Weft's). An existing non-empty directory that is
        not Weft's is refused, because ``weft down`` removes the state directory whole."""
        if self.root.exists():
            if not self.root.is_dir():
                raise StateDirError(f"state directory {self.root} exists and is not a directory")
            if not self.is_weft() and any(self.root.iterdir()):
                raise StateDirError(
                    f"state directory {self.root} exists, is not empty and is not a Weft state "
                    "directory; choose another --state-dir"
                )
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        # root's only (an existing directory too): the control socket, the tokens, the CA and
        # token key, the logs and the store are out of reach of every pod's default user; the
        # proxies reach the socket and their tokens with CAP_DAC_OVERRIDE
        os.chmod(self.root, 0o700)
        self.marker.write_text("Weft state directory: `weft down` removes it.\n")
        self.logs_dir.mkdir(exist_ok=True)
        self.pods_dir.mkdir(exist_ok=True)

    def read_record(self) -> MeshRecord | None:
        try:
            return MeshRecord.from_json(json.loads(self.record_path.read_text()))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise StateDirError(f"{self.record_path}: {exc}") from None

    def write_record(self, record: MeshRecord) -> None:
        tmp = self.record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record.to_json(), indent=2) + "\n")
        tmp.replace(self.record_path)

    def remove(self) -> bool:
        """Remove the directory if it is Weft's; returns whether anything was removed."""
        if not self.root.exists():
            return False
        if not self.is_weft():
            return False
        shutil.rmtree(self.root, ignore_errors=True)
        return True


def read_host_record(path: Path = HOST_RECORD) -> MeshRecord | None:
    try:
        return MeshRecord.from_json(json.loads(path.read_text()))
    except (FileNotFoundError, ValueError):
        return None


def write_host_record(record: MeshRecord, path: Path = HOST_RECORD) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record.to_json(), indent=2) + "\n")
    tmp.replace(path)
