"""The trial loop: propose -> submit -> collect -> tell, with the in-flight state it needs.

Shaped like Optuna's `_optimize`: `run` is a short loop calling one-screen steps, and every piece of state
lives on the `Scheduler`. What it guarantees:
- a model is built once: a proposal of a model already measured (or built by a baseline) takes that result at
  no cost; one proposed while the same model is in flight waits for it;
- a finished trial's latency is measured while the next trial already fine-tunes (the device pauses trials only
  within its sessions), and the record is on disk before the study hears of it;
- what the sampler knows when it proposes does not depend on timing: the study hears of a result only once
  `concurrency` later trials have been asked for, so a seed proposes the same configurations;
- a failing trial or measurement, or one past the per-trial timeout, is a FAIL record; the search goes on;
- with --multi-fidelity, a trial stops halfway through its fine-tune when a finished trial measured at least as
  fast as it is predicted was clearly more accurate at that point (`rung`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

from autocompress.engine.state import LatencyBook, RunState, record_of
from autocompress.errors import describe_error
from autocompress.latency_model.screen import Dominator, dominator
from autocompress.pipeline.prune import kept_channels
from autocompress.pipeline.trial import StoppedEarly, TrialOutput, TrialSpec
from autocompress.results.records import TrialRecord, TrialState
from autocompress.runtime.executor import Executor
from autocompress.space import SearchSpace

__all__ = ["Scheduler", "Limits", "Rung", "rung", "model_key", "config_columns", "MAX_REPEATS"]

MAX_REPEATS = 50  # proposals of already-measured configurations in a row after which the space counts as exhausted
# proposals skipped as over --target-latency-ms in a row after which the target counts as out of reach (a skip costs
# no fine-tune: a tight target may miss most of the space and still be met)
MAX_SKIPS = 500
TARGET_SLACK = 0.15  # a proposal predicted up to this far over --target-latency-ms is still built: the model's error


def model_key(space: SearchSpace, ratios: dict[str, float], precisions: dict[str, str], criterion: str = "l2") -> str:
    """Identity of the model a configuration builds: kept channels of every group, precision of every layer
    (two ratios that round to the same channel count build the same model)."""
    kept = {g.name: kept_channels(g.channels, float(ratios.get(g.name, 0.0)), round_to=space.round_to,
                                  min_channels=space.min_channels, channel_groups=g.channel_groups)
            for g in space.groups}
    key = {"kept": kept, "precision": {layer.name: precisions.get(layer.name, "fp32") for layer in space.layers}}
    pruned = any(k < g.channels for g, k in zip(space.groups, kept.values(), strict=True))
    if criterion != "l2" and pruned:  # other channels kept: another model (l2 keeps the keys of earlier runs)
        key["criterion"] = criterion
    return json.dumps(key, sort_keys=True)


def config_columns(space: SearchSpace, params: dict) -> dict:
    """Every group's ratio and layer's precision, the fixed ones included (the table's `prune:` / `quant:`)."""
    ratios, precisions = space.decode(params)
    cols = {**{f"prune:{g}": r for g, r in ratios.items()}, **{f"quant:{n}": p for n, p in precisions.items()}}
    if space.criteria != ["l2"]:
        cols["criterion"] = space.criterion(params)
    return cols


@dataclass(frozen=True)
class Limits:
    concurrency: int = 1
    trials: int | None = None  # the budget in trials (COMPLETE + FAIL + STOPPED), or
    deadline: float | None = None  # a perf_counter time after which no trial starts
    max_proposals: int | None = None  # `--sampler grid`: the number of enqueued configurations
    trial_timeout_s: float = 1800.0


@dataclass(frozen=True)
class Rung:
    """The bar a trial's halfway validation accuracy must clear to finish its fine-tune, and the finished trial
    that set it."""

    threshold: float  # %: a halfway accuracy below this stops the trial
    trial: int  # the finished trial that set it
    latency_ms: float  # its measured latency: at most the trial's predicted one
    accuracy: float  # its own halfway accuracy (the threshold plus the margin)


def rung(records: Iterable[TrialRecord], predicted: float | None, margin: float) -> Rung | None:
    """The halfway bar of a trial predicted to take `predicted` ms: the best halfway accuracy, less `margin` points,
    of the finished, measured trials at least as fast as that (repeats and reused baselines left out: they did not
    fine-tune). None without a prediction or such a trial: the trial runs in full.

    Why only those: a trial can only leave the accuracy-latency front if something at least as fast is more
    accurate, so a more accurate but slower trial says nothing against it. Why halfway: every trial fine-tunes on
    the same schedule, so accuracies at the same point of it compare fairly (not with the end of another's)."""
    if predicted is None:
        return None
    rivals = [r for r in records
              if r.state is TrialState.COMPLETE and r.measured and r.duplicate_of is None and r.reused is None
              and r.halfway_accuracy is not None and r.latency.median_ms <= predicted]
    if not rivals:
        return None
    best = max(rivals, key=lambda r: (r.halfway_accuracy, -r.trial))  # a tie: the earlier trial
    return Rung(best.halfway_accuracy - margin, best.trial, best.latency.median_ms, best.halfway_accuracy)


@dataclass
class _Proposal:
    trial: Any  # optuna.Trial
    params: dict
    key: str
    t0: float = 0.0
    out: TrialOutput | None = None
    seconds: float = 0.0  # the pipeline's wall time (without the measurement)
    predicted: float | None = None  # the latency model's figure (ms), made when proposed
    rung: Rung | None = None  # --multi-fidelity: its halfway bar, set when proposed


@dataclass
class Scheduler:
    study: Any  # optuna.Study
    distributions: dict
    space: SearchSpace
    executor: Executor
    state: RunState
    limits: Limits
    make_spec: Callable[[dict, float | None], TrialSpec]  # (params, halfway bar or None) -> the trial to run
    latency: LatencyBook
    line: Callable[[str], None] = print  # one line per finished trial
    early_stop_points: float = 0.0  # for the message of an early-stopped trial
    stop_below: float | None = None  # --early-stop: one halfway bar for every trial (FP32's val minus the points)
    multi_fidelity_points: float = 0.0  # --multi-fidelity: the margin of each proposal's `rung` (0: off)
    predictor: Any = None  # latency_model.predict.Predictor: each proposal's latency before it trains, or None
    target_ms: float | None = None  # --target-latency-ms: proposals predicted over it (with TARGET_SLACK) are skipped
    screen: bool = False  # skip proposals predicted slower than a measured model that covers them (latency_model.screen)
    running: dict = field(default_factory=dict)  # handle -> _Proposal whose pipeline runs
    measuring: dict = field(default_factory=dict)  # handle -> _Proposal whose latency is being measured
    in_flight: dict[str, int] = field(default_factory=dict)  # model key -> the trial running or measured for it
    waiting: dict[str, list] = field(default_factory=dict)  # model key -> proposals made while it was in flight
    to_run: list = field(default_factory=list)  # such proposals whose model failed: each runs on its own
    seen: dict[str, int | str] = field(default_factory=dict)  # model key -> trial number, or a baseline's name
    asked: list = field(default_factory=list)  # optuna trials in the order asked
    untold: dict[int, tuple] = field(default_factory=dict)  # trial number -> (optuna trial, record) not yet told
    repeats_in_a_row: int = 0
    skips_in_a_row: int = 0

    def __post_init__(self) -> None:
        for name, b in self.state.baselines.items():
            if b.state is TrialState.COMPLETE and b.model_key:
                self.seen[b.model_key] = name
        for n, r in sorted(self.state.records.items()):
            if r.state is TrialState.COMPLETE and not r.reused:
                self.seen.setdefault(model_key(self.space, *self.space.decode(r.choices),
                                               self.space.criterion(r.choices)), n)

    # ------------------------------------------------------------------ the loop
    def run(self, stopping: Callable[[], bool], on_update: Callable[[], None] = lambda: None) -> None:
        """Until the budget is spent (or `stopping()`) and nothing is in flight. KeyboardInterrupt propagates
        after the running trials are cancelled and the study has heard of every finished one."""
        try:
            while self.running or self.measuring or self.to_run or self.can_start(stopping):
                if stopping():  # no new runs: these stay unfinished in the journal and run on --resume
                    self.to_run.clear()
                self._submit_queued()
                self._propose(stopping)
                finished = self._collect(self.executor.wait([*self.running, *self.measuring], timeout=1.0))
                for proposal, rec in finished:
                    self._finish(proposal, rec)
                if finished:
                    self.state.save()
                on_update()
        except KeyboardInterrupt:
            for handle in self.running:
                self.executor.cancel(handle)
            self.tell_all()
            raise
        self.tell_all()

    @property
    def busy(self) -> int:
        return len(self.running) + len(self.measuring)

    @property
    def exhausted(self) -> bool:
        return self.repeats_in_a_row >= MAX_REPEATS or self.skips_in_a_row >= MAX_SKIPS

    def counted(self) -> int:
        """Trials that count in the budget."""
        return sum(self.state.count(s) for s in (TrialState.COMPLETE, TrialState.FAIL, TrialState.STOPPED))

    def can_start(self, stopping: Callable[[], bool]) -> bool:
        if stopping() or self.exhausted:
            return False
        started = self.busy + len(self.to_run) + sum(len(w) for w in self.waiting.values())
        if self.limits.max_proposals is not None and self.counted() + started >= self.limits.max_proposals:
            return False
        if self.limits.trials is not None:
            return self.counted() + started < self.limits.trials
        return time.perf_counter() < (self.limits.deadline or 0)

    # ------------------------------------------------------------------ propose and submit
    def _submit(self, p: _Proposal) -> None:
        p.t0 = time.perf_counter()
        self.running[self.executor.submit_trial(self.make_spec(p.params, self._stop_below(p)))] = p
        self.in_flight[p.key] = p.trial.number

    def _stop_below(self, p: _Proposal) -> float | None:
        """A proposal's halfway bar: the higher of --early-stop's and its rung's; None: it runs in full."""
        bars = [b for b in (self.stop_below, p.rung.threshold if p.rung else None) if b is not None]
        return max(bars, default=None)

    def _submit_queued(self) -> None:
        while self.to_run and len(self.running) < self.limits.concurrency:
            self._submit(self.to_run.pop(0))

    def _propose(self, stopping: Callable[[], bool]) -> None:
        while (self.can_start(stopping) and len(self.running) < self.limits.concurrency
               and self.tell_up_to(len(self.asked) - self.limits.concurrency)):
            trial = self.study.ask(self.distributions)
            self.asked.append(trial)
            params = dict(trial.params)
            predicted = self._predict(params)
            self._place(_Proposal(trial, params, model_key(self.space, *self.space.decode(params),
                                                           self.space.criterion(params)),
                                  predicted=predicted, rung=self._rung(predicted)))

    def _rung(self, predicted: float | None) -> Rung | None:
        """From the trials the study has heard of, not those that happen to have finished: a seed sets the same
        bars, and so stops the same trials, whatever the timing."""
        if self.multi_fidelity_points <= 0:
            return None
        known = (r for n, r in self.state.records.items() if n not in self.untold)
        return rung(known, predicted, self.multi_fidelity_points)

    def _predict(self, params: dict) -> float | None:
        if self.predictor is None:
            return None
        try:
            return self.predictor.predict(params)
        except Exception as e:  # noqa: BLE001 - a prediction is a report figure; the search goes on without it
            self.line(f"latency model: no prediction ({describe_error(e)}); the search goes on without it")
            self.predictor = None
            return None

    def _place(self, p: _Proposal) -> None:
        """Run a new model; or take the result of a baseline or earlier trial that built it; or wait for it; or skip
        it, unbuilt, when it is predicted over the latency target or slower than a measured model that covers it."""
        owner = self.seen.get(p.key)
        if isinstance(owner, str):  # a baseline built this model: a free, counted trial
            self._record(p, self._reused_baseline(p, owner))
            self.line(f"trial {p.trial.number}: the model of baseline {owner}: its result reused")
        elif owner is not None:
            self._record(p, self.state.records[owner].repeat_of(p.trial.number, TrialState.DUPLICATE))
            self._count_repeat()
        elif p.key in self.in_flight:
            self.waiting.setdefault(p.key, []).append(p)
            self._count_repeat()
        elif self._over_target(p):
            self._skip(p, f"skipped: predicted {p.predicted:.3f} ms, over the target {self.target_ms:g} ms")
        elif (dom := self._dominator(p)) is not None:
            self._skip(p, f"skipped: predicted {p.predicted:.3f} ms, slower than {dom.text()} ({dom.latency_ms:.3f} ms "
                          "measured), which keeps at least its channels, each layer at least as precise")
        else:
            self.repeats_in_a_row = self.skips_in_a_row = 0
            self._submit(p)

    def _skip(self, p: _Proposal, why: str) -> None:
        """Recorded SKIPPED, unbuilt: it costs no fine-tune and does not count in the budget."""
        rec = self._record(p, TrialRecord(p.trial.number, TrialState.SKIPPED, config_columns(self.space, p.params),
                                          error=why))
        self.line(f"trial {rec.trial}: {rec.error}")
        self.skips_in_a_row += 1
        if self.skips_in_a_row == MAX_SKIPS:
            self.line(f"the last {MAX_SKIPS} proposals were all skipped unbuilt: stopping (raise --target-latency-ms, "
                      "or widen the space)")

    def _dominator(self, p: _Proposal) -> Dominator | None:
        """With screening on: the measured model (baseline, or trial the study has heard of: a seed skips the same
        proposals whatever the timing) that makes this proposal pointless to build (`latency_model.screen`)."""
        if not self.screen:
            return None
        measured = []
        for key, owner in self.seen.items():
            rec = self.state.baselines.get(owner) if isinstance(owner, str) else self.state.records.get(owner)
            if rec is not None and rec.measured and owner not in self.untold:
                measured.append((key, owner, rec.latency.median_ms))
        return dominator(p.key, p.predicted, measured)

    def _over_target(self, p: _Proposal) -> bool:
        return (self.target_ms is not None and p.predicted is not None
                and p.predicted > self.target_ms * (1 + TARGET_SLACK))

    def _reused_baseline(self, p: _Proposal, name: str) -> TrialRecord:
        b = self.state.baselines[name]
        return TrialRecord(trial=p.trial.number, state=TrialState.COMPLETE,
                           choices=config_columns(self.space, p.params),
                           artifact=b.artifact, latency=b.latency, channels=b.channels,
                           stage_seconds={k: 0.0 for k in b.stage_seconds}, reused=f"baseline-{name}")

    def _count_repeat(self) -> None:
        self.repeats_in_a_row += 1
        if self.repeats_in_a_row == MAX_REPEATS:
            self.line(f"the sampler proposed {MAX_REPEATS} already-measured configurations in a row: the space "
                      "looks exhausted; stopping (widen it in the search-space YAML)")

    # ------------------------------------------------------------------ collect
    def _collect(self, ready: set) -> list[tuple[_Proposal, TrialRecord]]:
        now = time.perf_counter()
        out = []
        for handle in [h for h in self.measuring if h in ready or self._late(self.measuring[h].t0, now)]:
            p = self.measuring.pop(handle)
            out.append((p, self._measured(p, handle, ready, now)))
        for handle in [h for h in self.running if h in ready or self._late(self.running[h].t0, now)]:
            p = self.running.pop(handle)
            rec = self._built(p, handle, ready, now)
            if rec is not None:
                out.append((p, rec))
        return out

    def _late(self, t0: float, now: float) -> bool:
        return now - t0 > self.limits.trial_timeout_s

    def _built(self, p: _Proposal, handle, ready: set, now: float) -> TrialRecord | None:
        """A finished pipeline's record, or None when its latency is now being measured."""
        p.seconds = now - p.t0
        choices = config_columns(self.space, p.params)
        try:
            if handle not in ready:
                self.executor.cancel(handle)
                raise TimeoutError(f"trial exceeded the per-trial timeout of {self.limits.trial_timeout_s:g} s")
            out = self.executor.get(handle)
        except Exception as e:  # noqa: BLE001 - a failing trial never takes the search down
            return TrialRecord(p.trial.number, TrialState.FAIL, choices, duration_s=p.seconds, error=describe_error(e))
        if isinstance(out, StoppedEarly):
            return TrialRecord(p.trial.number, TrialState.STOPPED, choices, duration_s=p.seconds,
                               stage_seconds=dict(out.stage_seconds), error=self._stopped_text(p, out),
                               halfway_accuracy=round(out.val_accuracy, 4))
        lat = self.latency.cached(out.onnx_bytes)
        if lat is None:  # measured in the background; the record is written when the figure arrives
            p.out, p.t0 = out, now
            self.measuring[self.executor.submit_measure(out.onnx_bytes)] = p
            return None
        out.stage_seconds["measure"] = 0.0
        return self._complete(p, out, lat)

    def _stopped_text(self, p: _Proposal, out: StoppedEarly) -> str:
        """Which bar stopped it: its rung (naming the trial that set it) or --early-stop's."""
        if p.rung is not None and (self.stop_below is None or p.rung.threshold >= self.stop_below):
            return _rung_text(out, p.rung, p.predicted, self.multi_fidelity_points)
        return _stopped_text(out, self.early_stop_points)

    def _measured(self, p: _Proposal, handle, ready: set, now: float) -> TrialRecord:
        assert p.out is not None
        try:
            if handle not in ready:
                raise TimeoutError(f"no figure from the device within the per-trial timeout of "
                                   f"{self.limits.trial_timeout_s:g} s")
            lat = self.latency.measured(p.out.onnx_bytes, self.executor.get(handle))
        except Exception as e:  # noqa: BLE001 - a failing measurement fails its trial, not the search
            return TrialRecord(p.trial.number, TrialState.FAIL, config_columns(self.space, p.params),
                               duration_s=p.seconds, error=f"latency measurement failed: {describe_error(e)}")
        p.out.stage_seconds["measure"] = round(now - p.t0, 3)
        return self._complete(p, p.out, lat)

    def _complete(self, p: _Proposal, out: TrialOutput, lat) -> TrialRecord:
        onnx = self.state.write_model(f"trial-{p.trial.number:04d}", out.onnx_bytes)
        return record_of(p.trial.number, out, lat, onnx, p.seconds, choices=config_columns(self.space, p.params))

    # ------------------------------------------------------------------ finish and tell
    def _record(self, p: _Proposal, rec: TrialRecord) -> TrialRecord:
        """On disk first, then queued for the study."""
        if p.predicted is not None and rec.predicted_ms is None:
            rec = replace(rec, predicted_ms=p.predicted)
        self.state.put(rec)
        self.untold[rec.trial] = (p.trial, rec)
        return rec

    def _finish(self, p: _Proposal, rec: TrialRecord) -> None:
        if self.in_flight.get(p.key) == p.trial.number:
            del self.in_flight[p.key]
        rec = self._record(p, rec)
        if rec.state is TrialState.COMPLETE:
            self.seen.setdefault(p.key, rec.trial)
        self.line(self._line(rec))
        self._release_waiters(p.key, rec)

    def _release_waiters(self, key: str, rec: TrialRecord) -> None:
        """Proposals of this model made while it was in flight: its result, or (if it failed) a run of their own."""
        waiters = self.waiting.pop(key, [])
        if rec.state in (TrialState.COMPLETE, TrialState.STOPPED):
            state = TrialState.DUPLICATE if rec.state is TrialState.COMPLETE else TrialState.STOPPED
            for w in waiters:
                error = f"{rec.error} (the model of trial {rec.trial})" if state is TrialState.STOPPED else ""
                self._record(w, rec.repeat_of(w.trial.number, state, error))
        elif waiters:  # the first runs when a slot is free; the others wait for it
            self.to_run.append(waiters[0])
            self.in_flight[key] = waiters[0].trial.number
            if waiters[1:]:
                self.waiting[key] = waiters[1:]

    def _line(self, rec: TrialRecord) -> str:
        tally = (f"[{self.state.count(TrialState.COMPLETE)} done, {self.state.count(TrialState.FAIL)} failed, "
                 f"{self.state.elapsed:.0f} s]")
        if rec.state is not TrialState.COMPLETE:
            return f"trial {rec.trial}: {'FAILED' if rec.state is TrialState.FAIL else 'STOPPED'}: {rec.error}  {tally}"
        acc, ms, size = rec.objectives
        fp32 = self.state.baselines["fp32"].objectives[1]
        predicted = f" (predicted {rec.predicted_ms:.3f})" if rec.predicted_ms is not None else ""
        return (f"trial {rec.trial}: val {acc:.2f}%  {ms:.3f} ms{predicted} ({fp32 / ms:.2f}x)  {size / 1e6:.3f} MB  "
                f"{tally}")

    def tell(self, number: int) -> None:
        from optuna.trial import TrialState as OptunaState

        trial, rec = self.untold.pop(number)
        if rec.state is TrialState.COMPLETE and rec.reused is None:
            self._learn(rec)
        if rec.state in (TrialState.COMPLETE, TrialState.DUPLICATE):
            self.study.tell(trial, list(rec.objectives))
        else:
            pruned = rec.state in (TrialState.STOPPED, TrialState.SKIPPED)
            self.study.tell(trial, state=OptunaState.PRUNED if pruned else OptunaState.FAIL)

    def _learn(self, rec: TrialRecord) -> None:
        """The latency model's fit takes in a measured trial. Here, in the order trials were asked (not as they
        happen to finish), so that a seed predicts, and skips, the same proposals whatever the timing."""
        if self.predictor is None:
            return
        try:
            self.predictor.learn(*self.space.decode(rec.choices), rec.latency.median_ms)
        except Exception as e:  # noqa: BLE001 - predictions are a report figure; the search goes on without them
            self.line(f"latency model: refit failed ({describe_error(e)}); the search goes on without predictions")
            self.predictor = None

    def tell_up_to(self, k: int) -> bool:
        """Tell the study the results of the first `k` trials asked for; False if one has not finished."""
        first = self.asked[:max(0, k)]
        if any(t.number not in self.state.records for t in first):
            return False
        for t in first:
            if t.number in self.untold:
                self.tell(t.number)
        return True

    def tell_all(self) -> None:
        """The study hears of every finished trial (one left unrun by Ctrl-C stays RUNNING in the journal)."""
        for number in sorted(self.untold):
            self.tell(number)


def _stopped_text(out: StoppedEarly, points: float) -> str:
    return (f"stopped early: {out.val_accuracy:.2f}% validation accuracy (PyTorch) after {out.epochs_done} "
            f"fine-tune epoch(s), below {out.threshold:.2f}% (FP32 - {points:g} points)")


def _rung_text(out: StoppedEarly, r: Rung, predicted: float | None, points: float) -> str:
    return (f"stopped halfway: val {out.val_accuracy:.2f}% after {out.epochs_done} of {out.epochs_planned:g} "
            f"fine-tune epochs; trial {r.trial}, measured {r.latency_ms:.3f} ms <= predicted {predicted:.3f} ms, "
            f"had {r.accuracy:.2f}% then (more than {points:g} points better)")
