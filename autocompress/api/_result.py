"""What a search returns, and what `load_run` reads back from a finished run directory: the same object."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pandas as pd

from autocompress.results.pareto import pareto_front
from autocompress.results.pick import PickedModel, channels_before, choose, with_finals
from autocompress.results.records import TrialRecord
from autocompress.results.rundir import RunDir

if TYPE_CHECKING:
    import torch

    from autocompress.engine.final import FinalModel
    from autocompress.tasks.datasets import DataLike

__all__ = ["SearchResult", "load_run"]


@dataclass(frozen=True)
class SearchResult:
    run_dir: Path
    trials: pd.DataFrame  # every trial: one row each, the columns of trials.csv
    pareto: pd.DataFrame  # the Pareto-optimal trials (validation accuracy up, latency down, size down), fastest first
    baselines: dict[str, TrialRecord]  # fp32, int8, prune25-int8, prune50-int8 (those the run measured)
    report: Path  # report.html
    meta: dict  # meta.json: device, splits, space, status, timings

    def pick(self, *, max_latency_ms: float | None = None, min_accuracy: float | None = None,
             max_size_mb: float | None = None) -> PickedModel | None:
        """The most accurate Pareto model (validation accuracy; ties: faster) within every given constraint, with
        its configuration; None if no Pareto model meets them. The same as `autocompress pick RUN_DIR`."""
        fp32 = self.baselines["fp32"].to_row()
        return choose(with_finals(self.trials, self.run_dir), fp32, self.run_dir, channels_before(self.meta),
                      max_latency_ms=max_latency_ms, min_accuracy=min_accuracy, max_size_mb=max_size_mb).chosen

    def finalize(self, *, trial: int | None = None, max_latency_ms: float | None = None,
                 min_accuracy: float | None = None, epochs: int | None = None, name: str | None = None,
                 model: torch.nn.Module | None = None, train_data: DataLike | None = None,
                 val_data: DataLike | None = None, test_data: DataLike | None = None,
                 calib_data: DataLike | None = None, rounds: int = 3, progress: bool = True,
                 log: Callable[[str], None] = print) -> FinalModel:
        """`autocompress.finalize` on this run: the trial's configuration fine-tuned for longer, measured like
        a trial, written to `run_dir/final/<name>/`."""
        from autocompress.api._finalize import finalize

        return finalize(self.run_dir, trial=trial, max_latency_ms=max_latency_ms, min_accuracy=min_accuracy,
                        epochs=epochs, name=name, model=model, train_data=train_data, val_data=val_data,
                        test_data=test_data, calib_data=calib_data, rounds=rounds, progress=progress, log=log)


def load_run(run_dir: str | Path) -> SearchResult:
    """The result of a run directory written by a search (finished, stopped or interrupted)."""
    rd = RunDir.open(run_dir)
    table = rd.read_table()
    baselines = {k: TrialRecord.from_row(v) for k, v in rd.read_json(rd.baselines_json).items()}
    return SearchResult(run_dir=rd.path, trials=table, pareto=pareto_front(table), baselines=baselines,
                        report=rd.report_html, meta=rd.read_json(rd.meta))
