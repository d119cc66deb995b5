"""The Optuna study of a run: its sampler, its journal file, the configurations it tries first, and its repair
when a killed run is resumed.

Why Optuna ask/tell over Ray tasks (rather than Ray Tune): the driver owns one study whose storage is a journal
file in the run directory (the single source of truth that optuna-dashboard opens and a resume replays), trials
are plain Ray tasks that run anywhere in a cluster, and latency is measured by a device actor at moments the
driver chooses, never beside a fine-tune. Tune would own the trial loop and the scheduling the measurement needs.
"""

from __future__ import annotations

import warnings
from typing import Callable

from autocompress.engine.state import RunState
from autocompress.results.records import TrialRecord, TrialState
from autocompress.space import SearchSpace
from autocompress.space.keys import config_columns, params_key

__all__ = ["WARM_START", "warm_start_configs", "grid_configs", "make_sampler", "open_study", "distributions"]

# Uniform configurations tried first when warm_start is on: (prune ratio, precision). The first two are the
# fine-tuned baselines: when the space allows them exactly, those trials reuse the baselines' results and cost
# nothing. Ratio 1.0 means the most the space allows (`SearchSpace.uniform` takes the closest allowed choice):
# the fast end of the front, which a sampler is slow to find in a large space (docs/pipeline.md, "Warm start").
WARM_START = ((0.5, "int8"), (0.25, "int8"), (1.0, "fp32"), (1.0, "int8"), (0.5, "fp32"), (0.625, "fp32"),
              (0.375, "int8"))

OBJECTIVE_NAMES = ["val_accuracy", "latency_ms", "size_bytes"]


def warm_start_configs(space: SearchSpace, scan_picks: list[dict], budget_trials: int | None, *,
                       promoted: list[dict] = ()) -> list[dict]:
    """The configurations a search runs first, in order, distinct: the two free baseline models, then the funnel's
    `promoted` ones (engine/funnel.py: the scan's picks and the uniform ladder competed there, so they are not added
    again), or without a funnel the sensitivity scan's picks (those allocated with the latency model first) and the
    other WARM_START configurations, at most a third of a trial budget beyond the free two (the promoted ones up to
    the budget)."""
    uniform = [space.uniform(ratio, prec) for ratio, prec in WARM_START]
    rest = list(promoted) if promoted else list(scan_picks) + uniform[2:]
    out: list[dict] = []
    for params in uniform[:2] + rest:
        if params not in out:
            out.append(params)
    if budget_trials is None:
        return out
    return out[:budget_trials] if promoted else out[:min(budget_trials, 2 + budget_trials // 3)]


def grid_configs(space: SearchSpace) -> list[dict]:
    """`--sampler grid`: every ratio of the space for all groups x fp32 / int8 for all layers, each distinct
    model once."""
    keys: set[str] = set()
    grid: list[dict] = []
    ratios = sorted({r for g in space.groups for r in g.ratios} or {0.0})
    for prec in ("fp32", "int8"):
        for r in ratios:
            params = space.uniform(r, prec)
            if len(space.criteria) > 1:  # the uniform reference ranks channels one way: the first listed
                params["criterion"] = space.criteria[0]
            key = params_key(space, params)
            if key not in keys:
                keys.add(key)
                grid.append(params)
    return grid


def make_sampler(name: str, seed: int, warm_start: bool):
    import optuna

    return {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                                  n_startup_trials=5 if warm_start else 10),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "grid": lambda: optuna.samplers.RandomSampler(seed=seed),  # never consulted: every trial is enqueued
    }[name]()


def distributions(space: SearchSpace) -> dict:
    import optuna

    return {k: optuna.distributions.CategoricalDistribution(v) for k, v in space.params().items()}


def open_study(state: RunState, *, run_name: str, sampler, space: SearchSpace, first: list[dict],
               log: Callable[[str], None]):
    """The run's study: replayed from its journal (and repaired) when it has one, else created with the
    configurations `first` enqueued. A run killed before its first trial (during the baselines or the scan)
    has no study yet: it starts one."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(state.rd.journal)))
    if run_name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=run_name, storage=storage, sampler=sampler)
        _repair(study, storage, state, space, log)
        return study
    study = optuna.create_study(study_name=run_name, storage=storage, sampler=sampler,
                                directions=["maximize", "minimize", "minimize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(OBJECTIVE_NAMES)
    for params in first:
        study.enqueue_trial(space.complete(params), skip_if_exists=True)
    return study


def _repair(study, storage, state: RunState, space: SearchSpace, log: Callable[[str], None]) -> None:
    """Trials the journal still has RUNNING: told from their record when it was written before the kill;
    otherwise recorded as INTERRUPTED (not counted) and queued to run again. A trial killed while it was being
    proposed (its parameters written to the journal one by one, not all there) was never built: it is recorded,
    and not queued, since its partial parameters with the rest sampled anew would be another configuration."""
    from optuna.trial import TrialState as OptunaState

    for t in study.get_trials(deepcopy=False, states=(OptunaState.RUNNING,)):
        rec = state.records.get(t.number)
        if rec is not None and rec.state in (TrialState.COMPLETE, TrialState.DUPLICATE):
            study.tell(t.number, list(rec.objectives))
        elif rec is not None:
            pruned = rec.state in (TrialState.STOPPED, TrialState.SKIPPED)
            study.tell(t.number, state=OptunaState.PRUNED if pruned else OptunaState.FAIL)
        elif set(t.params) != set(space.params()):
            storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            study.tell(t.number, state=OptunaState.FAIL)
            state.put(TrialRecord(t.number, TrialState.INTERRUPTED, dict(t.params),  # only what was drawn
                                  error="interrupted while it was proposed (the search was killed): never built"))
            log(f"trial {t.number} was interrupted while it was proposed: recorded as failed (interrupted), "
                "never built")
        else:
            storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            study.tell(t.number, state=OptunaState.FAIL)
            state.put(TrialRecord(t.number, TrialState.INTERRUPTED, config_columns(space, t.params),
                                  error="interrupted (the search was killed); its configuration runs again"))
            study.enqueue_trial(dict(t.params), skip_if_exists=False)
            log(f"trial {t.number} was interrupted: recorded as failed (interrupted) and queued to run again")
