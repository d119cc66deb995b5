"""Latency of an ONNX file under ONNX Runtime, measured the way it will run: batch 1 by default,
fixed intra-op threads, warm-up, repetitions until the median is stable, several fresh sessions."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["LatencySettings", "LatencyResult", "measure_latency", "make_session"]


@dataclass(frozen=True)
class LatencySettings:
    batch: int = 1
    threads: int = 1
    warmup: int = 20
    min_reps: int = 50
    max_reps: int = 1000
    ci_target: float = 0.02  # stop once the median's 95% CI half-width is within 2% of the median
    sessions: int = 3
    max_seconds: float = 20.0  # per session, a cap for large models
    max_sessions: int = 9  # more fresh sessions while their medians disagree by more than 2 x ci_target


@dataclass(frozen=True)
class LatencyResult:
    median_ms: float
    p90_ms: float
    p99_ms: float
    reps: int
    session_medians_ms: tuple[float, ...]

    def as_dict(self) -> dict:
        return asdict(self)


def make_session(path: str | Path | bytes, *, threads: int, optimized_path: str | None = None,
                 level: str = "all"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }[level]
    so.log_severity_level = 3
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    src = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def _median_ci_halfwidth(samples: list[float]) -> float:
    """Half-width of a distribution-free 95% CI of the median (order statistics)."""
    n = len(samples)
    s = sorted(samples)
    k = int(max(0, np.floor(n / 2 - 1.96 * np.sqrt(n) / 2)))
    lo, hi = s[k], s[min(n - 1, n - 1 - k)]
    return (hi - lo) / 2


def measure_latency(path: str | Path | bytes, input_shape: tuple[int, ...], settings: LatencySettings = LatencySettings(),
                    *, seed: int = 0) -> LatencyResult:
    """`input_shape` excludes the batch dimension."""
    x = np.random.default_rng(seed).standard_normal((settings.batch, *input_shape)).astype(np.float32)
    all_samples: list[float] = []
    medians: list[float] = []

    def disagree() -> bool:  # a burst of load from outside (a shared machine) shifts a whole session
        return len(medians) < settings.sessions or (
            len(medians) < settings.max_sessions and max(medians) > (1 + 2 * settings.ci_target) * min(medians))

    while disagree():
        sess = make_session(path, threads=settings.threads)
        feed = {sess.get_inputs()[0].name: x}
        for _ in range(settings.warmup):
            sess.run(None, feed)
        samples: list[float] = []
        start = time.perf_counter()
        while len(samples) < settings.max_reps:
            t0 = time.perf_counter_ns()
            sess.run(None, feed)
            samples.append((time.perf_counter_ns() - t0) / 1e6)
            if len(samples) >= settings.min_reps and len(samples) % 10 == 0:
                med = statistics.median(samples)
                if _median_ci_halfwidth(samples) <= settings.ci_target * med:
                    break
                if time.perf_counter() - start > settings.max_seconds:
                    break
        medians.append(statistics.median(samples))
        all_samples.extend(samples)
        del sess
    q = np.percentile(all_samples, [90, 99])
    return LatencyResult(
        median_ms=float(statistics.median(medians)), p90_ms=float(q[0]), p99_ms=float(q[1]),
        reps=len(all_samples), session_medians_ms=tuple(round(m, 4) for m in medians),
    )
