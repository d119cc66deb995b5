"""The funnel's sampler (engine/evolution.py) on a problem whose answer is known: groups that cost alike but differ
in how much pruning hurts them, layers whose int8 is faster. Proposals must land within the ladder's targets, every
target must get its share, and the best of each target must beat the uniform configuration there."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from autocompress.engine.evolution import TargetEvolution
from autocompress.engine.scoring import Ladder

RATIOS = [0.0, 0.25, 0.5, 0.75]
GROUPS = [f"g{i}" for i in range(8)]
HURT = {g: (1.0 if i % 2 else 0.02) for i, g in enumerate(GROUPS)}  # odd groups are sensitive, even ones not
DISTS = {**{f"prune:{g}": CategoricalDistribution(RATIOS) for g in GROUPS},
         **{f"quant:{g}": CategoricalDistribution(["fp32", "int8"]) for g in GROUPS}}


def latency(params: dict) -> float:
    return round(sum((1 - params[f"prune:{g}"]) * (0.4 if params[f"quant:{g}"] == "int8" else 1.0) for g in GROUPS), 4)


def loss(params: dict) -> float:
    return sum(HURT[g] * params[f"prune:{g}"] ** 2 + 0.01 * (params[f"quant:{g}"] == "int8") for g in GROUPS)


def uniform(r: float) -> dict:
    return {**{f"prune:{g}": r for g in GROUPS}, **{f"quant:{g}": "int8" for g in GROUPS}}


LADDER = Ladder.between(latency(uniform(0.0)), latency(uniform(0.75)), 4)


def run(sampler, n: int) -> list[tuple[dict, float, int | None]]:
    """A funnel's loop without the models: batches of 8 asked whole, each placed on the ladder by its latency and
    scored by `loss` (or pruned: over the ladder), then told whole. (params, loss, target) of every proposal."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    for r in RATIOS:
        study.enqueue_trial(uniform(r))
    out = []
    while len(out) < n:
        batch = [study.ask(DISTS) for _ in range(8)]
        for t in batch:
            ms = latency(t.params)
            target = LADDER.target_of(ms)
            if target is None:
                study.tell(t.number, state=TrialState.PRUNED)
            else:
                study.tell(t.number, [loss(t.params), ms])
            out.append((dict(t.params), loss(t.params), target))
    return out


def evolution(seed: int = 0) -> TargetEvolution:
    return TargetEvolution(DISTS, latency, LADDER, seed=seed)


@pytest.fixture(scope="module")
def proposals():
    return run(evolution(), 400)


def test_proposals_land_within_the_ladder_and_every_target_gets_its_share(proposals):
    placed = [t for _, _, t in proposals]
    assert sum(t is not None for t in placed) >= 0.9 * len(placed)
    for target in range(len(LADDER.targets)):
        assert placed.count(target) >= 0.15 * len(placed), (target, placed.count(target))
    # drawn at random (as NSGA-II's first generation is), most would land over the ladder or in its slowest target
    randomly = run(optuna.samplers.RandomSampler(seed=0), 400)
    assert sum(t is None or t == 0 for _, _, t in randomly) > 0.6 * len(randomly)


def test_each_targets_best_beats_the_uniform_configuration_there(proposals):
    best = {t: min(lo for _, lo, placed in proposals if placed == t) for t in range(len(LADDER.targets))}
    for r in RATIOS:
        target = LADDER.target_of(latency(uniform(r)))
        assert best[target] <= loss(uniform(r))
    # at uniform 50%'s target, pruning the insensitive groups more and the sensitive ones less: the optimum is 0.375
    # where the uniform is at 1.1 (8 seeds of 400 proposals: 0.375 six times, 0.5 twice; 400 random draws: 1.1)
    assert best[LADDER.target_of(latency(uniform(0.5)))] <= 0.5


def test_the_same_seed_proposes_the_same_candidates_and_another_seed_others():
    a, b, c = run(evolution(1), 48), run(evolution(1), 48), run(evolution(2), 48)
    assert [p for p, _, _ in a] == [p for p, _, _ in b]
    assert [p for p, _, _ in a] != [p for p, _, _ in c]
