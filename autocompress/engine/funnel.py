"""The funnel before the trials: many candidates scored cheaply, and only the best of each latency target fine-tuned.

A trial costs a fine-tune, so a search can afford tens of them; a candidate's cheap score costs about a second.
`run_funnel`:
- spans the front with a `Ladder` of latency targets, from int8 PTQ's predicted latency down to the fastest the
  space allows (the measured latency model predicts every candidate before it is built);
- lets an Optuna study of its own (evolution within each target, engine/evolution.py; journal `funnel.log` in the
  run directory) propose candidates in batches, the uniform ladder (every ratio x int8, then fp32) and the
  sensitivity scan's picks first, scored where trials run (engine/scoring.py);
- gives each target's best-scored a short fine-tune and promotes the best of those (engine/shortlist.py), which the
  trial loop fine-tunes first.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

from autocompress.config import SearchConfig
from autocompress.engine.prepare import Prepared
from autocompress.engine.progress import StageBar
from autocompress.engine.scoring import Funnel, Ladder, funnel_sampler, open_funnel_study, uniform_ladder
from autocompress.engine.shortlist import ShortStage, gain_over_uniform, promote
from autocompress.engine.state import RunState
from autocompress.pipeline.score import ScoreSettings, ScoreSpec
from autocompress.pipeline.trial import TrialSpec
from autocompress.results.funnel import FunnelBook, Scored
from autocompress.runtime.executor import Executor
from autocompress.space import SearchSpace

__all__ = ["run_funnel", "funnel_config_ok"]


def funnel_config_ok(cfg: SearchConfig, space: SearchSpace, predictor) -> str | None:
    """Why this search runs no funnel, or None: it does."""
    if cfg.funnel.n_candidates(cfg.budget.trials) == 0:
        return "off (funnel.candidates: 0)"
    if cfg.sampler == "grid":
        return "off: the grid sampler runs every uniform configuration"
    if predictor is None:
        return "off: it needs the latency model to place candidates on the ladder of latency targets"
    if not space.params():
        return "off: the space has no choice to make"
    return None


def run_funnel(prep: Prepared, state: RunState, executor: Executor, predictor, scan_picks: list[dict],
               reduce_range: bool, make_spec: Callable[[dict], TrialSpec], log: Callable[[str], None], *,
               progress: bool = False) -> list[dict]:
    """Score the funnel's candidates, give the shortlist its short fine-tunes (going on from a resumed run's book),
    and return the promoted ones' params, in the order the trials should run them; [] when this search runs no
    funnel. The ladder, the counts and the promotion are in meta.json's `funnel`. `make_spec`: a trial's spec;
    `progress`: a live bar in a terminal."""
    cfg, space = prep.config, prep.space
    why = funnel_config_ok(cfg, space, predictor)
    if why is not None:
        state.meta["funnel"] = {"off": why}
        log(f"  funnel {why}")
        return []
    meta = state.meta.get("funnel") or {}
    ladder = Ladder(tuple(meta["targets_ms"])) if meta.get("targets_ms") else _ladder(space, predictor, cfg)
    book = FunnelBook.open(state.rd.funnel_book)
    n = cfg.funnel.n_candidates(cfg.budget.trials)
    meta.update(targets_ms=list(ladder.targets), candidates=n, settings=asdict(_settings(cfg)))
    state.meta["funnel"] = meta
    t0, deadlines = time.perf_counter(), _Deadlines.of(cfg, state)
    if not meta.get("scored_all"):
        log(f"funnel: scoring up to {n} candidates (pruned, fake-quantized, BatchNorm re-estimated, no training) "
            f"over {len(ladder.targets)} latency targets {', '.join(f'{t:.3g}' for t in ladder.targets)} ms")
        funnel = _funnel(prep, state, executor, predictor, ladder, book, scan_picks, reduce_range, deadlines.score, log)
        with StageBar("funnel", n, progress) as bar:
            funnel.on_batch = None if bar.lines else bar.update
            funnel.run()
        meta.update(scored_all=True, score_seconds=round(meta.get("seconds", 0.0) + time.perf_counter() - t0, 1))
        state.rd.write_json(state.rd.meta, state.meta)
    built = {b.model_key for b in state.baselines.values() if b.model_key}  # their results are reused, not re-run
    best = _promoted(cfg, ladder, book, executor, make_spec, deadlines.short, log, built)
    _note(meta, book, best, time.perf_counter() - t0)
    state.rd.write_json(state.rd.meta, state.meta)
    for s in best:
        short = f", short fine-tune {s.short_accuracy:.2f}%" if s.short_accuracy is not None else ""
        log(f"  promoted candidate {s.number} ({s.origin}): score {s.accuracy:.2f}% (loss {s.loss:.3f}){short}, "
            f"predicted {s.predicted_ms:.3f} ms (target {ladder.targets[s.target]:.3g} ms)")
    return [s.params for s in best]


@dataclass(frozen=True)
class _Deadlines:
    """perf_counter times after which no scoring batch (`score`) or short fine-tune (`short`) starts; None: no time
    budget. Scoring takes up to half the funnel's share of a time budget, the short fine-tunes the rest."""

    score: float | None = None
    short: float | None = None

    @classmethod
    def of(cls, cfg: SearchConfig, state: RunState) -> _Deadlines:
        if not cfg.budget.seconds:
            return cls()
        left = max(0.0, cfg.budget.seconds - state.elapsed)
        share = cfg.funnel.time_share * cfg.budget.seconds - float(state.meta["funnel"].get("seconds", 0.0))
        now = time.perf_counter()
        return cls(now + max(0.0, min(share / 2, left)), now + max(0.0, min(share, left)))


def _promoted(cfg: SearchConfig, ladder: Ladder, book: FunnelBook, executor: Executor,
              make_spec: Callable[[dict], TrialSpec], deadline: float | None,
              log: Callable[[str], None], built: set[str]) -> list[Scored]:
    """The candidates of each target whose score beats uniform compression's by most at their latency; or, with
    short fine-tunes, the best of each target's shortlist after them. Each round (the best of every target, then
    the second best...) is ordered by that gain, so the trials fine-tune first what pruning unevenly buys most.
    Models a baseline built (`built` keys) are left out: a trial of one would only reuse its result."""
    n_targets, per_target = len(ladder.targets), cfg.funnel.n_promoted(cfg.budget.trials)
    rows = [s for s in book.rows.values() if s.key not in built]
    gain = gain_over_uniform(book.rows.values())

    def by_gain(s: Scored) -> tuple:
        return (gain(s), *s.rank_key())

    shortlisted = cfg.funnel.n_shortlisted(cfg.budget.trials)
    short = cfg.funnel.short_finetune(cfg.finetune)
    if short is None or shortlisted <= per_target:
        return promote(rows, n_targets, per_target, key=by_gain, order=gain)
    shortlist = promote(rows, n_targets, shortlisted, key=by_gain, order=gain)
    ShortStage(executor, lambda p: replace(make_spec(p), finetune=short), cfg.concurrency, cfg.trial_timeout_s,
               book, deadline, log).run(shortlist)
    return promote([book.rows[s.number] for s in shortlist], n_targets, per_target, key=Scored.short_key,
                   order=gain)


def _note(meta: dict, book: FunnelBook, best: list[Scored], seconds: float) -> None:
    rows = book.rows.values()
    meta.update(done=True, seconds=round(meta.get("seconds", 0.0) + seconds, 1),
                scored=sum(s.scored for s in rows), proposed=len(book.rows),
                failed=sum(s.error.startswith("failed") for s in rows),
                over_targets=sum(s.target is None for s in rows),
                shortened=sum(s.short_accuracy is not None for s in rows),
                short_failed=sum(bool(s.short_error) for s in rows),
                promoted=[{"candidate": s.number, "target": s.target, "accuracy": s.accuracy, "loss": s.loss,
                           "short_accuracy": s.short_accuracy, "predicted_ms": s.predicted_ms, "origin": s.origin}
                          for s in best])


def _settings(cfg: SearchConfig) -> ScoreSettings:
    return ScoreSettings(bn_images=cfg.funnel.bn_images, val_images=cfg.funnel.val_images, seed=cfg.seed)


def _ladder(space: SearchSpace, predictor, cfg: SearchConfig) -> Ladder:
    """From int8 PTQ's predicted latency (or --target-latency-ms, when lower) down to the fastest uniform
    configuration's (every ratio of the space, int8 or fp32: on a small network int8's per-operator overhead can
    make fp32 the faster)."""
    slow = predictor.predict(space.uniform(0.0, "int8"))
    if cfg.target_latency_ms is not None:
        slow = min(slow, cfg.target_latency_ms)
    fast = min(predictor.predict(p) for p in uniform_ladder(space, ("int8", "fp32")))
    return Ladder.between(slow, fast, cfg.funnel.targets)


def _funnel(prep: Prepared, state: RunState, executor: Executor, predictor, ladder: Ladder, book: FunnelBook,
            scan_picks: list[dict], reduce_range: bool, deadline: float | None, log: Callable[[str], None]) -> Funnel:
    cfg, space = prep.config, prep.space
    n = cfg.funnel.n_candidates(cfg.budget.trials)
    resumed = int(state.meta.get("resumed", 0))
    sampler = funnel_sampler(cfg.funnel.sampler, cfg.seed + 7919 * resumed, n, space, predictor, ladder)
    # the uniform ladder (and its fp32 counterpart, the fastest on a small network) and the scan's picks go first
    first = ([(p, "uniform") for p in uniform_ladder(space, ("int8", "fp32"))]
             + [(space.complete(p), "scan") for p in scan_picks])
    study = open_funnel_study(state.rd.funnel_journal, f"{prep.run_name}-funnel", sampler=sampler, first=first,
                              book=book)
    def spec_of(params: dict) -> ScoreSpec:
        ratios, precisions = space.decode(params)
        return ScoreSpec(ratios, precisions, space.criterion(params), space.round_to, space.min_channels,
                         reduce_range, space.dropped(params))

    workers = int(state.meta.get("ray", {}).get("cpus", 1))
    return Funnel(space, predictor, executor, ladder, book, study, spec_of, _settings(cfg), n, workers=workers,
                  deadline=deadline, log=log)
