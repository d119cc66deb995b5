"""The trial scheduler on its own: no Ray, no fine-tune. Trials run the real pipeline (prune -> export -> ORT
quantization -> accuracy) in threads of this process (InProcessExecutor) on a small CNN, and latency is really
measured with light settings; each search takes seconds."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
import torch
import torch.nn as nn

from autocompress.config import LatencyConfig, TrainConfig
from autocompress.engine.baselines import baseline_spec, run_baselines
from autocompress.engine.policies import (
    FidelityPolicy,
    LatencyTargetGate,
    MultiFidelity,
    Rung,
    ScreenGate,
    rung,
)
from autocompress.engine.scheduler import Limits, Scheduler
from autocompress.engine.state import LatencyBook, RunState
from autocompress.engine.study import distributions
from autocompress.measure.latency import measure_latency
from autocompress.pipeline.prune import find_groups
from autocompress.pipeline.trial import TrialSpec
from autocompress.results.records import ArtifactFigures, LatencyFigures, TrialRecord, TrialState
from autocompress.results.rundir import RunDir
from autocompress.runtime.executor import InProcessExecutor
from autocompress.space import SpaceFile, build_space
from autocompress.space.keys import model_key
from autocompress.space.layers import quantizable_layers
from autocompress.tasks.splitting import Split, Splits, TensorImages

LIGHT = LatencyConfig(sessions=1, max_sessions=1, warmup=2, min_reps=5, max_reps=20, probe=False, max_contended=0,
                      burst_wait_s=0, session_gap_s=0, min_session_seconds=0)


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 96).astype(np.int64)
    x = (rng.normal(size=(96, 1, 12, 12)) + y[:, None, None, None]).astype(np.float32)
    source = TensorImages(torch.from_numpy(x), torch.from_numpy(y))
    parts = {"train": np.arange(48), "calib": np.arange(48, 64), "val": np.arange(64, 80), "test": np.arange(80, 96)}
    splits = Splits("toy", **{k: Split(source, y, idx) for k, idx in parts.items()}, num_classes=4)
    model = SmallNet().eval()
    example = torch.from_numpy(x[:1])
    layers, _ = quantizable_layers(model, example)
    spec = SpaceFile.model_validate({"prune": {"ratios": [0.0, 0.5], "round_to": 8, "min_channels": 8},
                                     "quantize": {"precisions": ["fp32", "int8"]}})
    space = build_space(spec, find_groups(model, example), layers)
    return model, splits, space


def _search(tmp_path, setup, *, budget: int | None, concurrency: int = 1, seed: int = 0, enqueue=(), broken=None,
            predictor=None, target_ms=None, finetune=None, multi_fidelity=0.0, bars=None, hopeless=None,
            screen=False, deadline: float | None = None):
    """A search of `budget` trials; `broken` params get a precision the quantizer rejects (a failing trial),
    `hopeless` params a fine-tune at a learning rate of 1e-6 (it learns nothing); `bars`, a list, receives each
    submitted trial's halfway bar."""
    model, splits, space = setup
    executor = InProcessExecutor(model, splits, concurrency=concurrency,
                                 measure=lambda b: measure_latency(b, splits.input_shape, LIGHT).as_dict())
    state = RunState(RunDir(tmp_path), meta={})
    book = LatencyBook(None)

    def make_spec(params: dict, stop_below: float | None) -> TrialSpec:
        ratios, precisions = space.decode(params)
        if broken is not None and all(params.get(k) == v for k, v in broken.items()):
            precisions = {n: "int3" for n in precisions}
        ft = finetune
        if hopeless is not None and all(params.get(k) == v for k, v in hopeless.items()):
            ft = finetune.model_copy(update={"lr": 1e-6})
        if bars is not None:
            bars.append(stop_below)
        return TrialSpec(ratios, precisions, ft, space.round_to, space.min_channels, stop_below=stop_below,
                         check_halfway=multi_fidelity > 0)

    run_baselines(["fp32"], state=state, executor=executor, space=space, latency=book,
                  make_spec=lambda b: baseline_spec(b, space, None, 0, False), concurrency=1, log=lambda s: None)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=seed))
    for params in enqueue:
        study.enqueue_trial(params)
    lines: list[str] = []
    gates = (*([LatencyTargetGate(target_ms)] if target_ms is not None else []), *([ScreenGate()] if screen else []))
    scheduler = Scheduler(study, distributions(space), space, executor, state,
                          Limits(concurrency=concurrency, trials=budget, deadline=deadline),
                          make_spec=make_spec, latency=book, line=lines.append, predictor=predictor, gates=gates,
                          fidelity=MultiFidelity(multi_fidelity) if multi_fidelity > 0 else FidelityPolicy())
    scheduler.run(lambda: False)
    executor.close()
    return scheduler, study, state, lines


def test_budget_is_spent_exactly_and_every_trial_is_on_disk_and_told(tmp_path, setup):
    scheduler, study, state, lines = _search(tmp_path, setup, budget=5)
    counted = [r for r in state.records.values() if r.state in (TrialState.COMPLETE, TrialState.FAIL)]
    assert len(counted) == 5 and all(r.state is TrialState.COMPLETE for r in counted)
    for n, rec in state.records.items():  # on disk, as the resume reads it
        assert json.loads((tmp_path / "trials" / f"{n:04d}.json").read_text())["state"] == rec.state.value
    # the study heard of every trial, with the record's objectives
    assert all(t.state.name in ("COMPLETE",) for t in study.trials)
    for t in study.trials:
        assert list(t.values) == pytest.approx(list(state.records[t.number].objectives))
    # a measured trial's file exists and its latency was really measured
    rec = counted[0]
    assert (tmp_path / rec.artifact.onnx).is_file() and rec.latency.median_ms > 0 and rec.latency.source == "measured"
    assert len([x for x in lines if x.startswith("trial ")]) == len(state.records)


def test_a_time_budget_is_kept_within_one_trials_time(tmp_path, setup):
    """No trial starts after the deadline; the one running then finishes, so the loop ends at most one trial's time
    (its fine-tune and its measurement) after it."""
    import time

    t0 = time.perf_counter()
    deadline = t0 + 6.0
    _, _, state, _ = _search(tmp_path, setup, budget=None, deadline=deadline,
                             finetune=TrainConfig(epochs=4, lr=0.05))
    end = time.perf_counter()
    done = [r for r in state.records.values() if r.state is TrialState.COMPLETE and not r.reused]
    assert len(done) >= 2  # the budget was spent on trials, not on one
    longest = max(sum(r.stage_seconds.values()) for r in done)
    # a trial's stages plus its measurement and the tell: 2 s more than its stages is far less than another trial
    assert end - deadline <= longest + 2.0, (end - deadline, longest)


def test_a_repeated_model_is_not_run_twice_whether_finished_or_in_flight(tmp_path, setup):
    _, _, space = setup
    a = space.uniform(0.5, "int8")
    # trials 0 and 1 propose the same model at once (concurrency 2: 1 waits for 0); trial 2 proposes it after
    scheduler, study, state, _ = _search(tmp_path, setup, budget=2, concurrency=2,
                                         enqueue=[a, a, a, space.uniform(0, "fp32")])
    recs = state.records
    assert recs[0].state is TrialState.COMPLETE
    assert recs[1].state is TrialState.DUPLICATE and recs[1].duplicate_of == 0
    assert recs[2].state is TrialState.DUPLICATE and recs[2].duplicate_of == 0
    assert recs[1].objectives == recs[0].objectives and recs[1].stage_seconds["prune"] == 0.0
    # the fp32 model is the fp32 baseline's: reused, counted, not run
    assert recs[3].state is TrialState.COMPLETE and recs[3].reused == "baseline-fp32"
    assert model_key(space, *space.decode(a)) in scheduler.seen
    assert len({r.artifact.onnx for r in recs.values()}) == 2  # one file built by a trial, one by the baseline


def test_a_failing_trial_is_recorded_and_the_search_goes_on(tmp_path, setup):
    _, _, space = setup
    bad = space.uniform(0.5, "fp32")
    scheduler, study, state, lines = _search(tmp_path, setup, budget=3, enqueue=[bad], broken=bad)
    assert state.records[0].state is TrialState.FAIL and "int3" in state.records[0].error
    assert sum(r.state is TrialState.COMPLETE for r in state.records.values()) == 2
    assert any("FAILED" in x for x in lines)
    assert study.trials[0].state.name == "FAIL"


def test_the_same_seed_proposes_the_same_configurations_whatever_the_timing(tmp_path, setup):
    runs = [_search(tmp_path / str(i), setup, budget=4, concurrency=2, seed=3)[2] for i in range(2)]
    proposals = [[r.choices for _, r in sorted(state.records.items())] for state in runs]
    assert proposals[0] == proposals[1]


def test_a_latency_target_skips_what_the_latency_model_predicts_over_it(tmp_path, setup):
    """Proposals predicted over --target-latency-ms (plus the slack for the model's error) are never built: recorded
    SKIPPED with the prediction, not counted in the budget, told to the study as pruned. (How well the model predicts
    is benchmarks/latency_model.py's subject; this toy network's layers take microseconds.)"""
    from autocompress.engine.policies import TARGET_SLACK
    from autocompress.latency_model.model import LatencyTable
    from autocompress.latency_model.predict import build_predictor

    model, splits, space = setup
    executor = InProcessExecutor(model, splits, measure=lambda b: {})
    predictor, _ = build_predictor(model, splits.val.images(1), space, LatencyTable(), executor.time_graphs,
                                   reduce_range=False, log=lambda s: None)
    executor.close()
    # (not the unpruned fp32 model: the FP32 baseline built it, so a proposal of it reuses that result, unjudged; on
    # this toy network which uniform model the table times slowest depends on the host's load)
    uniform = sorted((space.uniform(r, p) for r in (0.0, 0.5) for p in ("fp32", "int8") if (r, p) != (0.0, "fp32")),
                     key=predictor.predict)
    fast, slow = predictor.predict(uniform[0]), predictor.predict(uniform[-1])
    assert slow > fast
    target = (fast + slow) / 2 / (1 + TARGET_SLACK)  # between the two, slack included
    scheduler, study, state, lines = _search(tmp_path, setup, budget=1, enqueue=[uniform[-1], uniform[0]],
                                             predictor=predictor, target_ms=target)
    recs = state.records
    assert recs[0].state is TrialState.SKIPPED and "over the target" in recs[0].error and recs[0].artifact is None
    assert recs[0].predicted_ms == pytest.approx(slow, abs=1e-4)  # predicted before anything was built
    assert study.trials[0].state.name == "PRUNED"
    assert any(x.startswith("trial 0: skipped: predicted") for x in lines)
    # a budget of 1: the skipped proposal did not count, the next one was built
    assert len(recs) == 2 and recs[1].state is TrialState.COMPLETE and recs[1].predicted_ms == pytest.approx(fast)


def _finished(trial: int, ms: float, halfway: float | None, **kw) -> TrialRecord:
    art = ArtifactFigures(val_accuracy=99.0, test_accuracy=99.0, torch_test_accuracy=99.0, size_bytes=1000, sha256="",
                          onnx="", int8_requested=0, int8_on_integer_kernel=0, kernels="")
    return TrialRecord(trial, TrialState.COMPLETE, {}, artifact=art, latency=LatencyFigures(ms, ms, ms, 50),
                       halfway_accuracy=halfway, **kw)


def test_the_rung_is_set_by_the_best_halfway_accuracy_among_finished_trials_at_least_as_fast():
    """--multi-fidelity's rule: a trial is held to the halfway accuracy (less the margin) of finished trials measured
    at least as fast as it is predicted; a slower, more accurate trial does not count against it."""
    fast, slow = _finished(0, 0.20, 97.0), _finished(1, 0.30, 99.5)
    assert rung([fast, slow], predicted=0.25, margin=1.0) == Rung(96.0, 0, 0.20, 97.0)
    assert rung([fast, slow], predicted=0.20, margin=1.0).trial == 0  # as fast counts
    assert rung([fast, slow], predicted=0.35, margin=1.0) == Rung(98.5, 1, 0.30, 99.5)
    assert rung([fast, slow], predicted=0.19, margin=1.0) is None  # nothing finished is as fast
    assert rung([fast, slow], predicted=None, margin=1.0) is None  # no prediction: the trial runs in full
    # what did not fine-tune on this schedule, or has no halfway figure, sets no bar
    others = [_finished(2, 0.1, 100.0, duplicate_of=0), _finished(3, 0.1, 100.0, reused="baseline-int8"),
              _finished(4, 0.1, None), TrialRecord(5, TrialState.STOPPED, {}, halfway_accuracy=100.0)]
    assert rung(others, predicted=0.25, margin=1.0) is None
    assert rung([*others, fast], predicted=0.25, margin=1.0).trial == 0
    # recorded on disk, and a row written before the field existed still loads
    row = fast.to_row()
    assert row["halfway_accuracy"] == 97.0 and TrialRecord.from_row(row) == fast
    del row["halfway_accuracy"]
    assert TrialRecord.from_row(row).halfway_accuracy is None


def test_multi_fidelity_stops_a_trial_a_finished_trial_as_fast_beat_halfway(tmp_path, setup):
    """Every trial fine-tunes (8 epochs) and checks its accuracy after 4. Trial 2 is the first proposed after the
    study heard of trial 0 (at concurrency 1, trial 1 is proposed while trial 0 is being measured), so it is held to
    trial 0's halfway accuracy less the margin when the latency model (real, timed on this host) predicts it no
    faster than trial 0 measured; it learns nothing, so it stops: STOPPED naming trial 0, its halfway accuracy
    recorded, told to Optuna as pruned, counted in the budget."""
    from autocompress.latency_model.model import LatencyTable
    from autocompress.latency_model.predict import build_predictor

    model, splits, space = setup
    executor = InProcessExecutor(model, splits, measure=lambda b: {})
    predictor, _ = build_predictor(model, splits.val.images(1), space, LatencyTable(), executor.time_graphs,
                                   reduce_range=False, log=lambda s: None)
    executor.close()
    # trial 0 the fastest on this toy (pruned fp32), trial 2 the slowest (pruned int8: its Quantize/Dequantize cost
    # more than its microseconds of convolution)
    configs = [space.uniform(0.5, "fp32"), space.uniform(0.0, "int8"), space.uniform(0.5, "int8")]
    bars: list = []
    _, study, state, lines = _search(tmp_path, setup, budget=3, enqueue=configs, predictor=predictor,
                                     finetune=TrainConfig(epochs=8, lr=0.3, batch_size=8, kd_alpha=0.0),
                                     multi_fidelity=1.0, bars=bars, hopeless=configs[2])
    recs = state.records
    assert len(recs) == 3 and all(r.halfway_accuracy is not None and 0 <= r.halfway_accuracy <= 100
                                  for r in recs.values())
    assert recs[0].state is TrialState.COMPLETE and recs[1].state is TrialState.COMPLETE
    assert recs[0].halfway_accuracy > 50  # learnt (25% is chance), so the hopeless trial falls short by far
    assert bars[:2] == [None, None]
    if recs[0].latency.median_ms > recs[2].predicted_ms:
        pytest.skip(f"this host measured trial 0 ({recs[0].latency.median_ms:.4f} ms) slower than trial 2 was "
                    f"predicted ({recs[2].predicted_ms:.4f} ms): the toy's layers take microseconds")
    assert bars[2] == pytest.approx(recs[0].halfway_accuracy - 1.0)
    stopped = recs[2]
    assert stopped.state is TrialState.STOPPED and stopped.halfway_accuracy < bars[2] and stopped.artifact is None
    assert stopped.error == (f"stopped halfway: val {stopped.halfway_accuracy:.2f}% after 4 of 8 fine-tune epochs; "
                             f"trial 0, measured {recs[0].latency.median_ms:.3f} ms <= predicted "
                             f"{stopped.predicted_ms:.3f} ms, had {recs[0].halfway_accuracy:.2f}% then (more than 1 "
                             "points better)")
    assert study.trials[2].state.name == "PRUNED"
    assert lines[-1].startswith("trial 2: STOPPED: stopped halfway")


def test_screening_skips_a_proposal_predicted_slower_than_a_measured_model_that_covers_it(tmp_path, setup):
    """Uniform int8 has FP32's channels at lower precision: if the latency model (real, timed on this host) predicts it
    more than the slack slower than FP32 measured, it is skipped unbuilt, naming the FP32 baseline, not counted in the
    budget, told to the study as pruned; with screening off the same proposal is built."""
    from autocompress.latency_model.model import LatencyTable
    from autocompress.latency_model.predict import build_predictor
    from autocompress.latency_model.screen import SCREEN_SLACK

    model, splits, space = setup
    executor = InProcessExecutor(model, splits, measure=lambda b: {})
    predictor, _ = build_predictor(model, splits.val.images(1), space, LatencyTable(), executor.time_graphs,
                                   reduce_range=False, log=lambda s: None)
    executor.close()
    int8 = space.uniform(0.0, "int8")
    _, study, state, lines = _search(tmp_path / "on", setup, budget=1, enqueue=[int8], predictor=predictor,
                                     screen=True)
    fp32_ms, first = state.baselines["fp32"].latency.median_ms, state.records[0]
    if first.predicted_ms <= fp32_ms * (1 + SCREEN_SLACK):
        pytest.skip(f"on this host uniform int8 is predicted {first.predicted_ms:.4f} ms, within the slack of FP32's "
                    f"measured {fp32_ms:.4f} ms: nothing to screen")
    assert first.state is TrialState.SKIPPED and first.artifact is None
    assert first.error == (f"skipped: predicted {first.predicted_ms:.3f} ms, slower than baseline fp32 "
                           f"({fp32_ms:.3f} ms measured), which keeps at least its channels, each layer at least as "
                           "precise")
    assert study.trials[0].state.name == "PRUNED" and any(x.startswith("trial 0: skipped") for x in lines)
    # a budget of 1: the skipped proposal did not count, the next one was built
    assert len(state.records) >= 2 and state.records[max(state.records)].state is TrialState.COMPLETE
    _, _, off, _ = _search(tmp_path / "off", setup, budget=1, enqueue=[int8], predictor=predictor, screen=False)
    assert off.records[0].state is TrialState.COMPLETE
