"""CPU time and memory of the server processes of a case (and their children), and the TCP
connections open to a port, from ``/proc``.

The benchmark measures the processes that do the work: nginx runs with ``master_process off``,
Envoy's wrapper ``exec``s the real binary and ``weft proxy`` runs in its own interpreter, so the
PID of what was started is the PID to measure. A case may be more than one process (a meshed
pair: client proxy and server proxy); every function takes the PIDs of all of them and sums.
Descendants are included anyway, so a proxy that forks workers is measured whole: CPU is summed
over the trees (``utime + stime`` plus what reaped children left in ``cutime + cstime``); RSS is
summed too, which over-counts pages shared between processes (an upper bound, stated in the docs).

:class:`ConnectionSampler` counts, while a load phase runs, the established connections to a
meshed pair's server side (``/proc/net/tcp`` of this network namespace, where every server of the
run lives): how many connections the client proxy keeps to it.

Not for: per-thread breakdowns or system-wide accounting.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

_PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds consumed so far by a process tree, split into user and system time."""

    user_s: float
    system_s: float

    @property
    def total_s(self) -> float:
        return self.user_s + self.system_s

    def __sub__(self, other: CpuSample) -> CpuSample:
        return CpuSample(self.user_s - other.user_s, self.system_s - other.system_s)


@dataclass(frozen=True, slots=True)
class MemSample:
    """Resident memory of a process tree in KiB: current (``VmRSS``) and peak (``VmHWM``)."""

    rss_kib: int
    hwm_kib: int


def _stat_fields(pid: int) -> list[str]:
    raw = (_PROC / str(pid) / "stat").read_text()
    # The command name (field 2) may hold spaces and parentheses; fields resume after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren, ...), from ``/proc``."""
    parents: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
        parents.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        out.extend(children)
        todo.extend(children)
    return out


def tree(roots: Sequence[int]) -> list[int]:
    """``roots`` (in order) followed by their live descendants."""
    out = list(roots)
    for pid in roots:
        out.extend(p for p in descendants(pid) if p not in out)
    return out


def cpu_times(roots: Sequence[int]) -> CpuSample:
    """CPU consumed by ``roots`` and their descendants since they started.

    Raises ``ProcessLookupError`` when one of ``roots`` is gone (a dead proxy must not read as
    idle).
    """
    user = system = 0
    for p in tree(roots):
        try:
            f = _stat_fields(p)
        except FileNotFoundError:
            if p in roots:
                raise ProcessLookupError(f"process {p} is gone") from None
            continue
        # Fields 14-17 of proc(5) (utime, stime, cutime, cstime); index 0 here is field 3.
        user += int(f[11]) + int(f[13])
        system += int(f[12]) + int(f[14])
    return CpuSample(user / CLOCK_TICKS, system / CLOCK_TICKS)


def _status_kib(pid: int, key: str) -> int:
    for line in (_PROC / str(pid) / "status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0  # kernel threads and zombies have no memory lines


def memory(roots: Sequence[int]) -> MemSample:
    """``VmRSS`` and ``VmHWM`` of ``roots`` plus their descendants, in KiB (summed)."""
    rss = hwm = 0
    for p in tree(roots):
        try:
            rss += _status_kib(p, "VmRSS")
            hwm += _status_kib(p, "VmHWM")
        except FileNotFoundError:
            if p in roots:
                raise ProcessLookupError(f"process {p} is gone") from None
    return MemSample(rss, hwm)


def rss_kib(pids: Sequence[int], roots: Sequence[int]) -> int:
    """Summed ``VmRSS`` of ``pids`` (those in ``roots`` must be alive), cheap to poll every few ms.

    Take ``pids`` from :func:`tree` once before a transfer: walking ``/proc`` on every sample
    would cost more than the sample.
    """
    total = 0
    for p in pids:
        try:
            total += _status_kib(p, "VmRSS")
        except FileNotFoundError:
            if p in roots:
                raise ProcessLookupError(f"process {p} is gone") from None
    return total


_TCP_ESTABLISHED = "01"


def established_to(table: str, port: int) -> int:
    """How many rows of a ``/proc/net/tcp`` table are established connections to ``port``.

    Each connection on loopback appears twice (once per end); only the end whose remote port is
    ``port`` (the dialing side) is counted.
    """
    count = 0
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or ":" not in fields[2]:
            continue
        try:
            remote_port = int(fields[2].rpartition(":")[2], 16)
        except ValueError:
            continue
        if remote_port == port and fields[3] == _TCP_ESTABLISHED:
            count += 1
    return count


class ConnectionSampler:
    """The most established connections to ``port`` seen while the ``with`` block ran.

    A thread reads ``/proc/net/tcp`` every ``interval`` seconds (and once at each end of the
    block). A read costs about 1.5 ms of CPU here (the kernel walks its whole TCP table), so the
    default is four reads a second: a pool's size changes far more slowly. With ``port`` None it
    does nothing and :attr:`most` stays None.
    """

    def __init__(self, port: int | None, interval: float = 0.25) -> None:
        self.port = port
        self.interval = interval
        self.most: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        assert self.port is not None
        n = established_to((_PROC / "net" / "tcp").read_text(), self.port)
        self.most = n if self.most is None else max(self.most, n)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> ConnectionSampler:
        if self.port is not None:
            self.sample()
            self._thread = threading.Thread(target=self._loop, name="bench-conns", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.sample()
