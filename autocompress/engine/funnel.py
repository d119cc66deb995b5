"""The funnel before the trials: many candidates scored cheaply, and only the best of each latency target fine-tuned.

A trial costs a fine-tune, so a search can afford tens of them; a candidate's cheap score (pipeline/score.py:
pruned, fake-quantized, BatchNorm re-estimated, evaluated on a fixed validation sample, no training) costs about a
second. The funnel:
- spans the front with a `Ladder` of latency targets, from int8 PTQ's predicted latency down to the fastest the
  space allows (the measured latency model predicts every candidate before it is built);
- lets an Optuna study of its own (NSGA-II on score and predicted latency, journal `funnel.log` in the run directory)
  propose candidates in batches, the uniform ladder (every ratio x int8) and the sensitivity scan's picks first;
- scores each batch in parallel where trials run (`Executor.score`), every result in `funnel.jsonl` before the
  study hears of it, so a resumed run scores nothing twice;
- promotes the best-scored of each target, which the trial loop fine-tunes first.

Batches are asked and told whole, so a seed proposes the same candidates whatever the timing.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

from autocompress.config import SearchConfig
from autocompress.engine.policies import TARGET_SLACK
from autocompress.engine.prepare import Prepared
from autocompress.engine.progress import StageBar
from autocompress.engine.scheduler import params_key
from autocompress.engine.state import RunState
from autocompress.pipeline.score import Score, ScoreSettings, ScoreSpec
from autocompress.pipeline.trial import TrialSpec
from autocompress.results.funnel import FunnelBook, Scored
from autocompress.runtime.executor import Executor
from autocompress.space import SearchSpace

__all__ = ["Ladder", "Funnel", "promote", "uniform_ladder", "open_funnel_study", "run_funnel",
           "funnel_config_ok", "ShortStage", "BATCH_PER_WORKER"]

BATCH_PER_WORKER = 8  # candidates asked (and told) together per scoring worker: one round trip per batch
MAX_IDLE_BATCHES = 20  # batches in a row without a new candidate scored (all repeats or over the targets): stop


@dataclass(frozen=True)
class Ladder:
    """Latency targets (ms), slowest first: int8 PTQ's predicted latency down to the fastest the space allows,
    spaced evenly in log-latency."""

    targets: tuple[float, ...]
    slack: float = TARGET_SLACK  # a candidate predicted this far over the slowest target still counts: the error

    @classmethod
    def between(cls, slow: float, fast: float, n: int) -> Ladder:
        if n <= 1 or fast >= slow:
            return cls((round(slow, 4),))
        step = (fast / slow) ** (1 / (n - 1))
        return cls(tuple(round(slow * step**i, 4) for i in range(n)))

    def target_of(self, predicted: float | None) -> int | None:
        """The tightest target a candidate predicted at `predicted` ms meets (its bin: it meets no tighter one), or
        None: over the slowest by more than the slack."""
        if predicted is None or predicted > self.targets[0] * (1 + self.slack):
            return None
        met = [i for i, t in enumerate(self.targets) if predicted <= t]
        return met[-1] if met else 0


def uniform_ladder(space: SearchSpace, precisions: tuple[str, ...] = ("int8",)) -> list[dict]:
    """Every ratio of the space for all groups, all layers at each of `precisions` (where a layer allows it): the
    uniform configurations the search is compared with, scored like any candidate."""
    ratios = sorted({r for g in space.groups for r in g.ratios} or {0.0})
    out: list[dict] = []
    for precision in precisions:
        for r in ratios:
            p = space.uniform(r, precision)
            if p not in out:
                out.append(p)
    return out


def promote(rows: list[Scored], n_targets: int, per_target: int,
            key: Callable[[Scored], tuple] = Scored.rank_key) -> list[Scored]:
    """The best `per_target` distinct models of each target by `key` (higher is better; default: the score),
    ordered best of every target first (then the second best of each...), so a small trial budget still covers the
    whole ladder."""
    ranked: list[list[Scored]] = []
    for t in range(n_targets):
        seen: set[str] = set()
        best: list[Scored] = []
        for s in sorted((s for s in rows if s.scored and s.target == t), key=lambda s: (key(s), -s.number),
                        reverse=True):
            if s.key not in seen:
                seen.add(s.key)
                best.append(s)
        ranked.append(best[:per_target])
    return [r[i] for i in range(per_target) for r in ranked if i < len(r)]


@dataclass
class Funnel:
    """One run's funnel: its study, its book and its ladder. `run` scores up to `n` candidates (or until
    `deadline`), then `promoted` names the candidates the trials start with."""

    space: SearchSpace
    predictor: object  # latency_model.predict.Predictor
    executor: Executor
    ladder: Ladder
    book: FunnelBook
    study: object  # optuna.Study
    spec_of: Callable[[dict], ScoreSpec]
    settings: ScoreSettings
    n: int
    workers: int = 1
    deadline: float | None = None  # a perf_counter time after which no batch starts
    log: Callable[[str], None] = print
    # (candidates built, status) after each batch: a live bar; None: a progress line every 10 s instead
    on_batch: Callable[[int, str], None] | None = None
    skipped: int = 0
    idle_batches: int = field(default=0, init=False)

    def run(self) -> None:
        t0, last = time.perf_counter(), 0.0
        while self._more():
            built = self.book.built()
            rows = self._score(self._ask(BATCH_PER_WORKER * self.workers))
            self.book.add(rows)  # on disk before the study hears of them
            self._tell(rows)
            self.idle_batches = 0 if self.book.built() > built else self.idle_batches + 1
            if self.on_batch is not None:
                self.on_batch(self.book.built(), self._per_target())
            elif time.perf_counter() - last > 10 or not self._more():
                last = time.perf_counter()
                self._progress(time.perf_counter() - t0)
        self.executor.close_scorers()

    def _more(self) -> bool:
        if self.book.built() >= self.n or self.idle_batches >= MAX_IDLE_BATCHES:
            return False
        return self.deadline is None or time.perf_counter() < self.deadline

    def _ask(self, size: int) -> list[Scored]:
        """A batch of proposals, each predicted and placed on the ladder; a model already scored takes that score."""
        known = self.book.by_key()
        out: list[Scored] = []
        for _ in range(size):
            trial = self.study.ask(self._distributions())
            params = dict(trial.params)
            key = params_key(self.space, params)
            predicted = self.predictor.predict(params)
            origin = trial.user_attrs.get("origin", "sampled")
            if key in known:
                k = known[key]
                out.append(Scored(trial.number, params, key, predicted, k.target, origin, k.accuracy, k.agreement,
                                  k.loss, 0.0, k.error or f"the model of candidate {k.number}"))
            else:
                out.append(Scored(trial.number, params, key, predicted, self.ladder.target_of(predicted), origin))
        return out

    def _score(self, batch: list[Scored]) -> list[Scored]:
        """The batch with its new models scored (within the ladder, each model once: a second proposal of it in the
        batch takes the first one's score)."""
        todo: dict[str, Scored] = {}
        for s in batch:
            if s.target is not None and not s.error and s.key not in todo:
                todo[s.key] = s
        results = self.executor.score([self.spec_of(s.params) for s in todo.values()], self.settings) if todo else []
        done = {k: _with(s, r) for (k, s), r in zip(todo.items(), results, strict=True)}
        out = []
        for s in batch:
            first = done.get(s.key)
            if first is None or s.error:
                out.append(s)
            elif first.number == s.number:
                out.append(first)
            else:
                out.append(replace(first, number=s.number, params=s.params, origin=s.origin, seconds=0.0,
                                   error=first.error or f"the model of candidate {first.number}"))
        return out

    def _tell(self, rows: list[Scored]) -> None:
        """The study hears of every candidate of the batch, in the order asked."""
        from optuna.trial import TrialState as OptunaState

        by_number = {s.number: s for s in rows}
        for number in sorted(by_number):
            s = by_number[number]
            if s.scored:
                self.study.tell(number, [s.loss, s.predicted_ms])
            else:
                self.skipped += s.target is None
                self.study.tell(number, state=OptunaState.PRUNED if s.target is None else OptunaState.FAIL)

    def _distributions(self) -> dict:
        from autocompress.engine.study import distributions

        return distributions(self.space)

    def _per_target(self) -> str:
        rows = list(self.book.rows.values())
        return "per target " + ", ".join(f"{t:.3g} ms: {sum(s.scored and s.target == i for s in rows)}"
                                         for i, t in enumerate(self.ladder.targets))

    def _progress(self, seconds: float) -> None:
        failed = sum(s.error.startswith("failed") for s in self.book.rows.values())
        self.log(f"  funnel: {self.book.built()}/{self.n} candidates scored ({failed} failed) in {seconds:.0f} s; "
                 f"{self._per_target()}")


def _with(s: Scored, result: Score | str) -> Scored:
    if isinstance(result, str):
        return Scored(s.number, s.params, s.key, s.predicted_ms, s.target, s.origin, error=f"failed: {result}")
    return Scored(s.number, s.params, s.key, s.predicted_ms, s.target, s.origin, round(result.accuracy, 4),
                  round(result.agreement, 4), round(result.loss, 5), round(result.seconds, 3))


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


def open_funnel_study(journal: os.PathLike, name: str, *, sampler, first: list[tuple[dict, str]], book: FunnelBook):
    """The funnel's study: replayed from its journal when it has one (a candidate left RUNNING by a kill is told
    from the book when its line was written, else failed: it was never scored), else created with `first`
    ((params, origin) pairs) enqueued."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState as OptunaState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    if name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        for t in study.get_trials(deepcopy=False, states=(OptunaState.RUNNING,)):
            s = book.rows.get(t.number)
            if s is not None and s.scored:
                study.tell(t.number, [s.loss, s.predicted_ms])
            else:
                study.tell(t.number, state=OptunaState.PRUNED if s is not None and s.target is None
                           else OptunaState.FAIL)
        return study
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                directions=["minimize", "minimize"])  # the score's loss, the predicted latency
    for params, origin in first:
        study.enqueue_trial(params, user_attrs={"origin": origin}, skip_if_exists=True)
    return study


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
    """The best-scored of each target; or, with short fine-tunes, the best of each target's shortlist after them.
    Models a baseline built (`built` keys) are left out: a trial of one would only reuse its result."""
    n_targets, per_target = len(ladder.targets), cfg.funnel.n_promoted(cfg.budget.trials)
    rows = [s for s in book.rows.values() if s.key not in built]
    shortlisted = cfg.funnel.n_shortlisted(cfg.budget.trials)
    short = cfg.funnel.short_finetune(cfg.finetune)
    if short is None or shortlisted <= per_target:
        return promote(rows, n_targets, per_target)
    shortlist = promote(rows, n_targets, shortlisted)
    ShortStage(executor, lambda p: replace(make_spec(p), finetune=short), cfg.concurrency, cfg.trial_timeout_s,
               book, deadline, log).run(shortlist)
    return promote([book.rows[s.number] for s in shortlist], n_targets, per_target, key=Scored.short_key)


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


@dataclass
class ShortStage:
    """The shortlist's short fine-tunes, `concurrency` at a time where trials run; each result is a new line of the
    candidate in the book, so a resumed run runs none twice. A failing or late one is recorded and the others go
    on; none starts after `deadline`."""

    executor: Executor
    make_spec: Callable[[dict], TrialSpec]  # params -> the short fine-tune's spec
    concurrency: int
    timeout_s: float
    book: FunnelBook
    deadline: float | None = None
    log: Callable[[str], None] = print

    def run(self, shortlist: list[Scored]) -> None:
        todo = [s for s in shortlist if not self.book.rows[s.number].shortened]
        if todo:
            self.log(f"funnel: short fine-tunes of {len(todo)} shortlisted candidate(s) "
                     f"({len(shortlist) - len(todo)} done before)")
        running: dict = {}  # handle -> (candidate, start)
        while todo or running:
            while todo and len(running) < self.concurrency and self._in_time():
                s = todo.pop(0)
                running[self.executor.submit_short(self.make_spec(s.params))] = (s, time.perf_counter())
            if not running:
                break  # past the deadline: the rest keep their score only
            ready = self.executor.wait(list(running), timeout=1.0)
            now = time.perf_counter()
            for handle in [h for h in running if h in ready or now - running[h][1] > self.timeout_s]:
                s, t0 = running.pop(handle)
                self._record(s, handle, handle in ready, now - t0)

    def _in_time(self) -> bool:
        return self.deadline is None or time.perf_counter() < self.deadline

    def _record(self, s: Scored, handle, finished: bool, seconds: float) -> None:
        from autocompress.errors import describe_error

        try:
            if not finished:
                self.executor.cancel(handle)
                raise TimeoutError(f"short fine-tune exceeded the per-trial timeout of {self.timeout_s:g} s")
            out = self.executor.get(handle)
            row = replace(s, short_accuracy=round(out.val_accuracy, 4), short_seconds=round(seconds, 2))
            self.log(f"  candidate {s.number}: short fine-tune {row.short_accuracy:.2f}% in {seconds:.0f} s")
        except Exception as e:  # noqa: BLE001 - one failing short fine-tune leaves its candidate its score only
            row = replace(s, short_error=describe_error(e), short_seconds=round(seconds, 2))
            self.log(f"  candidate {s.number}: short fine-tune failed ({row.short_error})")
        self.book.add([row])


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
    import optuna

    cfg, space = prep.config, prep.space
    n = cfg.funnel.n_candidates(cfg.budget.trials)
    resumed = int(state.meta.get("resumed", 0))
    sampler = optuna.samplers.NSGAIISampler(seed=cfg.seed + 7919 * resumed, population_size=max(8, min(50, n // 6)))
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
