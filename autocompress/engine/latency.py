"""The search's latency model stage: the layer table timed on the device, the fit on the whole models measured
so far, and the slow channel counts dropped from the space (latency_model/ holds the model itself)."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Callable

import torch

from autocompress.config import BASELINES
from autocompress.engine.baselines import baseline_spec
from autocompress.engine.state import LatencyBook, RunState
from autocompress.errors import describe_error
from autocompress.latency_model.model import LatencyTable
from autocompress.latency_model.predict import (
    PROXIES,
    Predictor,
    build_predictor,
    calibrate_on_proxies,
    drop_precisions,
    drop_slow,
    slow_choices,
    slow_precisions,
)
from autocompress.measure.cache import cache_dir
from autocompress.results.records import SlowChoice, TrialState
from autocompress.space import SearchSpace

if TYPE_CHECKING:
    from autocompress.engine.prepare import Prepared
    from autocompress.runtime.executor import Executor

__all__ = ["setup_predictor"]


def setup_predictor(prep: Prepared, state: RunState, executor: Executor, baseline: torch.nn.Module, reduce_range: bool,
                    log: Callable[[str], None] = print, *,
                    latency: LatencyBook | None = None) -> tuple[SearchSpace, Predictor | None]:
    """The space without the channel counts that are slow on this device (a new space), and the search's predictor,
    fitted on the whole models measured so far, or None when it is switched off or fails (it only adds figures to
    the report and skips proposals: a failure never takes the search down).

    The slow channel counts (`meta.json` `slow_choices`) are found once, before the study is made; a resumed run
    whose study exists drops the same, whatever becomes of its latency model, so that its study keeps the same
    choices. (So a failure after the drop keeps the dropped space: meta.json lists the choices it dropped.)"""
    cfg, space = prep.config, prep.space
    decided = state.study_made or "slow_choices" in state.meta
    if decided:
        space = _drop(space, [SlowChoice(**c) for c in state.meta.get("slow_choices", [])], log)
        space = drop_precisions(space, state.meta.get("size_only_dropped", {}))
    if not cfg.latency_model:
        return space, None
    try:
        predictor, info = _build(prep, space, state, executor, baseline, reduce_range, log)
        if not decided and cfg.sampler != "grid":  # (the grid is the uniform reference: all of its choices stay)
            slow = slow_choices(predictor.model, space)
            space = _drop(space, slow, log)
            gone = {} if cfg.size else slow_precisions(predictor.model, space)
            space = _drop_precisions(space, gone, log)
            predictor = predictor.with_space(space)
            state.meta["slow_choices"] = [asdict(c) for c in slow]
            state.meta["size_only_dropped"] = gone
            state.meta["space"] = space.describe()
            state.rd.write_json(state.rd.meta, state.meta)
        _calibrate(predictor, info, prep, state, executor, baseline, reduce_range, log, latency or LatencyBook(None))
        return space, predictor
    except Exception as e:  # noqa: BLE001 - the search runs without predictions
        log(f"  latency model failed ({describe_error(e)}): the search goes on without predictions"
            + ("; --target-latency-ms is ignored" if cfg.target_latency_ms else "")
            + ("; --multi-fidelity stops no trial" if cfg.multi_fidelity_points else ""))
        state.meta["latency_model"] = {"failed": describe_error(e)}
        state.rd.write_json(state.rd.meta, state.meta)
        return space, None


def _build(prep: Prepared, space: SearchSpace, state: RunState, executor: Executor, baseline: torch.nn.Module,
           reduce_range: bool, log: Callable[[str], None]) -> tuple[Predictor, dict]:
    """The predictor of `space`, its layer table timed on the device (what the cache lacks), not yet fitted."""
    cfg = prep.config
    table = LatencyTable(LatencyTable.file_for(cache_dir(), state.meta["device"], cfg.latency.model_dump(),
                                               reduce_range))
    return build_predictor(baseline, prep.splits.val.images(1), space, table, executor.time_graphs,
                           reduce_range=reduce_range, log=log)


def _calibrate(predictor: Predictor, info: dict, prep: Prepared, state: RunState, executor: Executor,
               baseline: torch.nn.Module, reduce_range: bool, log: Callable[[str], None], latency: LatencyBook) -> None:
    """The fit on the whole models measured already, then on random proxies (`calibrate_on_proxies`), measured
    now or taken from the latency cache like any trial's: a seed then fits, and proposes, the same on this device."""
    seed = prep.config.seed
    _learn_measured(predictor, state, seed, reduce_range)
    if predictor.space.params():
        def measure(data: bytes) -> float:
            hit = latency.cached(data)
            if hit is not None:
                return hit.median_ms
            return latency.measured(data, executor.get(executor.submit_measure(data))).median_ms

        info["proxies"] = PROXIES
        info["proxy_seconds"] = calibrate_on_proxies(predictor, baseline, prep.splits.val.images(1), measure,
                                                     n=PROXIES, seed=seed, reduce_range=reduce_range)
    state.meta["latency_model"] = {**info, **predictor.summary()}
    state.rd.write_json(state.rd.meta, state.meta)
    log(f"  latency model: {info['entries']} layer timings ({info['timed_now']} new, {info['seconds']} s), "
        f"fit on {predictor.model.fit.anchors} whole models measured ({info.get('proxy_seconds', 0)} s)")


def _drop_precisions(space: SearchSpace, gone: dict[str, list[str]], log: Callable[[str], None]) -> SearchSpace:
    if gone:
        kinds = sorted({p for ps in gone.values() for p in ps})
        log(f"  not offered in a search for latency: {', '.join(kinds)} on {len(gone)} layer(s), no faster than int8 "
            "on this device (only a smaller file; --size offers them)")
    return drop_precisions(space, gone)


def _drop(space: SearchSpace, slow: list[SlowChoice], log: Callable[[str], None]) -> SearchSpace:
    for c in slow:
        log(f"  not offered, slow on this device: {c.text()}")
    return drop_slow(space, slow)


def _learn_measured(predictor: Predictor, state: RunState, seed: int, reduce_range: bool) -> None:
    """The anchors measured already: the uniform baselines the table covers, then (on resume) the earlier
    sessions' trials, in trial order."""
    space = predictor.space
    for b in BASELINES:
        rec = state.baselines.get(b.name)
        if rec is not None and rec.measured:
            spec = baseline_spec(b, space, None, seed, reduce_range)
            if predictor.covers(spec.ratios, spec.precisions):
                predictor.learn(spec.ratios, spec.precisions, rec.latency.median_ms)
    for _, rec in sorted(state.records.items()):
        if rec.state is TrialState.COMPLETE and rec.measured and rec.reused is None and rec.duplicate_of is None:
            ratios, precisions = space.decode(rec.choices)
            if predictor.covers(ratios, precisions):
                predictor.learn(ratios, precisions, rec.latency.median_ms, dropped=space.dropped(rec.choices))
