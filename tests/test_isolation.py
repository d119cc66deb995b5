"""Latency is never measured beside a fine-tune: the device pauses the trials on its node while it measures."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

import pytest


def _busy_cores(seconds: float = 1.0) -> float:
    """How many cores the whole machine kept busy over the next `seconds`."""
    from autocompress.cpus import machine_busy as _machine_busy
    from autocompress.cpus import other_load

    before = _machine_busy()
    time.sleep(seconds)
    load = other_load(before, _machine_busy(), own_cpu_s=0.0, wall_s=seconds)  # this process sleeps meanwhile
    return 0.0 if load is None else load


def _wait_until_quiet(limit_s: float = 60.0) -> None:
    """Ray's own start-up (prestarted workers importing torch, new actors) must not land in the "alone" figures."""
    deadline = time.time() + limit_s
    while _busy_cores() > 0.3 and time.time() < deadline:
        pass


def _state(pid: int) -> str:
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]


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
def test_latency_alone_and_during_a_concurrent_fine_tune_agree_within_5_percent(trained_resnet20, digits):
    """The search's own parts: its trial task (fine-tuning on both cores) and its device actor."""
    import copy

    import ray

    from autocompress.config import TrainConfig
    from autocompress.pipeline.export import export_onnx, fold_batchnorm
    from autocompress.pipeline.trial import TrialSpec
    from autocompress.runtime.cluster import place_device
    from autocompress.runtime.device import Device, paused_trials, trial_pids
    from autocompress.runtime.executor import autocompress_trial

    m = copy.deepcopy(trained_resnet20).eval()
    example = digits.val.images(1)
    fold_batchnorm(m, example)
    onnx_bytes = export_onnx(m, example).SerializeToString()
    shape = tuple(digits.input_shape)
    # the session uses every core, like the fine-tune: with one thread the scheduler mostly gives it a core of its
    # own and a failure to pause would go unseen. Measured with the device's pausing switched off: "during" read
    # 2% above "alone" at 1 thread, but 0.64-0.96 ms against 0.545 ms at 2 threads (this test then fails).
    settings = {"batch": 1, "threads": os.cpu_count(), "warmup": 20, "min_reps": 200, "max_reps": 3000,
                "ci_target": 0.01, "sessions": 3, "max_sessions": 5, "max_contended": 3, "burst_wait_s": 0,
                "max_seconds": 20.0}
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        device, _ = place_device("local", settings)
        apart = Device.options(**{}).remote(settings, pause_trials=False)  # times "alone": pauses nothing itself
        ray.get([a.fingerprint.remote() for a in (device, apart)])  # the actors are up before anything is timed
        base, data = ray.put(trained_resnet20), ray.put(digits)
        _wait_until_quiet()
        spec = TrialSpec({}, {}, TrainConfig(epochs=300, lr=0.01), seed=0)
        ref = ray.remote(autocompress_trial).options(num_cpus=os.cpu_count(), max_retries=0).remote(
            base, data, spec, os.cpu_count())
        deadline = time.time() + 120
        while not trial_pids() and time.time() < deadline:
            time.sleep(0.2)
        assert trial_pids(), "the fine-tune did not start"
        time.sleep(3)  # well into the fine-tune
        # "alone" and "during" interleaved, in pairs: this shared VM's speed drifts by a few percent over a minute,
        # so figures taken minutes apart (alone before, during later) would compare the drift, not the isolation.
        # alone: the test holds the fine-tune stopped for the whole measurement (it computes nothing), timed by an
        # actor that pauses nothing itself (it would let the fine-tune go between sessions); during: the search's
        # device, which pauses the fine-tune only within each session and lets it run in the gaps between sessions.
        # Interference from outside only ever adds time, and on a shared host it comes in bursts that can slow both
        # cores by 10-60% for many seconds, or for half an hour (CI of a608b79: the whole suite 5 minutes slower, 22 of
        # 24 figures here flagged `contended`, most 20-30% above this model's quiet speed). The two figures of a pair
        # are taken seconds apart and see the same host, so each pair gives a ratio, during / alone, and the test
        # compares their median with 1: a failed pause slows every "during" figure (with the device's pausing switched
        # off: 1.17-1.76x; this test then fails), a burst hits either side at random. The fastest figure of each side
        # (used before) rested on a single quiet moment in such hours: in a608b79's CI the one quiet "alone" figure
        # (0.599 ms) was 15% below every other and failed the test, while the paired ratios had a median of 1.04; in
        # cd26933's, "during" read 6% *faster* than "alone" that way.
        # At least 6 pairs; in a bursty hour (most figures `contended`: the device's retries ran out) up to 12, until
        # each side has 3 figures taken at a quiet moment. The stop rule looks only at `contended`, never at the
        # figures.
        alone, during = [], []

        def calm(figures: list[dict]) -> int:
            return sum(not f["contended"] for f in figures)

        while len(alone) < 6 or (len(alone) < 12 and min(calm(alone), calm(during)) < 3):
            with paused_trials() as held:
                assert held, "no trial to hold"
                time.sleep(0.5)
                alone.append(ray.get(apart.measure.remote(onnx_bytes, shape)))
            time.sleep(1.0)  # the fine-tune runs again
            during.append(ray.get(device.measure.remote(onnx_bytes, shape)))
        assert ref not in ray.wait([ref], timeout=0)[0], "the fine-tune ended before the measurements"
        ray.cancel(ref, force=True)
    finally:
        ray.shutdown()
    print(f"alone {[a['median_ms'] for a in alone]} during {[d['median_ms'] for d in during]}"
          f" contended alone {[a['contended'] for a in alone]} during {[d['contended'] for d in during]}")
    assert all(d["paused_trials"] >= 1 for d in during)
    ratios = [d["median_ms"] / a["median_ms"] for a, d in zip(alone, during, strict=False)]
    print(f"during / alone per pair {[round(r, 3) for r in ratios]}, median {statistics.median(ratios):.3f}")
    assert abs(statistics.median(ratios) - 1) <= 0.05, (ratios, alone, during)
