"""CPU time and memory of processes and cores, from Linux's /proc."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CoreTimes", "core_times", "cpu_model", "cpu_seconds", "rss_bytes"]

_PROC = Path("/proc")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds `pid` has used (fields 14 and 15 of /proc/PID/stat)."""
    stat = (_PROC / str(pid) / "stat").read_text()
    # The command name (field 2) may contain spaces and parentheses: count from its end.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` (VmRSS of /proc/PID/status)."""
    for line in (_PROC / str(pid) / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0  # a zombie has no memory left


@dataclass(frozen=True)
class CoreTimes:
    """Clock ticks one core spent busy (user, nice, system, irq, softirq) and in total."""

    busy: int
    total: int

    def busy_share(self, earlier: CoreTimes) -> float | None:
        """Fraction of the time since `earlier` the core was busy."""
        total = self.total - earlier.total
        return (self.busy - earlier.busy) / total if total > 0 else None


def core_times(core: int) -> CoreTimes:
    """The current counters of `core` from /proc/stat."""
    prefix = f"cpu{core} "
    for line in (_PROC / "stat").read_text().splitlines():
        if line.startswith(prefix):
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in line.split()[1:9])
            busy = user + nice + system + irq + softirq
            return CoreTimes(busy, busy + idle + iowait + steal)
    raise ValueError(f"no core {core} in /proc/stat")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown CPU" if it does not say)."""
    try:
        for line in (_PROC / "cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return "unknown CPU"
