"""The uniform references every run measures exactly like a trial: what a user would do by hand.

They ignore the search space. FP32 is the reference of every speed-up and of the hypervolume, so a run
cannot go on without it; any other baseline that fails is reported as failed and the search goes on.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable

from autocompress.config import BASELINES, Baseline, TrainConfig
from autocompress.engine.state import LatencyBook, RunState, record_of
from autocompress.errors import ModelError, describe_error
from autocompress.pipeline.trial import TrialSpec
from autocompress.results.records import TrialRecord, TrialState
from autocompress.runtime.executor import Executor
from autocompress.space import SearchSpace
from autocompress.space.keys import model_key

__all__ = ["baseline_spec", "run_baselines"]


def baseline_spec(b: Baseline, space: SearchSpace, finetune: TrainConfig | None, seed: int,
                  reduce_range: bool, *, train_device: str = "cpu") -> TrialSpec:
    """The trial spec of a uniform reference (it ignores the space's choices: every group, every layer)."""
    ratios = {g.name: b.ratio for g in space.groups} if b.ratio else {}
    return TrialSpec(ratios, {layer.name: b.precision for layer in space.layers},
                     finetune if b.fine_tuned else None, space.round_to, space.min_channels, seed, reduce_range,
                     train_device=train_device)


def run_baselines(wanted: list[str], *, state: RunState, executor: Executor, space: SearchSpace,
                  latency: LatencyBook, make_spec: Callable[[Baseline], TrialSpec], concurrency: int,
                  log: Callable[[str], None]) -> None:
    """Build the wanted baselines not measured yet (up to `concurrency` at once), measure them one at a time, in
    order, and record them in `state.baselines` (in BASELINES order) and baselines.json."""
    pending = [b for b in BASELINES if b.name in wanted and b.name not in state.baselines]
    inflight: list[tuple[Baseline, TrialSpec, float, object]] = []
    while pending or inflight:
        while pending and len(inflight) < concurrency:
            b = pending.pop(0)
            log(f"baseline {b.name}: {'prune, fine-tune, ' if b.ratio else ''}export, quantize, measure")
            spec = make_spec(b)
            inflight.append((b, spec, time.perf_counter(), executor.submit_trial(spec)))
        b, spec, t0, handle = inflight.pop(0)
        state.baselines[b.name] = _measure(b, spec, t0, handle, state, executor, space, latency, log)
    state.baselines = {b.name: state.baselines[b.name] for b in BASELINES if b.name in state.baselines}
    state.save_baselines()


def _measure(b: Baseline, spec: TrialSpec, t0: float, handle, state: RunState, executor: Executor,
             space: SearchSpace, latency: LatencyBook, log: Callable[[str], None]) -> TrialRecord:
    kind = f"baseline-{b.name}"
    try:
        out = executor.get(handle)
        lat = latency.cached(out.onnx_bytes) or latency.measured(
            out.onnx_bytes, executor.get(executor.submit_measure(out.onnx_bytes)))
    except Exception as e:  # noqa: BLE001 - a reference that cannot be built is reported, not fatal
        if b.name == "fp32":
            raise ModelError(f"the FP32 baseline cannot be exported, quantized or measured ({describe_error(e)}); "
                             "every figure is relative to it, so the search cannot run: check the model exports "
                             "with torch.onnx") from None
        log(f"  baseline {b.name} failed: {describe_error(e)}")
        return TrialRecord(-1, TrialState.FAIL, {}, kind=kind, duration_s=time.perf_counter() - t0,
                           error=describe_error(e))
    onnx = state.write_model(kind, out.onnx_bytes)
    rec = record_of(-1, out, lat, onnx, time.perf_counter() - t0, kind=kind,
                    choices={f"prune:{g}": r for g, r in spec.ratios.items()})
    return replace(rec, model_key=model_key(space, spec.ratios, spec.precisions))
