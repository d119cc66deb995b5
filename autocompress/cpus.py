"""The CPUs this process may really use: its affinity (taskset, a container's cpuset) and its cgroup CPU quota
(docker --cpus, Kubernetes limits), not the machine's count."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Iterator

__all__ = ["usable_cpus", "torch_threads"]

_CGROUP = Path("/sys/fs/cgroup")


def _quota(root: Path) -> float | None:
    """CPUs the cgroup quota allows (quota / period), or None without a quota: cgroup v2's cpu.max, else v1's
    cpu.cfs_quota_us / cpu.cfs_period_us."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def usable_cpus(cgroup_root: Path = _CGROUP) -> int:
    """At least 1: the CPUs of the process's affinity, capped by its cgroup quota (rounded up: a quota of 1.5 CPUs
    keeps two threads busy part of the time)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        n = os.cpu_count() or 1
    quota = _quota(cgroup_root)
    if quota is not None:
        n = min(n, math.ceil(quota))
    return max(1, n)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads at `n` for the block, then the caller's own setting again."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
