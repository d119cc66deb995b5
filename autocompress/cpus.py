"""The CPUs this process may really use: its affinity (taskset, a container's cpuset) and its cgroup CPU quota
(docker --cpus, Kubernetes limits), not the machine's count; and of those, the ones other processes leave free."""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

__all__ = ["usable_cpus", "torch_threads", "machine_busy", "other_load", "FreeCpus", "free_cpus"]

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


def machine_busy() -> tuple[int, int, int] | None:
    """(busy, total) jiffies of the whole machine so far and its CPU count as /proc/stat sees it (a container
    may see fewer CPUs there than os.cpu_count()), or None where /proc/stat does not exist."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
        v = [int(x) for x in lines[0].split()[1:9]]  # user nice system idle iowait irq softirq steal (guest is in user)
    except (OSError, ValueError, IndexError):
        return None
    ncpu = sum(1 for line in lines[1:] if line.startswith("cpu") and line[3:4].isdigit()) or 1
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait; steal and niced work count as busy
    return sum(v) - idle, sum(v), ncpu


def other_load(before: tuple[int, int, int] | None, after: tuple[int, int, int] | None, own_cpu_s: float,
               wall_s: float) -> float | None:
    """Cores kept busy by everything but this process between two `machine_busy` samples; None when unknown
    (no /proc/stat, or a window under 5 ticks per CPU, too short to tell one busy tick from a busy core)."""
    if before is None or after is None or wall_s <= 0:
        return None
    ncpu = after[2]
    if after[1] - before[1] < 5 * ncpu:
        return None
    busy_cores = ncpu * (after[0] - before[0]) / (after[1] - before[1])
    return max(0.0, busy_cores - own_cpu_s / wall_s)


@dataclass(frozen=True)
class FreeCpus:
    """The CPUs a search runs on: `usable` ones (affinity, quota), less the cores other processes kept busy."""

    usable: int
    busy_elsewhere: float | None  # cores busy with other processes during the sample; None when unknown
    free: int  # at least 1

    def note(self) -> str | None:
        """One line when other processes hold some of the usable CPUs, else None."""
        if self.free == self.usable:
            return None
        return (f"other processes keep {self.busy_elsewhere:.1f} of this process's {self.usable} CPUs busy: the "
                f"search uses {self.free}: more threads than free cores slow each other down")


def free_of(usable: int, busy_elsewhere: float | None) -> int:
    """Usable CPUs less the cores busy elsewhere, rounded (a core busy 60% of the time is taken), at least 1:
    a thread sharing its core with another process stalls the threads it synchronizes with (docs/design.md)."""
    if busy_elsewhere is None:
        return usable
    return max(1, min(usable, usable - round(busy_elsewhere)))


def free_cpus(sample_s: float = 0.5) -> FreeCpus:
    """Usable CPUs and how many of them other processes leave free, sampled over `sample_s` seconds of /proc/stat
    while this process sleeps. Only the affinity's CPUs count as busy when they are all the machine has; on a
    larger machine other processes may run on CPUs outside the affinity, so the machine-wide load is scaled."""
    usable = usable_cpus()
    t0, before = time.perf_counter(), machine_busy()
    cpu0 = time.process_time()
    time.sleep(sample_s)
    after = machine_busy()
    load = other_load(before, after, time.process_time() - cpu0, time.perf_counter() - t0)
    if load is not None and after is not None and after[2] > usable:
        load *= usable / after[2]  # the share of the machine's load that falls on this process's CPUs, on average
    return FreeCpus(usable, None if load is None else round(load, 2), free_of(usable, load))


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
