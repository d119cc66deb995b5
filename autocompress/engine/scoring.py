"""The funnel's scoring stage: a ladder of latency targets, and an Optuna study of its own whose candidates are scored
cheaply in batches (pipeline/score.py: pruned, fake-quantized, BatchNorm re-estimated, evaluated on a fixed validation
sample, no training; about a second each).

Every result is a line of `funnel.jsonl` before the study hears of it, so a resumed run scores nothing twice; batches
are asked and told whole, so a seed proposes the same candidates whatever the timing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from autocompress.engine.policies import TARGET_SLACK
from autocompress.pipeline.score import Score, ScoreSettings, ScoreSpec
from autocompress.results.funnel import FunnelBook, Scored
from autocompress.runtime.executor import Executor
from autocompress.space import SearchSpace
from autocompress.space.keys import params_key

__all__ = ["Ladder", "Funnel", "uniform_ladder", "funnel_sampler", "open_funnel_study", "BATCH_PER_WORKER"]

BATCH_PER_WORKER = 8  # candidates asked (and told) together per scoring worker: one round trip per batch
MAX_IDLE_BATCHES = 20  # batches in a row without a new candidate scored (all repeats or over the targets): stop


@dataclass(frozen=True)
class Ladder:
    """Latency targets (ms), slowest first: from int8 PTQ's predicted latency towards the fastest the space allows,
    spaced evenly in log-latency so that the fastest target's bin reaches down to that fastest latency. (A target at
    the fastest latency itself would hold only the corner of the space, every choice at its fastest: one model.)"""

    targets: tuple[float, ...]
    slack: float = TARGET_SLACK  # a candidate predicted this far over the slowest target still counts: the error

    @classmethod
    def between(cls, slow: float, fast: float, n: int) -> Ladder:
        if n <= 1 or fast >= slow:
            return cls((round(slow, 4),))
        step = (fast / slow) ** (1 / n)
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


def funnel_sampler(name: str, seed: int, n: int, space: SearchSpace, predictor, ladder: Ladder):
    """The funnel study's sampler (`funnel.sampler`) for `n` candidates over `ladder`."""
    import optuna

    from autocompress.engine.evolution import TargetEvolution
    from autocompress.engine.study import distributions

    if name == "evolution":
        return TargetEvolution(distributions(space), predictor.predict, ladder, seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(8, min(50, n // 6)))
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    return optuna.samplers.RandomSampler(seed=seed)


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
