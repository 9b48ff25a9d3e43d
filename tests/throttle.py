"""Slow a process down for a while: cgroup v1's CPU controller (`cpu.cfs_quota_us`) caps
it at a fraction of one core, the way a noisy neighbour or a small container would.
Needs root and /sys/fs/cgroup/cpu (cgroup v1)."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

CPU = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 100_000


def available() -> bool:
    return os.geteuid() == 0 and (CPU / "cgroup.procs").exists()


@contextlib.contextmanager
def cpu_quota(pids: list[int], fraction: float):
    """Run `pids` (every thread of each) on `fraction` of one core until the block ends;
    then they go back to the root group and the group is removed."""
    group = CPU / f"image-cluster-throttle-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(int(PERIOD_US * fraction)))
        for pid in pids:
            (group / "cgroup.procs").write_text(str(pid))
        yield group
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):  # gone meanwhile
                (CPU / "cgroup.procs").write_text(pid)
        group.rmdir()
