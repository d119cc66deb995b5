"""The trial loop: propose -> submit -> collect -> tell, with the in-flight state it needs.

Shaped like Optuna's `_optimize`: `run` is a short loop calling one-screen steps, and every piece of state
lives on the `Scheduler`. What it guarantees:
- a model is built once: a proposal of a model already measured (or built by a baseline) takes that result at
  no cost; one proposed while the same model is in flight waits for it;
- a finished trial's latency is measured while the next trial already fine-tunes (the device pauses trials only
  within its sessions), and the record is on disk before the study hears of it;
- what the sampler knows when it proposes does not depend on timing: the study hears of a result only once
  `concurrency` later trials have been asked for, so a seed proposes the same configurations;
- a failing trial or measurement, or one past the per-trial timeout, is a FAIL record; the search goes on.

Its policies are objects it is given and calls (engine/policies.py): the predictor (each proposal's latency before
it is built), the proposal gates (skip a proposal unbuilt) and the fidelity policy (a trial's halfway bar).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from autocompress.engine.policies import Bar, Candidate, FidelityPolicy, Heard, ProposalGate
from autocompress.engine.state import LatencyBook, RunState, record_of
from autocompress.errors import describe_error
from autocompress.pipeline.trial import StoppedEarly, TrialOutput, TrialSpec
from autocompress.results.records import TrialRecord, TrialState
from autocompress.runtime.executor import Executor
from autocompress.space import SearchSpace
from autocompress.space.keys import config_columns, params_key

__all__ = ["Scheduler", "Limits", "MAX_REPEATS", "MAX_SKIPS"]

MAX_REPEATS = 50  # proposals of already-measured configurations in a row after which the space counts as exhausted
# proposals skipped unbuilt in a row after which the search stops (a skip costs no fine-tune: a tight latency target
# may miss most of the space and still be met)
MAX_SKIPS = 500


@dataclass(frozen=True)
class Limits:
    concurrency: int = 1
    trials: int | None = None  # the budget in trials (COMPLETE + FAIL + STOPPED), or
    deadline: float | None = None  # a perf_counter time after which no trial starts
    max_proposals: int | None = None  # `--sampler grid`: the number of enqueued configurations
    trial_timeout_s: float = 1800.0


@dataclass
class _Proposal:
    trial: Any  # optuna.Trial
    c: Candidate  # its params, model key and predicted latency, as the policies see them
    bar: Bar | None = None  # its halfway bar (the fidelity policy's, set when proposed), or None: it runs in full
    t0: float = 0.0
    out: TrialOutput | None = None
    seconds: float = 0.0  # the pipeline's wall time (without the measurement)


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
    predictor: Any = None  # latency_model.predict.Predictor: each proposal's latency before it trains, or None
    gates: tuple[ProposalGate, ...] = ()  # asked in order; the first to give a reason skips the proposal unbuilt
    fidelity: FidelityPolicy = field(default_factory=FidelityPolicy)  # each proposal's halfway bar
    # the in-flight state
    running: dict = field(default_factory=dict, init=False)  # handle -> _Proposal whose pipeline runs
    measuring: dict = field(default_factory=dict, init=False)  # handle -> _Proposal whose latency is being measured
    in_flight: dict[str, int] = field(default_factory=dict, init=False)  # model key -> the trial running for it
    waiting: dict[str, list] = field(default_factory=dict, init=False)  # model key -> proposals made meanwhile
    to_run: list = field(default_factory=list, init=False)  # such proposals whose model failed: each runs alone
    seen: dict[str, int | str] = field(default_factory=dict, init=False)  # model key -> trial number or baseline
    asked: list = field(default_factory=list, init=False)  # optuna trials in the order asked
    untold: dict[int, tuple] = field(default_factory=dict, init=False)  # trial -> (optuna trial, record) not told
    repeats_in_a_row: int = field(default=0, init=False)
    skips_in_a_row: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        for name, b in self.state.baselines.items():
            if b.state is TrialState.COMPLETE and b.model_key:
                self.seen[b.model_key] = name
        for n, r in sorted(self.state.records.items()):
            if r.state is TrialState.COMPLETE and not r.reused:
                self.seen.setdefault(params_key(self.space, r.choices), n)

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
        bar = p.bar.threshold if p.bar is not None else None
        self.running[self.executor.submit_trial(self.make_spec(p.c.params, bar))] = p
        self.in_flight[p.c.key] = p.trial.number

    def _submit_queued(self) -> None:
        while self.to_run and len(self.running) < self.limits.concurrency:
            self._submit(self.to_run.pop(0))

    def _propose(self, stopping: Callable[[], bool]) -> None:
        while (self.can_start(stopping) and len(self.running) < self.limits.concurrency
               and self.tell_up_to(len(self.asked) - self.limits.concurrency)):
            trial = self.study.ask(self.distributions)
            self.asked.append(trial)
            params = dict(trial.params)
            c = Candidate(trial.number, params, params_key(self.space, params), self._predict(params))
            heard = self._heard()
            self._place(_Proposal(trial, c, self.fidelity.bar(c, heard)), heard)

    def _heard(self) -> Heard:
        """What the study has been told of: the policies judge from it, not from what happens to have finished, so
        a seed skips and stops the same proposals whatever the timing."""
        records = tuple(r for n, r in self.state.records.items() if n not in self.untold)
        measured = []
        for key, owner in self.seen.items():
            rec = self.state.baselines.get(owner) if isinstance(owner, str) else self.state.records.get(owner)
            if rec is not None and rec.measured and owner not in self.untold:
                measured.append((key, owner, rec.latency.median_ms))
        return Heard(records, tuple(measured))

    def _predict(self, params: dict) -> float | None:
        if self.predictor is None:
            return None
        try:
            return self.predictor.predict(params)
        except Exception as e:  # noqa: BLE001 - a prediction is a report figure; the search goes on without it
            self.line(f"latency model: no prediction ({describe_error(e)}); the search goes on without it")
            self.predictor = None
            return None

    def _place(self, p: _Proposal, heard: Heard) -> None:
        """Run a new model; or take the result of a baseline or earlier trial that built it; or wait for it; or skip
        it, unbuilt, when a gate says so."""
        owner = self.seen.get(p.c.key)
        if isinstance(owner, str):  # a baseline built this model: a free, counted trial
            self._record(p, self._reused_baseline(p, owner))
            self.line(f"trial {p.trial.number}: the model of baseline {owner}: its result reused")
        elif owner is not None:
            self._record(p, self.state.records[owner].repeat_of(p.trial.number, TrialState.DUPLICATE))
            self._count_repeat()
        elif p.c.key in self.in_flight:
            self.waiting.setdefault(p.c.key, []).append(p)
            self._count_repeat()
        elif (why := self._verdict(p.c, heard)) is not None:
            self._skip(p, why)
        else:
            self.repeats_in_a_row = self.skips_in_a_row = 0
            self._submit(p)

    def _verdict(self, c: Candidate, heard: Heard) -> str | None:
        """The first gate's reason to skip `c` unbuilt, or None: it is built."""
        for gate in self.gates:
            why = gate.verdict(c, heard)
            if why is not None:
                return why
        return None

    def _skip(self, p: _Proposal, why: str) -> None:
        """Recorded SKIPPED, unbuilt: it costs no fine-tune and does not count in the budget."""
        rec = self._record(p, TrialRecord(p.trial.number, TrialState.SKIPPED, config_columns(self.space, p.c.params),
                                          error=why))
        self.line(f"trial {rec.trial}: {rec.error}")
        self.skips_in_a_row += 1
        if self.skips_in_a_row == MAX_SKIPS:
            self.line(f"the last {MAX_SKIPS} proposals were all skipped unbuilt: stopping (raise --target-latency-ms, "
                      "or widen the space)")

    def _reused_baseline(self, p: _Proposal, name: str) -> TrialRecord:
        b = self.state.baselines[name]
        return TrialRecord(trial=p.trial.number, state=TrialState.COMPLETE,
                           choices=config_columns(self.space, p.c.params),
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
        choices = config_columns(self.space, p.c.params)
        try:
            if handle not in ready:
                self.executor.cancel(handle)
                raise TimeoutError(f"trial exceeded the per-trial timeout of {self.limits.trial_timeout_s:g} s")
            out = self.executor.get(handle)
        except Exception as e:  # noqa: BLE001 - a failing trial never takes the search down
            return TrialRecord(p.trial.number, TrialState.FAIL, choices, duration_s=p.seconds, error=describe_error(e))
        if isinstance(out, StoppedEarly):  # only a trial given a bar stops
            assert p.bar is not None
            return TrialRecord(p.trial.number, TrialState.STOPPED, choices, duration_s=p.seconds,
                               stage_seconds=dict(out.stage_seconds), error=p.bar.stopped_text(out),
                               halfway_accuracy=round(out.val_accuracy, 4))
        lat = self.latency.cached(out.onnx_bytes)
        if lat is None:  # measured in the background; the record is written when the figure arrives
            p.out, p.t0 = out, now
            self.measuring[self.executor.submit_measure(out.onnx_bytes)] = p
            return None
        out.stage_seconds["measure"] = 0.0
        return self._complete(p, out, lat)

    def _measured(self, p: _Proposal, handle, ready: set, now: float) -> TrialRecord:
        assert p.out is not None
        try:
            if handle not in ready:
                raise TimeoutError(f"no figure from the device within the per-trial timeout of "
                                   f"{self.limits.trial_timeout_s:g} s")
            lat = self.latency.measured(p.out.onnx_bytes, self.executor.get(handle))
        except Exception as e:  # noqa: BLE001 - a failing measurement fails its trial, not the search
            return TrialRecord(p.trial.number, TrialState.FAIL, config_columns(self.space, p.c.params),
                               duration_s=p.seconds, error=f"latency measurement failed: {describe_error(e)}")
        p.out.stage_seconds["measure"] = round(now - p.t0, 3)
        return self._complete(p, p.out, lat)

    def _complete(self, p: _Proposal, out: TrialOutput, lat) -> TrialRecord:
        onnx = self.state.write_model(f"trial-{p.trial.number:04d}", out.onnx_bytes)
        return record_of(p.trial.number, out, lat, onnx, p.seconds, choices=config_columns(self.space, p.c.params))

    # ------------------------------------------------------------------ finish and tell
    def _record(self, p: _Proposal, rec: TrialRecord) -> TrialRecord:
        """On disk first, then queued for the study."""
        if p.c.predicted is not None and rec.predicted_ms is None:
            rec = replace(rec, predicted_ms=p.c.predicted)
        self.state.put(rec)
        self.untold[rec.trial] = (p.trial, rec)
        return rec

    def _finish(self, p: _Proposal, rec: TrialRecord) -> None:
        if self.in_flight.get(p.c.key) == p.trial.number:
            del self.in_flight[p.c.key]
        rec = self._record(p, rec)
        if rec.state is TrialState.COMPLETE:
            self.seen.setdefault(p.c.key, rec.trial)
        self.line(self._line(rec))
        self._release_waiters(p.c.key, rec)

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
            self.predictor.learn(*self.space.decode(rec.choices), rec.latency.median_ms,
                                 dropped=self.space.dropped(rec.choices))
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

