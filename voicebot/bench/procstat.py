"""CPU time and resident memory of a process, and of the whole machine, from ``/proc`` (Linux).

No psutil: the bench needs two numbers per process, both one small file read away.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

_TICKS_PER_SEC = os.sysconf("SC_CLK_TCK")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far, all threads, in s.

    Raises:
        OSError: the process is gone (or this is not Linux).
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = stat[stat.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICKS_PER_SEC


def rss_bytes(pid: int) -> int:
    """Resident set size of the process, in bytes.

    Raises:
        OSError: the process is gone.
    """
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE_BYTES


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (a server's worker processes), from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def tree_usage(pid: int) -> tuple[float, int]:
    """CPU seconds and RSS bytes of ``pid`` and its descendants, summed.

    Raises:
        OSError: ``pid`` itself is gone (a descendant that ends meanwhile is left out).
    """
    cpu, rss = cpu_seconds(pid), rss_bytes(pid)
    for child in process_tree(pid)[1:]:
        try:
            cpu, rss = cpu + cpu_seconds(child), rss + rss_bytes(child)
        except OSError:
            continue
    return cpu, rss


def machine_busy_seconds() -> tuple[float, float]:
    """``(busy, total)`` CPU seconds of all cores since boot (``/proc/stat``'s ``cpu`` line)."""
    with open("/proc/stat", "rb") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already in user time
    return (total - idle) / _TICKS_PER_SEC, total / _TICKS_PER_SEC


@dataclass(frozen=True)
class Sample:
    """One reading: ``time.monotonic()`` (s), the process's CPU s and RSS bytes, the machine's
    busy and total CPU s."""

    t: float
    cpu_s: float
    rss: int
    machine_busy_s: float
    machine_total_s: float


@dataclass
class ProcessSampler:
    """Reads a process's CPU time and RSS every ``interval_secs`` while running (a task).

    With ``children`` the process's descendants count too (``voicebot serve --workers N``).
    Use :meth:`cpu_percent` and :meth:`max_rss` over any window afterwards. A process that dies
    ends the sampling; what was read stays.
    """

    pid: int
    interval_secs: float = 0.5
    children: bool = False
    samples: list[Sample] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def read(self) -> Sample | None:
        """Take one sample now (also kept); None if the process is gone."""
        try:
            busy, total = machine_busy_seconds()
            if self.children:
                cpu, rss = tree_usage(self.pid)
            else:
                cpu, rss = cpu_seconds(self.pid), rss_bytes(self.pid)
            sample = Sample(time.monotonic(), cpu, rss, busy, total)
        except (OSError, ValueError, IndexError):
            return None
        self.samples.append(sample)
        return sample

    def start(self) -> None:
        """Start sampling in the background."""
        self._task = asyncio.create_task(self._run(), name=f"sample-{self.pid}")

    async def stop(self) -> None:
        """Take a last sample and stop."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=1.0)
            self._task = None
        self.read()

    async def _run(self) -> None:
        while True:
            if self.read() is None:
                return
            await asyncio.sleep(self.interval_secs)

    def _window(self, t0: float, t1: float) -> list[Sample]:
        return [s for s in self.samples if t0 <= s.t <= t1]

    def cpu_percent(self, t0: float, t1: float) -> float | None:
        """CPU used between the first and last sample in [t0, t1], in % of one core."""
        window = self._window(t0, t1)
        if len(window) < 2 or window[-1].t - window[0].t <= 0:
            return None
        return 100 * (window[-1].cpu_s - window[0].cpu_s) / (window[-1].t - window[0].t)

    def machine_percent(self, t0: float, t1: float) -> float | None:
        """How busy all cores were in [t0, t1], in % of one core (2 cores: up to 200)."""
        window = self._window(t0, t1)
        if len(window) < 2 or window[-1].t - window[0].t <= 0:
            return None
        busy = window[-1].machine_busy_s - window[0].machine_busy_s
        return 100 * busy / (window[-1].t - window[0].t)

    def max_rss(self, t0: float, t1: float) -> int | None:
        """Largest RSS read in [t0, t1], in bytes."""
        window = self._window(t0, t1)
        return max((s.rss for s in window), default=None)
