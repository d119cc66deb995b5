"""The funnel's sampler: evolution within each latency target, outwards from the uniform ladder.

Drawn at random, per-layer choices land mostly over the slowest target (half the layers left fp32 is slower than int8
PTQ) and seldom in the fast ones, so a sampler that learns from scores alone spends most of the funnel on candidates
it must throw away (docs/pipeline.md, "The funnel's sampler"). This one proposes for one target at a time, in turn:
a child of that target's best-scored candidates (the uniform rung and the scan's picks at first), a few choices
changed, then moved by the measured latency model's predictions until it is predicted within the target. The same
search as MetaPruning's and EagleEye's (mutation and crossover of scored candidates under a constraint), with
measured latency for the constraint.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from autocompress.space import DROP

__all__ = ["TargetEvolution"]

ELITE = 6  # the best-scored models of a target that parent its children
REPAIR_STEPS = 64  # moves tried to bring a child within its target
NEW_TRIES = 8  # children made until one is new (its choices not proposed before)


class TargetEvolution(BaseSampler):
    """Proposes every candidate for a target (trial number modulo the targets): the child of a tournament between
    two of that target's `ELITE` best models (lowest loss, the study's first objective; half the time the next
    slower target's), crossed with another one half the time, 1-3 choices changed (a ratio by one step, a precision
    or a block's choice anew), then repaired: moves that lower its predicted latency, at random, until it is within
    the target; made again (up to `NEW_TRIES` times) while its choices are an earlier proposal's.

    `distributions`: the space's (engine/study.distributions); `predict`: params -> predicted ms; `ladder`: the
    funnel's engine/scoring.Ladder (its `targets` and `target_of`, which places a candidate in its bin)."""

    def __init__(self, distributions: dict[str, CategoricalDistribution], predict: Callable[[dict], float],
                 ladder, *, seed: int = 0) -> None:
        self._dists = dict(distributions)
        self._predict = predict
        self._ladder = ladder
        self._rng = np.random.default_rng(seed)
        self._fallback = RandomSampler(seed=seed)
        self._seen: set[tuple] = set()  # the choices of every proposal so far: a child is made anew until it is new
        self._n_seen = 0  # trials read into _seen

    # ------------------------------------------------------------------------------------------------ optuna's side

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._dists)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        target = trial.number % len(self._ladder.targets)
        earlier = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
        self._note(earlier)
        parents = self._elite([t for t in earlier if t.state == TrialState.COMPLETE], target)
        if not parents:
            return {}  # nothing scored yet: every choice at random (sample_independent)
        for _ in range(NEW_TRIES):
            child = self._repair(self._mutate(self._cross(parents)), target)
            if self._key(child) not in self._seen:
                break
        return child

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    # ---------------------------------------------------------------------------------------------------- the steps

    def _key(self, params: dict) -> tuple:
        return tuple(params.get(k) for k in self._dists)

    def _note(self, earlier: list[FrozenTrial]) -> None:
        """Every proposal before this one (each whole by now: a batch's trials are asked one after another)."""
        for t in earlier[self._n_seen:]:
            self._seen.add(self._key(t.params))
        self._n_seen = len(earlier)

    def _elite(self, scored: list[FrozenTrial], target: int) -> list[dict]:
        """The best-scored params of `target`, or half the time (and whenever it has none yet) of the nearest slower
        target that has any: the repair brings their children down into `target` (it only ever speeds a child up),
        so good models of a slower target seed the faster ones. With no slower one, the nearest faster one's."""
        by_target: dict[int, list[FrozenTrial]] = {}
        for t in scored:
            if t.values is None or len(t.values) < 2 or not set(self._dists) <= set(t.params):
                continue
            placed = self._ladder.target_of(t.values[1])
            if placed is not None:
                by_target.setdefault(placed, []).append(t)
        slower = [i for i in by_target if i < target]
        if slower and (target not in by_target or self._rng.random() < 0.5):
            source = max(slower)
        elif target in by_target:
            source = target
        elif by_target:
            source = min(by_target)
        else:
            return []
        best: dict[tuple, dict] = {}  # one per model: params that build the same model score the same
        for t in sorted(by_target[source], key=lambda t: (t.values[0], t.number)):
            best.setdefault((t.values[0], t.values[1]), dict(t.params))
            if len(best) == ELITE:
                break
        return list(best.values())

    def _pick(self, parents: list[dict]) -> dict:
        i, j = self._rng.integers(len(parents), size=2)
        return parents[min(i, j)]  # parents are best first: the better of two drawn

    def _cross(self, parents: list[dict]) -> dict:
        a = self._pick(parents)
        if len(parents) < 2 or self._rng.random() < 0.5:
            return dict(a)
        b = self._pick(parents)
        return {k: (a[k] if self._rng.random() < 0.5 else b[k]) for k in self._dists}

    def _mutate(self, params: dict) -> dict:
        names = list(self._dists)
        for i in self._rng.choice(len(names), size=min(len(names), int(self._rng.integers(1, 4))), replace=False):
            params[names[i]] = self._changed(names[i], params[names[i]])
        return params

    def _changed(self, name: str, value: Any) -> Any:
        """A ratio one step either way (the way there is, at either end); any other choice anew."""
        choices = list(self._dists[name].choices)
        if name.startswith("prune:"):
            i = choices.index(value)
            steps = [j for j in (i - 1, i + 1) if 0 <= j < len(choices)]
            return choices[steps[int(self._rng.integers(len(steps)))]] if steps else value
        others = [c for c in choices if c != value]
        return others[int(self._rng.integers(len(others)))] if others else value

    def _repair(self, params: dict, target: int) -> dict:
        """Moves that lower the predicted latency, tried at random, until `params` is within `target` (or the moves
        run out: the funnel then skips it as over the ladder, or places it in a slower target)."""
        ms, names = self._predict(params), list(self._dists)
        for _ in range(REPAIR_STEPS):
            if self._within(ms, target):
                break
            name = names[int(self._rng.integers(len(names)))]
            trial = {**params, name: self._faster_choice(name, params[name])}
            trial_ms = self._predict(trial) if trial[name] != params[name] else ms
            if trial_ms < ms:
                params, ms = trial, trial_ms
        return params

    def _within(self, ms: float, target: int) -> bool:
        placed = self._ladder.target_of(ms)
        return placed is not None and placed >= target

    def _faster_choice(self, name: str, value: Any) -> Any:
        """The next step towards speed a choice offers: a ratio one step up, a block dropped, another precision
        (the latency model says whether it is faster)."""
        choices = list(self._dists[name].choices)
        if name.startswith("prune:"):
            return choices[min(choices.index(value) + 1, len(choices) - 1)]
        if name.startswith("depth:"):
            return DROP
        return self._changed(name, value)
