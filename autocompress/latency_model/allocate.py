"""Configurations the latency model and the sensitivity scan propose together, before anything is fine-tuned.

Uniform pruning spends the same share of every group, though groups differ both in what they cost on this device
and in what removing them costs in accuracy. The allocation (in the spirit of HALP's latency-budgeted pruning)
starts from the unpruned int8 model and, one step at a time, prunes further the group that
saves the most predicted milliseconds per point the scan says that step loses; each step is a point of a path
from the unpruned model to the most pruned one. From the path it takes, for each uniform int8 configuration of
the space, the least pruned point predicted at least as fast: a model as fast as that uniform one (by the
device's own layer table) with its pruning placed where the scan says it hurts least.

The scan's figures are without a fine-tune (pruning one group alone can leave a network near chance and a
fine-tune wins it back), so they rank steps, never predict accuracy; the fine-tuned trial is the measurement.
"""

from __future__ import annotations

import math
from typing import Callable

from autocompress.results.records import Allocated
from autocompress.space import SearchSpace

__all__ = ["Allocated", "allocation_path", "allocated_configs", "allocate_guarded", "start_params"]

# A step the scan says costs nothing still has a cost: this floor (points) keeps the ranking finite, and among
# free steps prefers the one that saves the most time.
_MIN_COST = 0.05


def start_params(space: SearchSpace) -> dict:
    """Optuna params of the path's start: nothing pruned, every layer int8 where the space offers it, as in the
    uniform int8 configurations the path is compared with (the fine-tune is quantization-aware: a layer's int8
    cost without it says little)."""
    params = space.uniform(0.0, "int8")
    params.update({f"prune:{g.name}": min(g.ratios) for g in space.groups if len(g.ratios) > 1})
    return params


def _prune_cost(sens: dict, group: str, ratio: float) -> float:
    """Points the scan lost with `group` alone pruned by `ratio` (0 for no pruning, never negative)."""
    if ratio <= 0:
        return 0.0
    acc = sens["prune"].get(group, {}).get(str(ratio))
    return max(0.0, sens["base"] - acc) if acc is not None else float("inf")


def allocation_path(space: SearchSpace, sens: dict, predict: Callable[[dict], float]) -> list[tuple[dict, float]]:
    """(params, predicted ms) from `start_params` to every group at its largest ratio: each step moves the one
    group whose next ratio saves the most predicted ms per scan point lost. Only steps that save time are taken,
    so the predicted latency falls along the path."""
    params = start_params(space)
    groups = [g for g in space.groups if len(g.ratios) > 1]
    ms = predict(params)
    path = [(dict(params), ms)]
    while True:
        best: tuple[float, str, float, float] | None = None  # (ms saved per point, param, ratio, ms)
        for g in groups:
            key = f"prune:{g.name}"
            i = g.ratios.index(params[key])
            if i + 1 == len(g.ratios):
                continue
            nxt = g.ratios[i + 1]
            cost = _prune_cost(sens, g.name, nxt) - _prune_cost(sens, g.name, params[key])
            if not math.isfinite(cost):  # a ratio the scan has no figure for: not a step to rank
                continue
            step_ms = predict({**params, key: nxt})
            score = (ms - step_ms) / max(cost, _MIN_COST)
            if step_ms < ms and (best is None or score > best[0]):
                best = (score, key, nxt, step_ms)
        if best is None:
            return path
        _, key, ratio, ms = best
        params[key] = ratio
        path.append((dict(params), ms))


def _uniform_order(space: SearchSpace) -> list[float]:
    """The space's prune ratios (above 0), the middle of the range first: where the front's knee usually is."""
    ratios = sorted({r for g in space.groups for r in g.ratios if r > 0})
    return sorted(ratios, key=lambda r: (abs(r - 0.5), r))


def allocated_configs(space: SearchSpace, sens: dict, predict: Callable[[dict], float]) -> list[Allocated]:
    """For each uniform int8 configuration of the space (middle ratios first), the least pruned point of the
    allocation path predicted at least as fast; each distinct configuration once, none that is itself uniform."""
    if not any(len(g.ratios) > 1 for g in space.groups):
        return []
    path = allocation_path(space, sens, predict)
    uniforms = {tuple(sorted(space.uniform(r, "int8").items())) for r in [0.0, *_uniform_order(space)]}
    out: list[Allocated] = []
    for ratio in _uniform_order(space):
        like_ms = predict(space.uniform(ratio, "int8"))
        faster = [(p, ms) for p, ms in path if ms <= like_ms]
        if not faster:
            continue
        params, ms = faster[0]
        if tuple(sorted(params.items())) in uniforms or any(a.params == params for a in out):
            continue
        out.append(Allocated(params, round(ms, 4), ratio, round(like_ms, 4)))
    return out


def allocate_guarded(space: SearchSpace, sens: dict, predictor, log: Callable[[str], None]) -> list[Allocated]:
    """`allocated_configs` for a search: none without a latency model (`predictor` None) or when allocating fails
    (the scan's own warm start goes on without them)."""
    if predictor is None:
        return []
    from autocompress.errors import describe_error

    try:
        return allocated_configs(space, sens, predictor.predict)
    except Exception as e:  # noqa: BLE001 - a failing warm-start step never takes the search down
        log(f"  allocation with the latency model failed ({describe_error(e)}): the warm start goes on without it")
        return []
