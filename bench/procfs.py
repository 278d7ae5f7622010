"""CPU time and memory of the server processes of a case (and their children), from ``/proc``.

The benchmark measures the processes that do the work: nginx runs with ``master_process off``,
Envoy's wrapper ``exec``s the real binary and ``weft proxy`` runs in its own interpreter, so the
PID of what was started is the PID to measure. A case may be more than one process (a meshed
pair: client proxy and server proxy); every function takes the PIDs of all of them and sums.
Descendants are included anyway, so a proxy that forks workers is measured whole: CPU is summed
over the trees (``utime + stime`` plus what reaped children left in ``cutime + cstime``); RSS is
summed too, which over-counts pages shared between processes (an upper bound, stated in the docs).

Not for: per-thread breakdowns or system-wide accounting.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
