"""Processes as the local runtime tracks them: pid records that survive pid reuse, liveness that
treats zombies as dead, discovery by a marker environment variable, and bounded termination.

Every process the local runtime starts (control plane, node agent, proxies, apps) carries
:data:`MESH_ENV` = the mesh's state directory in its environment, so that cleanup can find them
after a crash even when no pid file is left. A :class:`ProcRecord` stores a pid with its start
time (``/proc/<pid>/stat`` field 22) so that a recycled pid is never mistaken for ours.

Not for: supervising pods (:mod:`weft.runtime.local.pod`).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

MESH_ENV = "WEFT_MESH_STATE_DIR"
PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class ProcRecord:
    """A process identity that survives pid reuse: pid plus kernel start time (clock ticks)."""

    pid: int
    start: int

    def __post_init__(self) -> None:
        if self.pid <= 0:
            raise ValueError(f"ProcRecord.pid must be positive, got {self.pid!r}")

    @classmethod
    def of(cls, pid: int) -> ProcRecord | None:
        start = start_ticks(pid)
        return None if start is None else cls(pid, start)

    def alive(self) -> bool:
        """Running (not a zombie) and still the same process."""
        return start_ticks(self.pid) == self.start and state(self.pid) not in (None, "Z", "X")

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "start": self.start}

    @classmethod
    def from_json(cls, data: object) -> ProcRecord:
        if not isinstance(data, dict):
            raise ValueError(f"process record must be an object, got {data!r}")
        pid, start = data.get("pid"), data.get("start")
        if not isinstance(pid, int) or not isinstance(start, int):
            raise ValueError(f"process record needs integer pid and start, got {data!r}")
        return cls(pid, start)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'
    _, _, rest = raw.rpartition(")")
    return rest.split()


def state(pid: int) -> str | None:
    """The process state letter (``R``, ``S``, ``Z``...), or None when there is no such pid."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def start_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    if not fields or len(fields) < 20:
        return None
    # after "pid (comm)": state is field 3, starttime field 22 -> index 19
    return int(fields[19])


def running(pid: int) -> bool:
    """True for a live process; zombies (exited, not yet reaped) count as gone."""
    return state(pid) not in (None, "Z", "X")


def environ(pid: int) -> dict[str, str]:
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    out: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


def cmdline(pid: int) -> list[str]:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def all_pids() -> list[int]:
    return sorted(int(p.name) for p in PROC.iterdir() if p.name.isdigit())


def mesh_pids(state_dir: str | None = None) -> dict[int, str]:
    """Live processes carrying :data:`MESH_ENV`, with its value; only ``state_dir``'s when given."""
    me = os.getpid()
    found: dict[int, str] = {}
    for pid in all_pids():
        if pid == me or not running(pid):
            continue
        value = environ(pid).get(MESH_ENV)
        if value is None:
            continue
        if state_dir is None or value == state_dir:
            found[pid] = value
    return found


def write_record(path: Path, record: ProcRecord) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record.to_json()) + "\n")
    tmp.replace(path)


def read_record(path: Path) -> ProcRecord | None:
    try:
        return ProcRecord.from_json(json.loads(path.read_text()))
    except (FileNotFoundError, ValueError):
        return None


def signal_pid(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def terminate(
    pids: Iterable[int],
    *,
    timeout: float,
    sig: int = signal.SIGTERM,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[int]:
    """Send ``sig`` to each pid, wait up to ``timeout`` for them to exit, SIGKILL the rest.

    Returns the pids that were still running when SIGKILL was sent.
    """
    targets = [p for p in pids if p != os.getpid() and running(p)]
    for pid in targets:
        signal_pid(pid, sig)
    deadline = clock() + timeout
    while clock() < deadline and any(running(p) for p in targets):
        sleep(0.05)
    stubborn = [p for p in targets if running(p)]
    for pid in stubborn:
        signal_pid(pid, signal.SIGKILL)
    # SIGKILL is not instant; wait briefly so callers can delete namespaces afterwards
    deadline = clock() + 2.0
    while clock() < deadline and any(running(p) for p in stubborn):
        sleep(0.02)
    return stubborn
