"""The funnel's shortlist: the best-scored candidates of each latency target (`promote`), and their short fine-tunes
(`ShortStage`: successive halving), whose accuracy chooses the ones the trials fine-tune to the end."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Callable, Iterable

from autocompress.pipeline.trial import TrialSpec
from autocompress.results.funnel import FunnelBook, Scored
from autocompress.runtime.executor import Executor

__all__ = ["promote", "gain_over_uniform", "ShortStage"]


def promote(rows: list[Scored], n_targets: int, per_target: int,
            key: Callable[[Scored], tuple] = Scored.rank_key,
            order: Callable[[Scored], float] | None = None) -> list[Scored]:
    """The best `per_target` distinct models of each target by `key` (higher is better; default: the score),
    ordered best of every target first (then the second best of each...), so a small trial budget still covers the
    whole ladder; within each of those rounds, by `order` (higher first; None: the targets' order)."""
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
    rounds = [[r[i] for r in ranked if i < len(r)] for i in range(per_target)]
    if order is not None:
        rounds = [sorted(picks, key=order, reverse=True) for picks in rounds]
    return [s for picks in rounds for s in picks]


def gain_over_uniform(rows: Iterable[Scored]) -> Callable[[Scored], float]:
    """How far a candidate's score beats uniform compression at its predicted latency: the uniform ladder's loss
    there (its scored rungs' front, interpolated in log-latency; flat beyond its ends) minus the candidate's. The
    best loss of a target is its slowest model's as a rule, no better than the uniform rung beside it; this asks
    what pruning unevenly buys at the same speed. 0 for every candidate when no uniform rung was scored."""
    points = sorted((s.predicted_ms, s.loss) for s in rows
                    if s.origin == "uniform" and s.scored and s.predicted_ms and s.loss is not None)
    front: list[tuple[float, float]] = []  # fastest first; each slower point has a lower loss
    for ms, loss in points:
        if not front or loss < front[-1][1]:
            front.append((math.log(ms), loss))

    def gain(s: Scored) -> float:
        if not front or s.loss is None or not s.predicted_ms:
            return 0.0
        x = math.log(s.predicted_ms)
        if x <= front[0][0]:
            return front[0][1] - s.loss
        for (x0, y0), (x1, y1) in pairwise(front):
            if x <= x1:
                return y0 + (y1 - y0) * (x - x0) / (x1 - x0) - s.loss
        return front[-1][1] - s.loss

    return gain


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
