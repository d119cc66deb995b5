"""Latency of an ONNX file under ONNX Runtime, measured the way it will run: batch 1 by default,
fixed intra-op threads, warm-up, repetitions until the median is stable, several fresh sessions.

Contention: the device pauses the search's own trials while it measures, but a shared machine has other
load too. Each session checks how many cores the rest of the machine kept busy meanwhile (/proc/stat,
minus this process's own CPU time; hypervisor steal counts as busy). A session taken beside more than
`contention_cores` of other load is discarded and taken again after a short pause, up to `max_contended`
times; if the load never goes away, the result keeps the last sessions and says `contended`, and the
search does not cache it.
"""

from __future__ import annotations

import os
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
    max_contended: int = 6  # sessions discarded because other load shared the machine, before giving up waiting
    contention_cores: float | None = None  # other load (cores) that spoils a session; None: max(0.5, (cores - threads) / 4)
    min_session_seconds: float = 0.1  # a session runs at least this long (unless max_reps): long enough to see other load


@dataclass(frozen=True)
class LatencyResult:
    median_ms: float
    p90_ms: float
    p99_ms: float
    reps: int
    session_medians_ms: tuple[float, ...]
    other_load_cores: float | None = None  # the most other load (cores) beside a kept session; None: unknown here
    contended_sessions: int = 0  # sessions discarded for other load
    contended: bool = False  # a kept session still had other load beside it (retries ran out)

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


def _machine_busy() -> tuple[int, int, int] | None:
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
    """Cores kept busy by everything but this process between two `_machine_busy` samples; None when unknown
    (no /proc/stat, or a window under 5 ticks per CPU, too short to tell one busy tick from a busy core)."""
    if before is None or after is None or wall_s <= 0:
        return None
    ncpu = after[2]
    if after[1] - before[1] < 5 * ncpu:
        return None
    busy_cores = ncpu * (after[0] - before[0]) / (after[1] - before[1])
    return max(0.0, busy_cores - own_cpu_s / wall_s)


def measure_latency(path: str | Path | bytes, input_shape: tuple[int, ...], settings: LatencySettings = LatencySettings(),
                    *, seed: int = 0) -> LatencyResult:
    """`input_shape` excludes the batch dimension."""
    x = np.random.default_rng(seed).standard_normal((settings.batch, *input_shape)).astype(np.float32)
    all_samples: list[float] = []
    medians: list[float] = []

    def disagree() -> bool:  # a burst of load from outside (a shared machine) shifts a whole session
        return len(medians) < settings.sessions or (
            len(medians) < settings.max_sessions and max(medians) > (1 + 2 * settings.ci_target) * min(medians))

    limit = settings.contention_cores
    if limit is None:
        seen = _machine_busy()
        limit = max(0.5, ((seen[2] if seen else os.cpu_count() or 1) - settings.threads) / 4)
    discarded, loads, contended = 0, [], False

    while disagree():
        sess = make_session(path, threads=settings.threads)
        feed = {sess.get_inputs()[0].name: x}
        for _ in range(settings.warmup):
            sess.run(None, feed)
        samples: list[float] = []
        start = time.perf_counter()
        cpu0, busy0 = time.process_time(), _machine_busy()
        while len(samples) < settings.max_reps:
            t0 = time.perf_counter_ns()
            sess.run(None, feed)
            samples.append((time.perf_counter_ns() - t0) / 1e6)
            if (len(samples) >= settings.min_reps and len(samples) % 10 == 0
                    and time.perf_counter() - start >= settings.min_session_seconds):
                med = statistics.median(samples)
                if _median_ci_halfwidth(samples) <= settings.ci_target * med:
                    break
                if time.perf_counter() - start > settings.max_seconds:
                    break
        load = other_load(busy0, _machine_busy(), time.process_time() - cpu0, time.perf_counter() - start)
        del sess
        if load is not None and load > limit:
            if discarded < settings.max_contended:
                discarded += 1
                time.sleep(0.5 * discarded)  # let a burst of outside load pass
                continue
            contended = True  # it did not pass: keep the session, and say so
        if load is not None:
            loads.append(load)
        medians.append(statistics.median(samples))
        all_samples.extend(samples)
    q = np.percentile(all_samples, [90, 99])
    return LatencyResult(
        median_ms=float(statistics.median(medians)), p90_ms=float(q[0]), p99_ms=float(q[1]),
        reps=len(all_samples), session_medians_ms=tuple(round(m, 4) for m in medians),
        other_load_cores=round(max(loads), 3) if loads else None, contended_sessions=discarded, contended=contended,
    )
