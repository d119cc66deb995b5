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

from autocompress.config import LatencyConfig
from autocompress.measure.latency import measure_latency
from autocompress.pipeline.prune import find_groups
from autocompress.pipeline.trial import TrialSpec
from autocompress.results.records import TrialState
from autocompress.results.rundir import RunDir
from autocompress.search.baselines import baseline_spec, run_baselines
from autocompress.search.executor import InProcessExecutor
from autocompress.search.layers import quantizable_layers
from autocompress.search.scheduler import Limits, Scheduler, model_key
from autocompress.search.state import LatencyBook, RunState
from autocompress.search.study import distributions
from autocompress.space import SpaceFile, build_space
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


def _search(tmp_path, setup, *, budget: int, concurrency: int = 1, seed: int = 0, enqueue=(), broken=None,
            predictor=None, target_ms=None):
    """A search of `budget` trials; `broken` params get a precision the quantizer rejects (a failing trial)."""
    model, splits, space = setup
    executor = InProcessExecutor(model, splits, concurrency=concurrency,
                                 measure=lambda b: measure_latency(b, splits.input_shape, LIGHT).as_dict())
    state = RunState(RunDir(tmp_path), meta={})
    book = LatencyBook(None)

    def make_spec(params: dict) -> TrialSpec:
        ratios, precisions = space.decode(params)
        if broken is not None and all(params.get(k) == v for k, v in broken.items()):
            precisions = {n: "int3" for n in precisions}
        return TrialSpec(ratios, precisions, None, space.round_to, space.min_channels)

    run_baselines(["fp32"], state=state, executor=executor, space=space, latency=book,
                  make_spec=lambda b: baseline_spec(b, space, None, 0, False), concurrency=1, log=lambda s: None)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=seed))
    for params in enqueue:
        study.enqueue_trial(params)
    lines: list[str] = []
    scheduler = Scheduler(study, distributions(space), space, executor, state,
                          Limits(concurrency=concurrency, trials=budget),
                          make_spec=make_spec, latency=book, line=lines.append, predictor=predictor,
                          target_ms=target_ms)
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
    from autocompress.measure.latency_model import LatencyTable
    from autocompress.search.predict import build_predictor
    from autocompress.search.scheduler import TARGET_SLACK

    model, splits, space = setup
    executor = InProcessExecutor(model, splits, measure=lambda b: {})
    predictor, _ = build_predictor(model, splits.val.images(1), space, LatencyTable(), executor.time_graphs,
                                   reduce_range=False, log=lambda s: None)
    executor.close()
    uniform = sorted((space.uniform(r, p) for r in (0.0, 0.5) for p in ("fp32", "int8")), key=predictor.predict)
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
