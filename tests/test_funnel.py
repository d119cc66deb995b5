"""The funnel (engine/funnel.py): its ladder, its promotion, its book, and whole runs that score real candidates of a
small trained CNN (pruned, fake-quantized, BatchNorm recalibrated) in this process, resumed without re-scoring."""

from __future__ import annotations

import json
import math
import threading

import pytest
import torch

from autocompress.config import FunnelConfig, TrainConfig
from autocompress.engine.scoring import Funnel, Ladder, funnel_sampler, open_funnel_study, uniform_ladder
from autocompress.engine.shortlist import ShortStage, gain_over_uniform, promote
from autocompress.pipeline.finetune import train
from autocompress.pipeline.prune import find_groups, kept_channels
from autocompress.pipeline.score import ScoreSettings, ScoreSpec
from autocompress.pipeline.trial import TrialSpec, run_short
from autocompress.results.funnel import FunnelBook, Scored
from autocompress.runtime.executor import InProcessExecutor
from autocompress.space import SpaceFile, build_space
from autocompress.space.keys import model_key
from autocompress.tasks import load_dataset
from tests.test_score import SmallNet

SETTINGS = ScoreSettings(bn_images=128, val_images=200)


def test_the_ladder_spans_int8_ptq_to_the_fastest_evenly_in_log_latency():
    ladder = Ladder.between(1.0, 0.0625, 4)
    assert ladder.targets == (1.0, 0.5, 0.25, 0.125)  # the fastest target's bin reaches down to the fastest, 0.0625
    assert ladder.target_of(1.1) == 0  # over the slowest target, within the model's error
    assert ladder.target_of(1.2) is None and ladder.target_of(None) is None
    assert ladder.target_of(0.6) == 0 and ladder.target_of(0.5) == 1 and ladder.target_of(0.3) == 1
    assert ladder.target_of(0.1) == 3 and ladder.target_of(0.0625) == 3
    assert Ladder.between(0.3, 0.4, 4).targets == (0.3,)  # nothing faster to reach: one target


def _row(number: int, target: int | None, loss: float | None, key: str | None = None) -> Scored:
    return Scored(number, {"n": number}, key or f"k{number}", 1.0, target, accuracy=None if loss is None else 50.0,
                  loss=loss)


def test_promotion_takes_each_targets_best_distinct_models_best_of_every_target_first():
    rows = [_row(0, 0, 0.9), _row(1, 0, 0.2), _row(2, 0, 0.1, key="k1"),  # 2 builds the model of 1
            _row(3, 1, 0.5), _row(4, 1, 0.4), _row(5, 1, None), _row(6, None, None), _row(7, 2, 0.3)]
    best = promote(rows, 3, 2)
    assert [s.number for s in best] == [2, 4, 7, 0, 3]  # target 0's two, then 1's, then 2's one; 1 is 2's model


def test_promotion_by_gain_over_uniform_prefers_what_beats_the_uniform_rung_at_the_same_latency():
    def row(number, target, ms, loss, origin="sampled"):
        return Scored(number, {"n": number}, f"k{number}", ms, target, origin, accuracy=50.0, loss=loss)

    uniform = [row(0, 1, 1.0, 1.0, "uniform"), row(1, 0, 2.0, 0.5, "uniform"), row(2, 0, 2.2, 0.7, "uniform")]
    slow_edge = row(3, 0, 1.9, 0.55)  # the target's lowest loss, but the uniform rung beside it is as good
    between = row(4, 0, 1.5, 0.6)  # halfway (in log-latency) between the rungs, well under their line
    fast = row(5, 1, 0.5, 1.2)  # faster than every rung: measured against the fastest
    gain = gain_over_uniform(uniform + [slow_edge, between, fast])
    assert gain(between) == pytest.approx(1.0 - 0.5 * math.log(1.5) / math.log(2.0) - 0.6)
    assert gain(slow_edge) < 0 < gain(between) and gain(fast) == pytest.approx(-0.2)
    assert gain(uniform[0]) == gain(uniform[1]) == 0.0  # rung 2 is off the front: slower and worse than rung 1

    def by_gain(s):
        return (gain(s), *s.rank_key())

    best = promote([slow_edge, between, fast], 2, 1, key=by_gain, order=gain)
    assert [s.number for s in best] == [4, 5]  # target 0's best by gain; the higher gain first
    assert [s.number for s in promote([slow_edge, between], 1, 1)] == [3]  # by the score alone: the slow edge
    assert gain_over_uniform([slow_edge])(slow_edge) == 0.0  # no rung scored: no gain


def test_the_book_keeps_every_whole_line_and_ignores_one_a_kill_cut_short(tmp_path):
    book = FunnelBook.open(tmp_path / "funnel.jsonl")
    book.add([_row(0, 0, 0.5), _row(1, None, None)])
    with open(tmp_path / "funnel.jsonl", "a") as f:
        f.write(json.dumps(_row(2, 0, 0.4).to_row())[:30])  # the kill landed mid-line
    again = FunnelBook.open(tmp_path / "funnel.jsonl")
    assert sorted(again.rows) == [0, 1] and again.rows[0] == book.rows[0]
    assert again.built() == 1  # one over every target was never built


@pytest.fixture(scope="module")
def small():
    digits = load_dataset("digits", input_size=8, seed=0)
    torch.manual_seed(0)
    model = SmallNet()
    train(model, digits.train, settings=TrainConfig(epochs=10, lr=0.05), seed=0, augment="none")
    model.eval()
    spec = SpaceFile.model_validate({"prune": {"ratios": [0.0, 0.25, 0.5, 0.75], "round_to": 4, "min_channels": 4},
                                     "quantize": {"precisions": ["fp32", "int8"]}})
    space = build_space(spec, find_groups(model, digits.val.images(1)), ["conv1", "conv2", "conv3", "fc"])
    return model, digits, space


class KeptChannels:
    """A stand-in for the measured latency model in these tests: milliseconds proportional to the channels kept,
    int8 layers half as slow. The funnel's mechanics do not depend on how a latency is predicted."""

    def __init__(self, space) -> None:
        self.space = space

    def predict(self, params: dict) -> float:
        ratios, precisions = self.space.decode(params)
        ms = 0.0
        for g in self.space.groups:
            k = kept_channels(g.channels, ratios[g.name], round_to=self.space.round_to,
                              min_channels=self.space.min_channels)
            ms += k * (0.5 if all(precisions.get(m) == "int8" for m in g.members if m in precisions) else 1.0)
        return round(ms / 80, 4)


class CountingExecutor(InProcessExecutor):
    """The real in-process executor, also noting which models it was asked to score."""

    def __init__(self, *args, space, **kw) -> None:
        super().__init__(*args, **kw)
        self.space, self.asked = space, []

    def score(self, specs, settings):
        self.asked += [model_key(self.space, s.ratios, s.precisions, s.criterion) for s in specs]
        return super().score(specs, settings)


def _funnel(small, run, n: int, executor=None, seed: int = 0) -> Funnel:
    model, digits, space = small
    predictor = KeptChannels(space)
    ladder = Ladder.between(predictor.predict(space.uniform(0.0, "fp32")), predictor.predict(space.uniform(1, "int8")),
                            3)
    book = FunnelBook.open(run / "funnel.jsonl")
    sampler = funnel_sampler(FunnelConfig().sampler, seed, n, space, predictor, ladder)  # the default's
    study = open_funnel_study(run / "funnel.log", "f", sampler=sampler,
                              first=[(p, "uniform") for p in uniform_ladder(space)], book=book)
    executor = executor or CountingExecutor(model, digits, measure=None, space=space)

    def spec_of(params):
        ratios, precisions = space.decode(params)
        return ScoreSpec(ratios, precisions, "l2", space.round_to, space.min_channels, False)

    return Funnel(space, predictor, executor, ladder, book, study, spec_of, SETTINGS, n, workers=1, log=lambda s: None)


def test_a_funnel_scores_real_candidates_over_the_ladder_and_a_resumed_one_scores_nothing_twice(small, tmp_path):
    model, digits, space = small
    first = _funnel(small, tmp_path, 12)
    first.run()
    rows = first.book.rows
    assert first.book.built() >= 12
    uniform = [s for s in rows.values() if s.origin == "uniform"]
    assert len(uniform) == 4 and all(s.scored for s in uniform)  # the uniform ladder competes, scored first
    by_ratio = {s.params["prune:conv1"]: s for s in uniform}
    assert by_ratio[0.0].accuracy > 90 and by_ratio[0.75].accuracy < by_ratio[0.0].accuracy  # real scores
    assert {s.target for s in rows.values() if s.scored} == {0, 1, 2}  # the whole ladder is reached
    assert len(first.executor.asked) == len(set(first.executor.asked)) == first.book.built()  # each model once
    # resumed with a larger size: a new study object on the same journal and book goes on, scoring only new models
    again = _funnel(small, tmp_path, 20)
    again.run()
    assert again.book.built() >= 20 and set(again.book.rows) > set(rows)
    assert not set(again.executor.asked) & set(first.executor.asked)
    assert len(again.study.trials) == len(again.book.rows)  # every candidate the study asked for is in the book
    best = promote(list(again.book.rows.values()), 3, 1)
    assert [s.target for s in best] == [0, 1, 2]


def test_the_same_seed_proposes_the_same_candidates(small, tmp_path):
    runs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        f = _funnel(small, tmp_path / name, 10, seed=3)
        f.run()
        runs.append([(s.params, s.loss) for _, s in sorted(f.book.rows.items())])
    assert runs[0] == runs[1]


def test_a_candidate_that_cannot_be_scored_is_recorded_and_the_funnel_goes_on(small, tmp_path):
    model, digits, space = small
    f = _funnel(small, tmp_path, 6)
    real = f.spec_of

    def broken(params):  # a precision no layer can take: building this candidate raises in the scorer
        spec = real(params)
        return ScoreSpec(spec.ratios, {**spec.precisions, "conv2": "int3"}) if params.get("prune:conv1") == 0.5 \
            else spec

    f.spec_of = broken
    f.run()
    failed = [s for s in f.book.rows.values() if s.error.startswith("failed")]
    assert failed and all(not s.scored for s in failed)
    assert f.book.built() >= 6


class CountingShorts(InProcessExecutor):
    """The real in-process executor, also noting the short fine-tunes it was asked for."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.shorts = []

    def submit_short(self, spec):
        self.shorts.append(dict(spec.ratios))
        return super().submit_short(spec)


class HeldShorts(InProcessExecutor):
    """The real in-process executor, whose short fine-tunes start only once `release` is set."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.release = threading.Event()

    def submit_short(self, spec):
        def held():
            self.release.wait()
            return run_short(self.baseline, self.splits, spec, threads=self.threads)

        return self._trials.submit(held)


def test_short_fine_tunes_rank_the_shortlist_and_a_resumed_run_runs_none_twice(small, tmp_path):
    model, digits, space = small
    f = _funnel(small, tmp_path, 12)
    f.run()
    shortlist = promote(list(f.book.rows.values()), 3, 2)
    assert len(shortlist) >= 4 and {s.target for s in shortlist} == {0, 1, 2}

    def spec_of(params):
        ratios, precisions = space.decode(params)
        return TrialSpec(ratios, precisions, TrainConfig(epochs=1, lr=0.05), space.round_to, space.min_channels)

    executor = CountingShorts(model, digits, measure=None)
    ShortStage(executor, spec_of, 1, 600, f.book, log=lambda s: None).run(shortlist)
    assert len(executor.shorts) == len(shortlist)
    after = [f.book.rows[s.number] for s in shortlist]
    assert all(s.short_accuracy is not None and 0 <= s.short_accuracy <= 100 and s.short_seconds > 0 for s in after)
    # the book keeps them: a new one read from disk has the later lines, and runs nothing again
    book = FunnelBook.open(tmp_path / "funnel.jsonl")
    assert [book.rows[s.number].short_accuracy for s in shortlist] == [s.short_accuracy for s in after]
    again = CountingShorts(model, digits, measure=None)
    ShortStage(again, spec_of, 1, 600, book, log=lambda s: None).run(shortlist)
    assert again.shorts == []
    # the promoted one of each target is the shortlist's best after its short fine-tune
    best = promote(after, 3, 1, key=Scored.short_key)
    for s in best:
        assert s.short_accuracy == max(x.short_accuracy for x in after if x.target == s.target)


def test_a_short_fine_tune_that_fails_or_outlives_the_timeout_is_recorded_and_the_others_go_on(small, tmp_path):
    model, digits, space = small
    f = _funnel(small, tmp_path, 8)
    f.run()
    shortlist = promote(list(f.book.rows.values()), 3, 1)

    def spec_of(params):  # the first candidate cannot be built; the others fine-tune
        ratios, precisions = space.decode(params)
        if params == shortlist[0].params:
            precisions = {**precisions, "conv2": "int3"}
        return TrialSpec(ratios, precisions, TrainConfig(epochs=1, lr=0.05), space.round_to, space.min_channels)

    ShortStage(InProcessExecutor(model, digits, measure=None), spec_of, 1, 600, f.book, log=lambda s: None
               ).run(shortlist)
    rows = [f.book.rows[s.number] for s in shortlist]
    assert rows[0].short_error and rows[0].short_accuracy is None and rows[0].shortened
    assert all(r.short_accuracy is not None for r in rows[1:])
    # a fine-tune still running when its timeout has passed is recorded as late: one held back until the stage has
    # given up on it (a timeout of zero), so the check does not depend on how fast the machine runs it
    late = FunnelBook.open(tmp_path / "late.jsonl")
    late.add([Scored(s.number, s.params, s.key, s.predicted_ms, s.target, accuracy=s.accuracy, loss=s.loss)
              for s in shortlist[1:2]])
    executor = HeldShorts(model, digits, measure=None)
    ShortStage(executor, spec_of, 1, 0, late, log=lambda s: None).run(shortlist[1:2])
    assert "timeout" in late.rows[shortlist[1].number].short_error
    executor.release.set()
    executor.close()


def test_the_funnel_keeps_its_share_of_a_time_budget(small, tmp_path):
    """No scoring batch starts after the funnel's deadline, and no short fine-tune after the short stage's."""
    import time

    f = _funnel(small, tmp_path, 100_000)
    t0 = time.perf_counter()
    f.deadline = t0 + 2.0
    f.run()
    end = time.perf_counter()
    assert 0 < f.book.built() < 100_000 and end >= f.deadline
    per_model = max(s.seconds for s in f.book.rows.values() if s.scored)
    # a batch is 8 candidates (one worker): at most one batch after the deadline, with 2 s for asking and telling
    assert end - f.deadline <= 8 * per_model + 2.0, (end - f.deadline, per_model)
    model, digits, space = small
    executor = CountingShorts(model, digits, measure=None)
    shortlist = promote(list(f.book.rows.values()), 3, 2)
    ShortStage(executor, lambda p: None, 1, 600, f.book, deadline=time.perf_counter() - 1, log=lambda s: None
               ).run(shortlist)
    assert executor.shorts == [] and not any(f.book.rows[s.number].shortened for s in shortlist)


def test_the_trials_start_with_the_free_two_then_every_promoted_candidate(small):
    """The two fine-tuned uniform baselines (free), then the promoted ones, up to the trial budget; the scan's picks
    competed in the funnel and are not added."""
    from autocompress.engine.study import warm_start_configs

    space = small[2]
    promoted = [space.uniform(0.75, "int8"), space.uniform(0.25, "fp32")]
    first = warm_start_configs(space, [space.uniform(0.0, "int8")], 4, promoted=promoted)
    assert first == [space.uniform(0.5, "int8"), space.uniform(0.25, "int8"), *promoted]
    assert warm_start_configs(space, [], 3, promoted=promoted) == first[:3]


def test_the_short_fine_tunes_fit_in_half_a_trial_budget():
    """Per target: none beyond the promoted in a 3-trial search, 3 in a 12-trial one, two more than promoted
    without a trial budget; a shortlist given is kept."""
    from autocompress.config import FunnelConfig

    f = FunnelConfig()
    assert [(f.n_promoted(t), f.n_shortlisted(t)) for t in (3, 7, 12, 40, None)] == [
        (1, 1), (1, 2), (1, 3), (2, 4), (2, 4)]
    assert FunnelConfig(shortlist=5).n_shortlisted(3) == 5
