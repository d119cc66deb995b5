"""usable_cpus: the process's affinity and cgroup quota, not the machine's CPU count; free_cpus: those that other
processes leave free."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autocompress.cpus import free_cpus, free_of, usable_cpus
from tests.conftest import FAST_FLAGS


def _v2(tmp_path: Path, text: str) -> Path:
    (tmp_path / "cpu.max").write_text(text)
    return tmp_path


def test_a_cgroup_v2_quota_caps_the_affinity(tmp_path):
    n = len(os.sched_getaffinity(0))
    assert usable_cpus(_v2(tmp_path, "50000 100000\n")) == 1  # half a CPU: one thread
    assert usable_cpus(_v2(tmp_path, "max 100000\n")) == n
    assert usable_cpus(_v2(tmp_path, f"{100000 * (n + 4)} 100000\n")) == n  # a quota above the affinity


def test_a_cgroup_v1_quota_is_read(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cpus(tmp_path) == min(2, len(os.sched_getaffinity(0)))
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # no quota
    assert usable_cpus(tmp_path) == len(os.sched_getaffinity(0))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to one")
def test_taskset_to_one_cpu_gives_one():
    code = "from pathlib import Path; from autocompress.cpus import usable_cpus; print(usable_cpus(Path('/none')))"
    out = subprocess.run(["taskset", "-c", str(min(os.sched_getaffinity(0))), sys.executable, "-c", code],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to one")
def test_a_search_under_taskset_takes_one_ray_cpu_and_one_thread_per_trial(tmp_path):
    run = tmp_path / "run"
    cmd = ["taskset", "-c", str(min(os.sched_getaffinity(0))), sys.executable, "-m", "autocompress.cli", "search",
           "--budget", "1", "--out", str(run), *FAST_FLAGS]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ})
    assert res.returncode == 0, res.stderr[-2000:]
    ray = json.loads((run / "meta.json").read_text())["ray"]
    assert (ray["cpus"], ray["threads_per_trial"]) == (1, 1)


def test_cores_busy_elsewhere_are_left_to_their_processes():
    assert free_of(2, None) == 2  # load unknown (no /proc/stat): every usable CPU
    assert free_of(2, 0.3) == 2  # background noise takes no core
    assert free_of(2, 1.0) == 1 and free_of(4, 0.6) == 3  # a core busy most of the time is taken
    assert free_of(2, 5.0) == 1 and free_of(1, 1.0) == 1  # never fewer than one


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to keep one busy")
def test_a_busy_loop_beside_the_search_takes_a_core_from_it():
    cpu = max(os.sched_getaffinity(0))
    loop = subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-c", "while True: pass"])
    try:
        cpus = free_cpus(sample_s=1.0)
    finally:
        loop.kill()
        loop.wait()
    assert cpus.busy_elsewhere is not None and cpus.busy_elsewhere >= 0.5, cpus
    assert cpus.free <= cpus.usable - 1 and "other processes keep" in cpus.note()
