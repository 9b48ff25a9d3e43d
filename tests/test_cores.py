"""How many cores a process may use (edge/cores.py): its affinity, capped by a container's
CPU quota, which sizes the thread pools and the interpreter lanes."""

from __future__ import annotations

import os

import pytest

from edge.cores import quota_cores, usable_cores

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("quota, period, cores", [
    ("max", "100000", None),  # cgroup v2, no limit
    ("-1\n", "100000\n", None),  # cgroup v1, no limit
    ("200000", "100000", 2),  # --cpus 2
    ("150000", "100000", 2),  # 1.5 cores: rounded up
    ("50000", "100000", 1),  # half a core: still one
])
def test_quota_cores(quota, period, cores):
    assert quota_cores(quota, period) == cores


def test_usable_cores_is_the_affinity_capped_by_the_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    v2, v1, none, garbage = (tmp_path / name for name in ("v2", "v1", "none", "garbage"))
    for path in (v2, v1 / "cpu", none, garbage):
        path.mkdir(parents=True)
    (v2 / "cpu.max").write_text("100000 100000\n")
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (garbage / "cpu.max").write_text("two cores\n")
    assert usable_cores(v2) == usable_cores(v1) == 1
    assert usable_cores(none) == usable_cores(garbage) == affinity  # no quota, or one we cannot read: no cap
    assert 1 <= usable_cores() <= os.cpu_count()
