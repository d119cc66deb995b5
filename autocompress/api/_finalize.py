"""`autocompress.finalize`: a searched model fine-tuned for longer, measured like a trial, and the run's report
written again with it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

    from autocompress.engine.final import FinalModel
    from autocompress.tasks.datasets import DataLike

__all__ = ["finalize"]


def finalize(run_dir: str | Path, *, trial: int | None = None, max_latency_ms: float | None = None,
             min_accuracy: float | None = None, epochs: int | None = None, name: str | None = None,
             model: torch.nn.Module | None = None, train_data: DataLike | None = None,
             val_data: DataLike | None = None, test_data: DataLike | None = None, calib_data: DataLike | None = None,
             rounds: int = 3, progress: bool = True, log: Callable[[str], None] = print) -> FinalModel:
    """Fine-tune trial `trial` of the run (or the model `pick` chooses under `max_latency_ms` / `min_accuracy`)
    for longer and ship it as `RUN/final/<name>/model.onnx`, measured like a trial; the run's report then shows it.

    epochs: default about 100,000 images seen, 10 to 30 epochs. name: its folder (default `trial<N>`).
    model, train_data, val_data, test_data, calib_data: a run searched on a model object and Datasets needs them
        again; a run of the CLI rebuilds them from its config.
    rounds: latency rounds of the final model, FP32 and the trial, measured together.

    The same as `autocompress finalize RUN_DIR --trial N`; a stopped or killed finalize resumes from its last epoch
    when called again."""
    from autocompress.engine.final import finalize as _finalize
    from autocompress.report import write_report

    final = _finalize(run_dir, trial=trial, max_latency_ms=max_latency_ms, min_accuracy=min_accuracy, epochs=epochs,
                      name=name, model=model, train_data=train_data, val_data=val_data, test_data=test_data,
                      calib_data=calib_data, rounds=rounds, progress=progress, log=log)
    write_report(run_dir)
    return final
