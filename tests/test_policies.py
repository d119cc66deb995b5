"""The trial loop's policies (autocompress/engine/policies.py), each on its own: plain objects, fake records and a
fake predictor; no Ray, no study, nothing built."""

from __future__ import annotations

import json

from autocompress.config import SearchConfig
from autocompress.engine.policies import (
    TARGET_SLACK,
    Bar,
    Candidate,
    EarlyStop,
    FidelityPolicy,
    Heard,
    HigherBar,
    LatencyTargetGate,
    MultiFidelity,
    ProposalGate,
    Rung,
    ScreenGate,
    WarmStart,
    policies_for,
)
from autocompress.engine.scheduler import Limits, Scheduler
from autocompress.engine.state import LatencyBook, RunState
from autocompress.latency_model.screen import SCREEN_SLACK
from autocompress.pipeline.trial import StoppedEarly
from autocompress.results.records import Allocated, ArtifactFigures, LatencyFigures, TrialRecord, TrialState
from autocompress.results.rundir import RunDir
from autocompress.space import GroupChoice, LayerChoice, SearchSpace
from autocompress.space.keys import model_key


def _key(kept: dict[str, int], precision: dict[str, str]) -> str:
    return json.dumps({"kept": kept, "precision": precision}, sort_keys=True)


def _finished(trial: int, ms: float, halfway: float | None, choices: dict | None = None, **kw) -> TrialRecord:
    art = ArtifactFigures(val_accuracy=99.0, test_accuracy=99.0, torch_test_accuracy=99.0, size_bytes=1000, sha256="",
                          onnx="", int8_requested=0, int8_on_integer_kernel=0, kernels="")
    return TrialRecord(trial, TrialState.COMPLETE, choices or {}, artifact=art, latency=LatencyFigures(ms, ms, ms, 50),
                       halfway_accuracy=halfway, **kw)


def _space() -> SearchSpace:
    return SearchSpace(
        groups=[GroupChoice("a", 32, ("a",), [0.0, 0.25, 0.5, 0.75], [32, 24, 16, 8]),
                GroupChoice("b", 32, ("b",), [0.0, 0.25, 0.5, 0.75], [32, 24, 16, 8])],
        layers=[LayerChoice("a", ["fp32", "int8"]), LayerChoice("b", ["fp32", "int8"])],
        round_to=8, min_channels=8)


FULL_FP32 = _key({"a": 32, "b": 32}, {"a": "fp32", "b": "fp32"})
HALF_INT8 = _key({"a": 16, "b": 16}, {"a": "int8", "b": "int8"})
STOPPED = StoppedEarly(val_accuracy=80.5, epochs_done=3, threshold=90.0, epochs_planned=6)


# ---------------------------------------------------------------------------------------------- proposal gates
def test_the_base_gate_builds_everything():
    assert ProposalGate().verdict(Candidate(0, {}, HALF_INT8, predicted=99.0), Heard()) is None


def test_a_proposal_predicted_over_the_target_beyond_the_slack_is_skipped_with_its_figures():
    gate = LatencyTargetGate(1.0)
    assert TARGET_SLACK == 0.15
    assert gate.verdict(Candidate(0, {}, HALF_INT8, predicted=1.2), Heard()) == (
        "skipped: predicted 1.200 ms, over the target 1 ms")
    assert gate.verdict(Candidate(0, {}, HALF_INT8, predicted=1.1), Heard()) is None  # within the slack: built
    assert gate.verdict(Candidate(0, {}, HALF_INT8, predicted=1.15), Heard()) is None  # at the slack: built
    assert gate.verdict(Candidate(0, {}, HALF_INT8, predicted=None), Heard()) is None  # no prediction: built
    assert LatencyTargetGate(0.25).verdict(Candidate(0, {}, HALF_INT8, predicted=0.5), Heard()) == (
        "skipped: predicted 0.500 ms, over the target 0.25 ms")


def test_screening_names_the_measured_model_that_covers_the_proposal():
    heard = Heard(measured=((FULL_FP32, "fp32", 1.0), (HALF_INT8, 3, 0.4)))
    proposal = _key({"a": 8, "b": 16}, {"a": "int8", "b": "int8"})  # fewer channels than trial 3, as precise
    assert ScreenGate().verdict(Candidate(5, {}, proposal, predicted=0.6), heard) == (
        "skipped: predicted 0.600 ms, slower than trial 3 (0.400 ms measured), which keeps at least its channels, "
        "each layer at least as precise")
    # only FP32 covers a proposal with an fp32 layer
    mixed = _key({"a": 8, "b": 16}, {"a": "fp32", "b": "int8"})
    assert ScreenGate().verdict(Candidate(5, {}, mixed, predicted=1.5), heard) == (
        "skipped: predicted 1.500 ms, slower than baseline fp32 (1.000 ms measured), which keeps at least its "
        "channels, each layer at least as precise")
    # within the slack of the covering model, with no prediction, or with nothing heard of: built
    assert ScreenGate().verdict(Candidate(5, {}, proposal, predicted=0.4 * (1 + SCREEN_SLACK) - 1e-6), heard) is None
    assert ScreenGate().verdict(Candidate(5, {}, proposal, predicted=None), heard) is None
    assert ScreenGate().verdict(Candidate(5, {}, proposal, predicted=0.6), Heard()) is None


def test_the_loop_tells_the_policies_only_what_the_study_has_heard_of(tmp_path):
    """Screening and the rungs judge from the baselines and the trials the study has been told of, not from trials
    that happen to have finished: a seed then skips and stops the same proposals whatever the timing."""
    space = _space()
    state = RunState(RunDir(tmp_path), meta={})
    fp32 = _finished(-1, 1.0, None, kind="baseline-fp32",
                     model_key=model_key(space, {"a": 0.0, "b": 0.0}, {"a": "fp32", "b": "fp32"}))
    state.baselines = {"fp32": fp32}
    choices = {"prune:a": 0.5, "prune:b": 0.5, "quant:a": "int8", "quant:b": "int8"}
    state.records = {0: _finished(0, 0.4, 95.0, choices=choices),
                     1: _finished(1, 0.3, 96.0, choices={**choices, "prune:a": 0.75})}
    scheduler = Scheduler(None, {}, space, None, state, Limits(), make_spec=None, latency=LatencyBook(None))
    scheduler.untold[1] = (None, state.records[1])  # finished, not yet told
    heard = scheduler._heard()
    assert [r.trial for r in heard.records] == [0]
    assert [(owner, ms) for _, owner, ms in heard.measured] == [("fp32", 1.0), (0, 0.4)]
    assert heard.measured[1][0] == model_key(space, *space.decode(choices))


# ---------------------------------------------------------------------------------------------- fidelity
def test_the_base_fidelity_policy_runs_every_trial_in_full():
    assert FidelityPolicy().bar(Candidate(0, {}, HALF_INT8, predicted=0.3), Heard()) is None
    assert HigherBar().bar(Candidate(0, {}, HALF_INT8, predicted=0.3), Heard()) is None


def test_early_stop_holds_every_trial_to_fp32_less_the_points():
    bar = EarlyStop(below=88.0, points=10.0).bar(Candidate(0, {}, HALF_INT8), Heard())
    assert bar == Bar(88.0, 10.0)
    assert bar.stopped_text(STOPPED) == ("stopped early: 80.50% validation accuracy (PyTorch) after 3 fine-tune "
                                         "epoch(s), below 90.00% (FP32 - 10 points)")


def test_a_rung_uses_only_finished_trials_as_fast_and_ignores_repeats_and_reused_baselines():
    fast, slow = _finished(0, 0.20, 97.0), _finished(1, 0.30, 99.5)
    copies = [_finished(2, 0.1, 100.0, duplicate_of=0), _finished(3, 0.1, 100.0, reused="baseline-int8"),
              _finished(4, 0.1, None), TrialRecord(5, TrialState.STOPPED, {}, halfway_accuracy=100.0)]
    policy = MultiFidelity(1.0)
    bar = policy.bar(Candidate(6, {}, HALF_INT8, predicted=0.25), Heard(records=(fast, slow, *copies)))
    assert bar == Bar(96.0, 1.0, Rung(96.0, 0, 0.20, 97.0), 0.25)  # the slower, more accurate trial 1 does not count
    assert policy.bar(Candidate(6, {}, HALF_INT8, predicted=0.35), Heard(records=(fast, slow))).rung.trial == 1
    assert policy.bar(Candidate(6, {}, HALF_INT8, predicted=0.25), Heard(records=tuple(copies))) is None
    assert policy.bar(Candidate(6, {}, HALF_INT8, predicted=None), Heard(records=(fast, slow))) is None
    assert bar.stopped_text(STOPPED) == (
        "stopped halfway: val 80.50% after 3 of 6 fine-tune epochs; trial 0, measured 0.200 ms <= predicted "
        "0.250 ms, had 97.00% then (more than 1 points better)")


def test_with_both_bars_the_higher_holds_and_a_tie_goes_to_the_rung():
    heard = Heard(records=(_finished(0, 0.20, 97.0),))  # a rung of 96.0 for anything predicted 0.2 ms or slower
    c = Candidate(1, {}, HALF_INT8, predicted=0.25)
    assert HigherBar((MultiFidelity(1.0), EarlyStop(90.0, 9.0))).bar(c, heard).threshold == 96.0
    assert HigherBar((MultiFidelity(1.0), EarlyStop(97.5, 1.5))).bar(c, heard) == Bar(97.5, 1.5)
    assert HigherBar((MultiFidelity(1.0), EarlyStop(96.0, 3.0))).bar(c, heard).rung is not None
    # no rung (nothing as fast): the early-stop bar alone
    assert HigherBar((MultiFidelity(1.0), EarlyStop(90.0, 9.0))).bar(
        Candidate(1, {}, HALF_INT8, predicted=0.1), heard) == Bar(90.0, 9.0)


def test_the_config_asks_for_its_gates_in_order_and_its_bars():
    gates, fidelity = policies_for(SearchConfig(target_latency_ms=2.0, early_stop_points=5.0,
                                                multi_fidelity_points=1.0), fp32_val=98.0)
    assert gates == (LatencyTargetGate(2.0), ScreenGate())
    assert fidelity == HigherBar((MultiFidelity(1.0), EarlyStop(93.0, 5.0)))
    gates, fidelity = policies_for(SearchConfig(screen=False), fp32_val=98.0)
    assert gates == () and fidelity.bar(Candidate(0, {}, HALF_INT8, predicted=1.0), Heard()) is None
    assert policies_for(SearchConfig(sampler="grid"), fp32_val=98.0)[0] == ()  # the grid builds every configuration


# ---------------------------------------------------------------------------------------------- warm start
SENS = {"base": 98.0, "chance": 10.0,
        "prune": {"a": {"0.25": 97.5, "0.5": 95.0, "0.75": 12.0}, "b": {"0.25": 90.0, "0.5": 60.0, "0.75": 30.0}},
        "quant": {"a": {"int8": 97.8}, "b": {"int8": 96.0}}}


class _Predictor:
    """Group a's channels cost twice group b's; int8 halves a layer."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def predict(self, params: dict) -> float:
        ratios, precisions = self.space.decode(params)
        return sum(w * (1 - ratios[g]) * (0.5 if precisions[g] == "int8" else 1.0)
                   for g, w in (("a", 2.0), ("b", 1.0)))


def test_the_warm_start_puts_the_allocated_configurations_first_each_once():
    space = _space()
    scan_picks = [{"prune:a": 0.25, "prune:b": 0.0, "quant:a": "int8", "quant:b": "fp32"},
                  {"prune:a": 0.5, "prune:b": 0.25, "quant:a": "int8", "quant:b": "fp32"}]
    start = WarmStart(None, log=lambda s: None)
    assert start.allocate(space, SENS) == []  # no latency model: nothing allocated
    assert start.configs(space, SENS, []) == scan_picks
    mine = {"prune:a": 0.25, "prune:b": 0.5, "quant:a": "int8", "quant:b": "int8"}
    allocated = [Allocated(mine, 0.9, 0.5, 1.0), Allocated(scan_picks[1], 0.8, 0.25, 0.9)]
    assert start.configs(space, SENS, allocated) == [mine, scan_picks[1], scan_picks[0]]
    # with a latency model: what it allocates goes first, and no configuration twice
    start = WarmStart(_Predictor(space), log=lambda s: None)
    allocated = start.allocate(space, SENS)
    assert allocated and all(a.predicted_ms <= a.like_ms for a in allocated)
    configs = start.configs(space, SENS, allocated)
    assert configs[:len(allocated)] == [a.params for a in allocated]
    assert len({json.dumps(c, sort_keys=True) for c in configs}) == len(configs)
    assert all(p in configs for p in scan_picks)


def test_a_failing_allocation_leaves_the_scan_picks_and_says_so():
    class Broken:
        def predict(self, params: dict) -> float:
            raise RuntimeError("no table")

    lines: list[str] = []
    start = WarmStart(Broken(), log=lines.append)
    assert start.allocate(_space(), SENS) == []
    assert lines and "allocation with the latency model failed" in lines[0] and "no table" in lines[0]
