"""The library entry points: a trained model and its data in, the Pareto-optimal compressed models out.

    config = autocompress.SearchConfig(budget=20, seed=1)
    result = autocompress.search(model, train_data, val_data, config=config, concurrency=2)
    choice = result.pick(max_latency_ms=0.5)
    result = autocompress.resume(result.run_dir, budget=40)  # after Ctrl-C, a kill or a crash

The CLI builds its SearchConfig from its flags, the model and Datasets from it, and calls these same functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from autocompress.engine.plan import plan, plan_resume

if TYPE_CHECKING:  # torch, pandas and Ray load when a search starts, not when autocompress is imported
    import torch

    from autocompress.api._result import SearchResult
    from autocompress.config import SearchConfig
    from autocompress.engine.prepare import Prepared
    from autocompress.tasks.datasets import DataLike
    from autocompress.tasks.preprocess import Preprocessing

__all__ = ["search", "resume", "load_run"]


def load_run(run_dir: str | Path) -> SearchResult:
    """The SearchResult of a run directory written by a search (finished, stopped or interrupted)."""
    from autocompress.api._result import load_run as _load

    return _load(run_dir)


def search(model: torch.nn.Module | str, train_data: DataLike, val_data: DataLike, *,
           test_data: DataLike | None = None, calib_data: DataLike | None = None,
           config: SearchConfig | None = None, progress: bool = True, log: Callable[[str], None] = print,
           preprocessing: Preprocessing | dict | None = None, **overrides: Any) -> SearchResult:
    """Search per-layer pruning and precision for `model`; every figure measured on the exported ONNX file.

    model: the trained FP32 model (an `nn.Module`; nothing is retrained), or a name / 'file.py:function' as on the
        CLI (then weights=... loads its weights, else it is trained on train_data and cached).
    train_data, val_data, test_data, calib_data: `Dataset`s yielding (image_tensor C x H x W, label), or
        `DataLoader`s of such batches, preprocessed as the model expects (a loader's sampler selects the images).
        Fine-tuning uses train_data, in its DataLoader's batch_size unless finetune={'batch_size': ...} says one;
        the search ranks on val_data; test_data is only reported (none: half of val_data is held out);
        calibration uses calib_data (none: training images). Never validate on images the model was trained on.
    config: an `autocompress.SearchConfig` (default: `SearchConfig()`); its `model` is the model given here, and
        its `dataset` is `custom` unless you name it.
    overrides: keys of `SearchConfig` applied over `config`, e.g. budget=20 (trials, the default 12) or
        budget='30m' (a duration), space='my.yaml', out='runs/x' (default reports/<model>-<dataset>-<time>),
        seed=1, concurrency=2, finetune={'epochs': 3} (a partial section keeps the other keys).
    progress: a live progress bar. log: where progress lines go.
    preprocessing: what your Datasets do to an image (a dict with resize, crop, mean, std, or a `Preprocessing`),
        recorded in the run and written beside the model by `pick --export`: the deployed model needs the same.

    Continue a stopped run with `autocompress.resume(run_dir)`. Raises AutocompressError (one line: the problem
    and the fix) for bad input, before anything is written.
    """
    prepared = plan(model, train_data, val_data, test_data=test_data, calib_data=calib_data, config=config, log=log,
                    preprocessing=preprocessing, **overrides)
    return _run(prepared, progress, log)


def resume(run_dir: str | Path, *, model: torch.nn.Module | None = None, train_data: DataLike | None = None,
           val_data: DataLike | None = None, test_data: DataLike | None = None, calib_data: DataLike | None = None,
           progress: bool = True, log: Callable[[str], None] = print, **overrides: Any) -> SearchResult:
    """Continue the search in `run_dir` (stopped by Ctrl-C, interrupted, killed or crashed): no finished trial is
    lost or run again, and the budget counts what was already spent.

    model, train_data, val_data, test_data, calib_data: a run searched on a model object and Datasets needs them
        again (the same ones); a run of the CLI rebuilds them from its config.
    overrides: keys of `SearchConfig` over the run's stored config, e.g. budget=40 (a new total); not `out` or
        `space`.

    The same as `autocompress search --resume RUN_DIR [--budget B]`.
    """
    prepared = plan_resume(run_dir, model=model, train_data=train_data, val_data=val_data, test_data=test_data,
                           calib_data=calib_data, log=log, **overrides)
    return _run(prepared, progress, log)


def _run(prepared: Prepared, progress: bool, log: Callable[[str], None]) -> SearchResult:
    from autocompress.engine.run import run_search
    from autocompress.report import write_report

    rd = run_search(prepared, progress=progress, log=log)
    write_report(rd)
    return load_run(rd.path)
