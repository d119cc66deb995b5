"""The library entry point: a trained model and its data in, the Pareto-optimal compressed models out.

    result = autocompress.search(model, train_data, val_data, budget=20)
    choice = result.pick(max_latency_ms=0.5)

The CLI builds the model and Datasets from its flags and calls this same function.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from autocompress.config import Budget
from autocompress.engine.plan import plan

if TYPE_CHECKING:  # torch, pandas and Ray load when a search starts, not when autocompress is imported
    import torch

    from autocompress.api._result import SearchResult
    from autocompress.tasks.datasets import DataLike
    from autocompress.tasks.preprocess import Preprocessing

__all__ = ["search", "load_run"]


def load_run(run_dir: str | Path) -> SearchResult:
    """The SearchResult of a run directory written by a search (finished, stopped or interrupted)."""
    from autocompress.api._result import load_run as _load

    return _load(run_dir)


def search(model: torch.nn.Module | str, train_data: DataLike, val_data: DataLike, *,
           test_data: DataLike | None = None, calib_data: DataLike | None = None,
           budget: int | str | Budget | None = 40, space: str | Path | None = None, out: str | Path | None = None,
           resume: bool = False, progress: bool = True, log: Callable[[str], None] = print,
           preprocessing: Preprocessing | dict | None = None, **options: Any) -> SearchResult:
    """Search per-layer pruning and precision for `model`; every figure measured on the exported ONNX file.

    model: the trained FP32 model (an `nn.Module`; nothing is retrained), or a name / 'file.py:function' as on the
        CLI (then weights=... loads its weights, else it is trained on train_data and cached).
    train_data, val_data, test_data, calib_data: `Dataset`s yielding (image_tensor C x H x W, label), or
        `DataLoader`s of such batches, preprocessed as the model expects. Fine-tuning uses train_data; the search
        ranks on val_data; test_data is only reported (none: half of val_data is held out); calibration uses
        calib_data (none: training images). Never validate on images the model was trained on.
    budget: trials (40) or a duration ('30m', '1h30m'). space: a search-space YAML (default: the packaged one).
    out: the run directory (default reports/<model>-<dataset>-<time>). resume: continue the run in `out`.
    preprocessing: what your Datasets do to an image (a dict with resize, crop, mean, std, or a `Preprocessing`),
        recorded in the run and written beside the model by `pick --export`: the deployed model needs the same.
    options: the other keys of `SearchConfig` (e.g. seed=1, concurrency=2, finetune={"epochs": 3}).

    Raises AutocompressError (one line: the problem and the fix) for bad input, before anything is written.
    """
    from autocompress.engine.run import run_search
    from autocompress.report import write_report

    prepared = plan(model, train_data, val_data, test_data=test_data, calib_data=calib_data, budget=budget,
                    space=space, out=out, resume=resume, log=log, preprocessing=preprocessing, **options)
    rd = run_search(prepared, progress=progress, log=log)
    write_report(rd)
    return load_run(rd.path)
