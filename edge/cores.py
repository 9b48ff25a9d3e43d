"""How many cores this process may use: what sizes the thread pools, the runtimes' threads
and the one-thread interpreter lanes (each lane holds its own copy of a model, ~45 MB for
the default one).

`os.cpu_count()` is the machine's count. In a container with a CPU limit (Kubernetes'
`resources.limits.cpu`, `docker run --cpus`), the kernel enforces a quota of CPU time
instead, and a worker sized by the node's 64 cores would start 64 lanes on a 2-core
quota: memory for nothing, and 64 threads taking turns on 2 cores. So: the CPUs the
process may run on (its affinity: `taskset`, cpusets), capped by the cgroup's quota
rounded up (v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`).
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def quota_cores(quota: str, period: str) -> int | None:
    """Cores a cgroup CPU quota amounts to, rounded up; None when there is no quota
    (v2 writes "max", v1 "-1")."""
    if quota.strip() in ("max", "-1"):
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def _cgroup_quota(root: Path) -> int | None:
    v2 = root / "cpu.max"
    if v2.exists():
        return quota_cores(*v2.read_text().split())
    v1 = root / "cpu" / "cpu.cfs_quota_us"
    if v1.exists():
        return quota_cores(v1.read_text(), (root / "cpu" / "cpu.cfs_period_us").read_text())
    return None


@functools.cache
def usable_cores(root: Path = CGROUP) -> int:
    """The cores this process may use: its CPU affinity, capped by its cgroup's CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota = _cgroup_quota(root)
    except (OSError, ValueError):  # an unreadable or unexpected cgroup file: no cap
        quota = None
    return min(cores, quota) if quota else cores
