"""A process's own peak RSS, from /proc: what wait4's ru_maxrss cannot give on Linux."""

from __future__ import annotations


def peak_rss_mb(pid: int) -> float:
    """The process's peak RSS so far (VmHWM); wait4's ru_maxrss would not do, as Linux carries
    the forking parent's high-water mark over the exec."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
