"""Latency is never measured beside a fine-tune: the device pauses the trials on its node while it measures.

These tests check the mechanism. What the pausing buys in milliseconds is measured by `benchmarks/isolation.py`
(a timed comparison fails whenever anything else loads the machine)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name: state, ppid, ..."""
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()


def _state(pid: int) -> str:
    return _stat(pid)[0]


def test_paused_trials_stops_trial_workers_and_resumes_them():
    from autocompress.runtime.device import TRIAL_TASK_NAME, paused_trials, trial_pids

    # a busy process titled like a Ray worker running a trial, and one that is not a trial
    busy = "while True: pass"
    trial = subprocess.Popen(["bash", "-c", f'exec -a "ray::{TRIAL_TASK_NAME}" {sys.executable} -c "{busy}"'])
    other = subprocess.Popen(["bash", "-c", f'exec -a "ray::IDLE" {sys.executable} -c "{busy}"'])
    try:
        deadline = time.time() + 10
        while trial.pid not in trial_pids() and time.time() < deadline:
            time.sleep(0.05)
        assert trial.pid in trial_pids() and other.pid not in trial_pids()
        with paused_trials() as stopped:
            time.sleep(0.2)
            assert stopped == [trial.pid]
            assert _state(trial.pid) == "T" and _state(other.pid) != "T"
        time.sleep(0.2)
        assert _state(trial.pid) != "T"
    finally:
        for p in (trial, other):
            p.kill()
            p.wait()


@pytest.mark.slow
def test_device_stops_a_running_fine_tune_while_it_measures_and_resumes_it(trained_resnet20, digits):
    """The search's own parts: its trial task fine-tuning in Ray, and its device actor measuring an ONNX model."""
    import copy

    import ray

    from autocompress.config import TrainConfig
    from autocompress.pipeline.export import export_onnx, fold_batchnorm
    from autocompress.pipeline.trial import TrialSpec
    from autocompress.runtime.cluster import place_device
    from autocompress.runtime.device import trial_pids
    from autocompress.runtime.executor import autocompress_trial

    m = copy.deepcopy(trained_resnet20).eval()
    example = digits.val.images(1)
    fold_batchnorm(m, example)
    onnx_bytes = export_onnx(m, example).SerializeToString()
    # two sessions of at least 0.5 s each, never skipped or retried (no retries, no probe): the fine-tune stands
    # still for a second or more, hundreds of samples of the sampler below
    settings = {"batch": 1, "threads": 1, "warmup": 5, "min_reps": 20, "max_reps": 100_000, "sessions": 2,
                "max_sessions": 2, "max_contended": 0, "burst_wait_s": 0, "probe": False,
                "min_session_seconds": 0.5, "max_seconds": 3.0, "session_gap_s": 0.1}
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        device, _ = place_device("local", settings)
        spec = TrialSpec({}, {}, TrainConfig(epochs=300, lr=0.01), seed=0)  # far longer than this test
        ref = ray.remote(autocompress_trial).options(num_cpus=os.cpu_count(), max_retries=0).remote(
            ray.put(trained_resnet20), ray.put(digits), spec, os.cpu_count())

        # this Ray's worker (its parent is the raylet this process started): other jobs on the machine may run
        # trials of their own
        def ours() -> list[int]:
            pids = []
            for pid in trial_pids():
                try:
                    if int(_stat(int(_stat(pid)[1]))[1]) == os.getpid():
                        pids.append(pid)
                except (OSError, ValueError, IndexError):
                    pass
            return pids

        deadline = time.time() + 120
        while not ours() and time.time() < deadline:
            time.sleep(0.2)
        assert ours(), "the fine-tune did not start"
        (pid,) = ours()
        time.sleep(2)  # into the fine-tune

        states: list[str] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                states.append(_state(pid))
                time.sleep(0.002)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            result = ray.get(device.measure.remote(onnx_bytes, tuple(digits.input_shape)))
        finally:
            done.set()
            sampler.join()

        # another search's device on this machine may hold the trial for a moment too, hence the wait
        deadline = time.time() + 30
        while _state(pid) == "T" and time.time() < deadline:
            time.sleep(0.05)
        running_again = _state(pid) != "T"
        # computing again, not only woken: its CPU time (utime + stime, in ticks) moves on
        cpu = int(_stat(pid)[11]) + int(_stat(pid)[12])
        while int(_stat(pid)[11]) + int(_stat(pid)[12]) == cpu and time.time() < deadline:
            time.sleep(0.05)
        computing = int(_stat(pid)[11]) + int(_stat(pid)[12]) > cpu
        still_running = ref not in ray.wait([ref], timeout=0)[0] and pid in ours()
        ray.cancel(ref, force=True)
    finally:
        ray.shutdown()
    assert result["paused_trials"] >= 1, result
    assert "T" in states, f"the fine-tune was never seen stopped in {len(states)} samples: {set(states)}"
    assert running_again and computing, "the fine-tune stayed stopped after the measurement"
    assert still_running, "the fine-tune ended or was killed during the measurement"
