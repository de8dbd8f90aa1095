"""How a benchmark's child process ended: its exit, CPU and wall time, and its own peak RSS."""

from __future__ import annotations

import os
import resource
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

# How often a child's VmHWM is read while it runs: its peak is known to within this.
POLL_S = 0.02


@dataclass(frozen=True)
class Ended:
    """A child that exited: its exit code, resource usage (its own, from wait4), when it
    exited (`time.perf_counter`) and its peak RSS in MiB."""

    returncode: int
    usage: resource.struct_rusage
    at: float
    peak_rss_mb: float

    @property
    def cpu(self) -> float:
        return self.usage.ru_utime + self.usage.ru_stime


def reap(pid: int) -> Ended:
    """Wait for the child `pid` to exit, reading its peak RSS while it runs.

    wait4 gives the child's own CPU (RUSAGE_CHILDREN would sum every child this process ever
    had) but not its peak RSS: Linux carries the forking parent's high-water mark over the
    exec into ru_maxrss. VmHWM only grows, so its last reading before the exit is the peak.
    wait4 blocks in a thread of its own and notes the exit time there, so that the time is not
    rounded up to the poll.
    """

    def waited() -> tuple[int, resource.struct_rusage, float]:
        _, status, usage = os.wait4(pid, 0)
        return status, usage, time.perf_counter()

    with ThreadPoolExecutor(max_workers=1) as waiter:
        waiting = waiter.submit(waited)
        peak = 0.0
        while not waiting.done():
            peak = max(peak, _peak_rss_mb(pid))
            wait([waiting], timeout=POLL_S)
        status, usage, at = waiting.result()
    return Ended(os.waitstatus_to_exitcode(status), usage, at, peak)


def _peak_rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
