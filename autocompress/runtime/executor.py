"""Where trials run and latency is measured: Ray tasks and the device actor, or threads of this process.

The scheduler talks to an `Executor` only: submit a trial, submit a measurement, wait for some to finish, get a
result, cancel. `RayExecutor` is what a search uses (trials anywhere in a cluster, the device actor pausing
them while it measures). `InProcessExecutor` runs the same pipeline in threads of the calling process, for
the scheduler's own tests and for use where Ray cannot run.
"""

from __future__ import annotations

import concurrent.futures as cf
import sys
from typing import Any, Callable, Protocol

import torch

from autocompress.errors import describe_error
from autocompress.pipeline.score import Score, Scorer, ScoreSettings, ScoreSpec
from autocompress.pipeline.trial import ShortOutput, TrialOutput, TrialSpec, run_pipeline, run_short
from autocompress.tasks.data import Splits

__all__ = ["Executor", "RayExecutor", "InProcessExecutor", "autocompress_trial", "ship_user_code"]


class Executor(Protocol):
    def submit_trial(self, spec: TrialSpec) -> Any:
        """Start the pipeline for `spec`; returns a handle."""

    def submit_short(self, spec: TrialSpec) -> Any:
        """Start a short fine-tune of `spec`'s candidate (pipeline.trial.run_short); returns a handle."""

    def submit_measure(self, onnx_bytes: bytes) -> Any:
        """Start a latency measurement of an ONNX file on the device; returns a handle."""

    def wait(self, handles: list, timeout: float) -> set:
        """The handles among `handles` that have finished, waiting at most `timeout` s for the first."""

    def get(self, handle: Any) -> Any:
        """The result of a finished handle (raises what the task raised)."""

    def cancel(self, handle: Any) -> None:
        """Stop a running task."""

    def scan(self, space, reduce_range: bool) -> dict:
        """The sensitivity scan (space/sensitivity.py) of the baseline, where trials run; waits for it."""

    def time_graphs(self, graphs: list[tuple[bytes, tuple[int, ...]]]) -> list[float]:
        """Quick timings (ms) of small ONNX graphs on the device (the latency model's table); waits for them."""

    def score(self, specs: list[ScoreSpec], settings: ScoreSettings) -> list[Score | str]:
        """Cheap scores of candidates (pipeline/score.py), in parallel where trials run; waits for them. A candidate
        that fails is its error's text, not an exception: the others' scores stand."""

    def close_scorers(self) -> None:
        """Free what scoring holds (its workers and their copies of the model and sample)."""


def autocompress_trial(baseline: torch.nn.Module, splits: Splits, spec: TrialSpec, threads: int) -> TrialOutput:
    """Runs in a Ray worker; the device finds (and pauses) running trials by this function's name."""
    return run_pipeline(baseline, splits, spec, threads=threads)


class _ScoringWorker:
    """A Ray actor holding one Scorer (the fixed sample and the baseline's logits on it are made once)."""

    def __init__(self, baseline: torch.nn.Module, splits: Splits, settings: ScoreSettings) -> None:
        torch.set_num_threads(1)  # one worker per CPU
        self.scorer = Scorer(baseline, splits, settings)

    def score(self, spec: ScoreSpec) -> Score | str:
        return _score_or_error(self.scorer, spec)


def _score_or_error(scorer: Scorer, spec: ScoreSpec) -> Score | str:
    try:
        return scorer.score(spec)
    except Exception as e:  # noqa: BLE001 - one candidate that cannot be built or scored is that candidate's result
        return describe_error(e)


def autocompress_short(baseline: torch.nn.Module, splits: Splits, spec: TrialSpec, threads: int) -> ShortOutput:
    """Runs in a Ray worker: the funnel's short fine-tune (nothing is measured meanwhile)."""
    return run_short(baseline, splits, spec, threads=threads)


def _scan_task(baseline: torch.nn.Module, splits: Splits, space, reduce_range: bool, threads: int) -> dict:
    """Runs in a Ray worker."""
    from autocompress.space.sensitivity import scan

    return scan(baseline, splits, space, reduce_range=reduce_range, threads=threads)


def _baseline_task(model_name: str, splits: Splits, settings, seed: int, device: str, progress) -> tuple[dict, dict]:
    """Runs in a Ray worker: the FP32 model trained from scratch, as (state_dict, info)."""
    import ray

    from autocompress.cpus import usable_cpus
    from autocompress.pipeline.baseline import train_baseline

    # nothing else of the search runs while the baseline trains: every CPU the search was given (a local Ray's
    # are the ones other processes left free), at most this node's
    torch.set_num_threads(max(1, min(usable_cpus(), int(ray.cluster_resources().get("CPU", 1)))))
    model, info = train_baseline(model_name, splits, settings, seed, device=device,
                                 on_epoch=lambda e, loss: progress.put((e, loss)))
    return model.state_dict(), info


def train_baseline_in_worker(model_name: str, splits: Splits, settings, seed: int, train_device: str,
                             on_epoch: Callable[[int, float], None]) -> tuple[torch.nn.Module, dict]:
    """Train the baseline in a Ray worker (on its GPU when `train_device` is cuda), not in the driver: training
    a network on large images takes gigabytes the driver would then keep for the whole search. Epochs are
    reported to `on_epoch` here as they end."""
    import ray
    from ray.util.queue import Queue

    from autocompress.tasks.models import build_model

    progress = Queue(actor_options={"num_cpus": 0})
    task = ray.remote(_baseline_task).options(num_cpus=1, num_gpus=1 if train_device == "cuda" else 0,
                                              max_retries=0)
    ref = task.remote(model_name, splits, settings, seed, train_device, progress)
    try:
        while True:
            ready, _ = ray.wait([ref], timeout=1.0)
            while not progress.empty():
                on_epoch(*progress.get())
            if ready:
                break
        state, info = ray.get(ref)
    finally:
        ray.kill(progress.actor)
    model = build_model(model_name, num_classes=splits.num_classes, in_channels=splits.input_shape[0])
    model.load_state_dict(state)
    return model.eval(), info


def ship_user_code(model: torch.nn.Module) -> list[str]:
    """Make the modules that define the model's classes travel with it when no installed package provides them (a
    user's own file): Ray workers, on this machine or another, could not import them by name. Returns their names."""
    import importlib.metadata

    from ray import cloudpickle

    installed = importlib.metadata.packages_distributions()
    shipped = []
    for name in sorted({type(m).__module__ for m in model.modules()}):
        module = sys.modules.get(name)
        if name == "__main__" or module is None or name.split(".")[0] in installed or name in sys.builtin_module_names:
            continue  # __main__ is pickled by value already; installed packages import anywhere
        cloudpickle.register_pickle_by_value(module)
        shipped.append(name)
    return shipped


class RayExecutor:
    """Trials as Ray tasks (`threads` CPUs each), measurements by the device actor, one at a time."""

    def __init__(self, baseline: torch.nn.Module, splits: Splits, threads: int, device, input_shape: tuple,
                 resources: dict[str, float] | None = None) -> None:
        """`resources`: what one trial asks Ray for (pipeline.devices.trial_resources; default `threads` CPUs)."""
        import ray

        self.ray = ray
        ship_user_code(baseline)
        self.base_ref = ray.put(baseline)
        self.splits_ref = ray.put(splits)
        self.threads = threads
        self.device = device
        self.input_shape = input_shape
        self.resources = resources or {"num_cpus": threads}
        self._trial = ray.remote(autocompress_trial).options(**self.resources, max_retries=0)
        self._short = ray.remote(autocompress_short).options(**self.resources, max_retries=0)
        self._scorers: list = []
        self._scoring: ScoreSettings | None = None

    def submit_trial(self, spec: TrialSpec):
        return self._trial.remote(self.base_ref, self.splits_ref, spec, self.threads)

    def submit_short(self, spec: TrialSpec):
        return self._short.remote(self.base_ref, self.splits_ref, spec, self.threads)

    def submit_measure(self, onnx_bytes: bytes):
        return self.device.measure.remote(onnx_bytes, self.input_shape)

    def wait(self, handles: list, timeout: float) -> set:
        if not handles:
            return set()
        ready, _ = self.ray.wait(handles, num_returns=1, timeout=timeout)
        return set(ready)

    def get(self, handle):
        return self.ray.get(handle)

    def cancel(self, handle) -> None:
        self.ray.cancel(handle, force=True)

    def scan(self, space, reduce_range: bool) -> dict:
        """The sensitivity scan (space/sensitivity.py) in a worker."""
        task = self.ray.remote(_scan_task).options(num_cpus=self.threads, max_retries=0)
        return self.ray.get(task.remote(self.base_ref, self.splits_ref, space, reduce_range, self.threads))

    def time_graphs(self, graphs: list[tuple[bytes, tuple[int, ...]]]) -> list[float]:
        return self.ray.get(self.device.time_graphs.remote(graphs))

    def score(self, specs: list[ScoreSpec], settings: ScoreSettings) -> list[Score | str]:
        """Round-robin over one single-threaded scoring worker per CPU of the cluster."""
        if self._scoring != settings:
            self.close_scorers()
            n = max(1, int(self.ray.cluster_resources().get("CPU", 1)))
            worker = self.ray.remote(_ScoringWorker).options(num_cpus=1, max_restarts=0)
            self._scorers = [worker.remote(self.base_ref, self.splits_ref, settings) for _ in range(n)]
            self._scoring = settings
        refs = [self._scorers[i % len(self._scorers)].score.remote(s) for i, s in enumerate(specs)]
        return self.ray.get(refs)

    def close_scorers(self) -> None:
        for actor in self._scorers:
            self.ray.kill(actor)
        self._scorers, self._scoring = [], None


class InProcessExecutor:
    """The same pipeline in threads of this process: `concurrency` trials at once, one measurement at a time by
    `measure(onnx_bytes) -> dict` (a `LatencyResult.as_dict()`). A running thread cannot be stopped: `cancel`
    only drops its result."""

    def __init__(self, baseline: torch.nn.Module, splits: Splits, *, concurrency: int = 1, threads: int = 1,
                 measure: Callable[[bytes], dict]) -> None:
        self.baseline, self.splits, self.threads = baseline, splits, threads
        self.measure = measure
        self._trials = cf.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="trial")
        self._device = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="device")

    def submit_trial(self, spec: TrialSpec) -> cf.Future:
        return self._trials.submit(run_pipeline, self.baseline, self.splits, spec, threads=self.threads)

    def submit_short(self, spec: TrialSpec) -> cf.Future:
        return self._trials.submit(run_short, self.baseline, self.splits, spec, threads=self.threads)

    def submit_measure(self, onnx_bytes: bytes) -> cf.Future:
        return self._device.submit(self.measure, onnx_bytes)

    def wait(self, handles: list, timeout: float) -> set:
        if not handles:
            return set()
        done, _ = cf.wait(handles, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return set(done)

    def get(self, handle: cf.Future):
        return handle.result()

    def cancel(self, handle: cf.Future) -> None:
        handle.cancel()

    def scan(self, space, reduce_range: bool) -> dict:
        from autocompress.space.sensitivity import scan

        return scan(self.baseline, self.splits, space, reduce_range=reduce_range, threads=self.threads)

    def time_graphs(self, graphs: list[tuple[bytes, tuple[int, ...]]]) -> list[float]:
        from autocompress.latency_model.layers import time_graph

        return [time_graph(data, shape, threads=1) for data, shape in graphs]

    def score(self, specs: list[ScoreSpec], settings: ScoreSettings) -> list[Score | str]:
        scorer = Scorer(self.baseline, self.splits, settings)
        return [_score_or_error(scorer, s) for s in specs]

    def close_scorers(self) -> None:
        pass  # nothing is kept between calls

    def close(self) -> None:
        self._trials.shutdown(wait=True, cancel_futures=True)
        self._device.shutdown(wait=True, cancel_futures=True)
