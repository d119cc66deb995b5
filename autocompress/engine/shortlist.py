"""The funnel's shortlist: the best-scored candidates of each latency target (`promote`), and their short fine-tunes
(`ShortStage`: successive halving), whose accuracy chooses the ones the trials fine-tune to the end."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

from autocompress.pipeline.trial import TrialSpec
from autocompress.results.funnel import FunnelBook, Scored
from autocompress.runtime.executor import Executor

__all__ = ["promote", "ShortStage"]


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
