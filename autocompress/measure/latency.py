"""Latency of an ONNX file under ONNX Runtime, measured the way it will run: batch 1 by default,
fixed intra-op threads, warm-up, repetitions until the median is stable, several fresh sessions.

Contention: the device pauses the search's own trials while it measures, but a shared machine has other
load too. Each session checks how many cores the rest of the machine kept busy meanwhile (/proc/stat,
minus this process's own CPU time; hypervisor steal counts as busy). A session taken beside more than
`contention_cores` of other load is discarded and taken again after a pause that grows from 0.25 s to 4 s,
`max_contended` times or for `burst_wait_s` seconds of pauses, whichever lasts longer (the retries cost the
paused trials nothing: they run during the pauses; after a long wait that found no calm, the next measurements
of the same LatencyMeter make only the quick retries for a few minutes); if the load never goes away, the result keeps
the last sessions and says `contended`, and the search does not cache it.

Bursts: interference that /proc/stat does not show (another tenant on the same physical core or cache)
slows whole sessions by 30-90% for a second or more at a time on this project's shared 2-core VM. Three
defences: (1) a fixed reference workload (`_Probe`) is timed before and after each session; a session whose
probe ran more than `probe_factor` slower than the fastest this device has run it is taken again (it shares
the retries; when the probe is slow already before the session, the session is not run); (2) sessions are
spread out (`session_gap_s`, jittered); (3) the figures come
from the sessions within 2 x ci_target of the fastest, and sessions are added (up to `max_sessions`) until
`sessions` of them agree with it. Slower sessions are counted (`slow_sessions`), not used.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, ContextManager, Protocol

import numpy as np

from autocompress.config import LatencyConfig
from autocompress.cpus import machine_busy, other_load
from autocompress.fileio import atomic_write_text

__all__ = ["LatencyMeter", "LatencyResult", "measure_latency", "make_session"]


@dataclass(frozen=True)
class LatencyResult:
    median_ms: float
    p90_ms: float
    p99_ms: float
    reps: int
    session_medians_ms: tuple[float, ...]
    other_load_cores: float | None = None  # the most other load (cores) beside a kept session; None: unknown here
    contended_sessions: int = 0  # sessions discarded for other load
    burst_wait_s: float = 0.0  # seconds paused between sessions taken again, waiting for load or a burst to pass
    contended: bool = False  # a session the figure rests on had other load or a slow probe beside it (retries ran out)
    slow_sessions: int = 0  # sessions left out of the figures: slower than the fastest by more than 2 x ci_target
    slowed_sessions: int = 0  # sessions taken again because the reference probe beside them ran slow
    paused_trials: int = 0  # trial processes the `quiet` hook held still during a session (the most at once)
    held_s: float = 0.0  # wall seconds spent inside the `quiet` hook: what the measurement cost the trials it paused
    # the reference probe beside the kept sessions, x its best: how fast the host ran
    probe_vs_best: float | None = None

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


def _probe_model() -> bytes:
    """A fixed fp32 workload, the same bytes in every process: two 3x3 convs (8->16->16 channels) at 24x24."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(12345)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.1, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.1, "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w2"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 24, 24])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 24, 24])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


class ReferenceProbe(Protocol):
    """What a meter times beside each session: a call returns a reading in ms; `best` is the fastest reading this
    device has had (its quiet speed)."""

    best: float

    def __call__(self) -> float: ...


class _Probe:
    """Is the machine running at its quiet speed right now? The median of 25 runs of a fixed reference
    workload, against the fastest this device has ever run it (remembered per host, ORT version and threads
    under $AUTOCOMPRESS_CACHE/probe, so a new process knows the quiet speed too). On this project's shared VM,
    every session slowed by a burst had a probe at 1.6-2x its best beside it."""

    def __init__(self, threads: int) -> None:
        import platform

        import onnxruntime as ort

        self.sess = make_session(_probe_model(), threads=threads)
        self.feed = {"x": np.random.default_rng(0).standard_normal((1, 8, 24, 24)).astype(np.float32)}
        for _ in range(10):
            self.sess.run(None, self.feed)
        from autocompress.measure.cache import cache_dir

        key = f"{platform.node()}-{platform.machine()}-ort{ort.__version__}-t{threads}".replace("/", "_")
        self.path = cache_dir() / "probe" / f"{key}.json"
        try:
            self.best = float(json.loads(self.path.read_text())["best_ms"])
        except (OSError, ValueError, KeyError, TypeError):
            self.best = float("inf")
            for _ in range(20):  # first use on this device: learn its quiet speed over 2 s, longer than a burst
                self()
                time.sleep(0.1)

    def __call__(self) -> float:
        t = []
        for _ in range(25):
            t0 = time.perf_counter_ns()
            self.sess.run(None, self.feed)
            t.append((time.perf_counter_ns() - t0) / 1e6)
        ms = statistics.median(t)
        if ms < 0.99 * self.best:
            self.best = ms
            try:
                atomic_write_text(self.path, json.dumps({"best_ms": ms}))
            except OSError:
                pass  # remembering is an optimisation; this process still knows
        return ms


def _quiet(medians: list[float], ci_target: float) -> list[int]:
    """Indices of the sessions that ran at the machine's quiet speed: within 2 x ci_target of the fastest.

    Interference on a shared machine only ever adds time, and it comes in bursts that can slow a whole
    session by 30-90% (seen here with no load visible in /proc/stat: another tenant on the same physical
    core or cache). A session slower than the fastest by more than the measurement's own precision ran
    beside such a burst."""
    fastest = min(medians)
    return [i for i, m in enumerate(medians) if m <= (1 + 2 * ci_target) * fastest]


def _need_more(medians: list[float], settings: LatencyConfig) -> bool:
    """Another session? Until `sessions` of them agree with the fastest, at most `max_sessions`."""
    return len(medians) < settings.sessions or (
        len(medians) < settings.max_sessions and len(_quiet(medians, settings.ci_target)) < settings.sessions)


class LatencyMeter:
    """Measures latencies on this device with one LatencyConfig. It owns what spans its measurements: the
    reference probe (`probe`, built on first use) and the no-long-wait deadline (`no_long_wait_until`). The
    device actor keeps one meter for its life, so both span every measurement of a search."""

    def __init__(self, settings: LatencyConfig | None = None, *, probe: ReferenceProbe | None = None) -> None:
        """`probe`: a reference workload to time instead of the built-in `_Probe` (only with `settings.probe`)."""
        self.settings = settings if settings is not None else LatencyConfig()
        self._probe = probe
        # time.monotonic() before which this meter does not wait out a burst beyond the quick retries: its last long
        # wait found no calm (a slowdown that lasts many minutes, not a burst), and waiting again would only cost every
        # measurement `burst_wait_s` (a 40-trial search's end-of-run confirmation had run 21 minutes that way)
        self.no_long_wait_until = 0.0

    @property
    def probe(self) -> ReferenceProbe | None:
        """The reference workload timed beside each session; None when `settings.probe` is off."""
        if not self.settings.probe:
            return None
        if self._probe is None:
            self._probe = _Probe(self.settings.threads)
        return self._probe

    def measure(self, path: str | Path | bytes, input_shape: tuple[int, ...], *, seed: int = 0,
                quiet: Callable[[], ContextManager] | None = None) -> LatencyResult:
        """`input_shape` excludes the batch dimension. `quiet()`, when given, is entered around each session (the
        device pauses the trials on its node there) and left during the gaps between sessions."""
        settings = self.settings
        x = np.random.default_rng(seed).standard_normal((settings.batch, *input_shape)).astype(np.float32)
        gaps = np.random.default_rng(seed + 1)
        per_session: list[list[float]] = []
        medians: list[float] = []

        limit = settings.contention_cores
        if limit is None:
            seen = machine_busy()
            limit = max(0.5, ((seen[2] if seen else os.cpu_count() or 1) - settings.threads) / 4)
        discarded, slowed, loads, paused, held_s, waited = 0, 0, [], 0, 0.0, 0.0
        patient = time.monotonic() >= self.no_long_wait_until

        def may_retry() -> bool:
            return discarded + slowed < settings.max_contended or (patient and waited < settings.burst_wait_s)

        disturbed: list[bool] = []
        probe_ratio: list[float] = []  # per kept session: its slower probe against the fastest this device has run it
        probe = self.probe

        while _need_more(medians, settings):
            if medians or discarded or slowed:  # sessions spread over time: one burst of interference cannot cover all
                time.sleep(settings.session_gap_s * gaps.uniform(0.5, 1.5))
            # the session is built and warmed up (arenas allocated, weights prepacked) before the trials are paused:
            # that needs no quiet, and the trials stand still for less; a few runs inside bring the caches back after
            # the fine-tune
            sess = make_session(path, threads=settings.threads)
            feed = {sess.get_inputs()[0].name: x}
            for _ in range(settings.warmup):
                sess.run(None, feed)
            t_held = time.perf_counter()
            with (quiet() if quiet else contextlib.nullcontext()) as held:
                paused = max(paused, len(held) if isinstance(held, list) else 0)
                for _ in range(min(5, settings.warmup)):
                    sess.run(None, feed)
                probe_ms = [probe()] if probe else []
                samples: list[float] = []
                load = None
                # a probe already slow before the session: the burst is on now, so the trials go back to work at
                # once instead of standing still through a session that would be thrown away (retries permitting)
                early = bool(probe) and probe_ms[0] > settings.probe_factor * probe.best and may_retry()
                start = time.perf_counter()
                cpu0, busy0 = time.process_time(), machine_busy()
                while not early and len(samples) < settings.max_reps:
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
                if not early:
                    load = other_load(busy0, machine_busy(), time.process_time() - cpu0,
                                      time.perf_counter() - start)
                    if probe:
                        probe_ms.append(probe())
            del sess
            if isinstance(held, list) and held:  # only time that stood trials still cost them anything
                held_s += time.perf_counter() - t_held
            loaded = load is not None and load > limit
            slow = bool(probe) and max(probe_ms) > settings.probe_factor * probe.best
            if (loaded or slow) and may_retry():
                discarded += loaded
                slowed += not loaded
                # let the burst pass: most here lasted about a second, some a minute; the pause grows (0.25 s, 0.5,
                # 0.75, ... up to 4 s) and the trials run meanwhile (the `quiet` hook is left)
                pause = min(4.0, 0.25 * (discarded + slowed))
                time.sleep(pause)
                waited += pause
                continue
            disturbed.append(loaded or slow)  # kept all the same: the retries ran out
            if (loaded or slow) and patient and settings.burst_wait_s > 0 and waited >= settings.burst_wait_s:
                self.no_long_wait_until = time.monotonic() + max(60.0, 4 * settings.burst_wait_s)
            if probe:
                probe_ratio.append(max(probe_ms) / probe.best)
            if load is not None:
                loads.append(load)
            medians.append(statistics.median(samples))
            per_session.append(samples)
        keep = _quiet(medians, settings.ci_target)
        contended = any(disturbed[i] for i in keep)  # the figure rests on a session taken beside load or a burst
        kept_samples = [v for i in keep for v in per_session[i]]
        q = np.percentile(kept_samples, [90, 99])
        return LatencyResult(
            median_ms=float(statistics.median(medians[i] for i in keep)), p90_ms=float(q[0]), p99_ms=float(q[1]),
            reps=sum(len(v) for v in per_session), session_medians_ms=tuple(round(m, 4) for m in medians),
            other_load_cores=round(max(loads), 3) if loads else None, contended_sessions=discarded,
            contended=contended, slow_sessions=len(medians) - len(keep), slowed_sessions=slowed, paused_trials=paused,
            burst_wait_s=round(waited, 2), held_s=round(held_s, 3),
            probe_vs_best=round(max(probe_ratio[i] for i in keep), 3) if probe_ratio else None,
        )


def measure_latency(path: str | Path | bytes, input_shape: tuple[int, ...], settings: LatencyConfig | None = None,
                    *, seed: int = 0, quiet: Callable[[], ContextManager] | None = None) -> LatencyResult:
    """One measurement with a meter of its own (see LatencyMeter.measure). Several measurements in one process
    should share a LatencyMeter: it keeps the reference probe and the no-long-wait guard between them."""
    return LatencyMeter(settings).measure(path, input_shape, seed=seed, quiet=quiet)
