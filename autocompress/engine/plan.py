"""From the caller's objects to a `Prepared` search: options -> SearchConfig, model and data -> checked splits,
then `prepare` (engine/prepare.py). The library, the CLI and finalize all come through here."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pydantic import ValidationError

from autocompress.config import Budget, SearchConfig, config_error, parse_budget
from autocompress.errors import ConfigError, ModelError

if TYPE_CHECKING:  # torch loads when a search starts, not when autocompress is imported
    import torch

    from autocompress.tasks.datasets import DataLike
    from autocompress.tasks.preprocess import Preprocessing

__all__ = ["plan", "make_config"]

_ARGUMENTS = ("budget", "space", "out")  # SearchConfig keys that are named arguments of `search`


def make_config(*, budget: int | str | Budget | None, space: str | Path | None, out: str | Path | None,
                base: dict | None = None, **options: Any) -> SearchConfig:
    """A validated SearchConfig from keyword options (the keys of SearchConfig); a partial `finetune`, `baseline`
    or `latency` mapping keeps the other defaults. Raises ConfigError naming an unknown key or a bad value."""
    defaults = SearchConfig().model_dump()
    unknown = [k for k in options if k not in defaults or k in _ARGUMENTS]
    if unknown:
        allowed = ", ".join(k for k in defaults if k not in _ARGUMENTS)
        raise ConfigError(f"{unknown[0]!r} is not an option of autocompress.search; the options are {allowed}")
    data = {**(base or {}), **options}
    for section in ("baseline", "finetune", "latency"):
        if isinstance(data.get(section), dict):
            data[section] = {**(base or defaults)[section], **data[section]}
    if budget is not None:
        data["budget"] = budget.model_dump() if isinstance(budget, Budget) else parse_budget(budget).model_dump()
    if space is not None:
        data["space"] = space
    if out is not None:
        data["out"] = out
    try:
        return SearchConfig.model_validate(data)
    except ValidationError as e:
        raise config_error(e, "the options of autocompress.search") from None


def _model_label(model: torch.nn.Module | str) -> str:
    import torch

    if isinstance(model, str):
        return model
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"model is a {type(model).__name__}; pass a trained torch.nn.Module, a model name "
                         "(`autocompress models`) or 'path/to/file.py:function'")
    return type(model).__name__


def plan(model: torch.nn.Module | str, train_data: DataLike, val_data: DataLike, *, test_data: DataLike | None = None,
         calib_data: DataLike | None = None, budget: int | str | Budget | None = 40, space: str | Path | None = None,
         out: str | Path | None = None, resume: bool = False, log: Callable[[str], None] = print,
         preprocessing: Preprocessing | dict | None = None, **options: Any):
    """Everything `search` checks before it writes anything: the config, the data, the model and the search space.
    Returns the `Prepared` search (`.describe()` is what `autocompress search --dry-run` prints)."""
    from autocompress.engine.prepare import load_resume_config, prepare
    from autocompress.tasks.datasets import splits_from_data

    label = _model_label(model)
    if resume:
        if out is None:
            raise ConfigError("resume=True needs out=, the run directory to continue")
        stored = load_resume_config(out).model_dump(mode="json")
        config = make_config(budget=budget, space=None, out=out, base=stored, **options)
    else:
        options.setdefault("model", label)
        options.setdefault("dataset", "custom")
        config = make_config(budget=budget, space=space, out=out, **options)
    splits = splits_from_data(train_data, val_data, test=test_data, calib=calib_data, caps=config.max_images,
                              seed=config.seed, num_classes=_outputs(model, train_data),
                              name=config.dataset, log=log, workers=config.data_workers, augment=config.augment)
    if preprocessing is not None:  # what the user's Datasets do to an image: recorded, and written by pick --export
        splits.preprocessing = _preprocessing(preprocessing)
    return prepare(config, splits, config.model if isinstance(model, str) else model, resume=resume)


def _preprocessing(given: Preprocessing | dict) -> Preprocessing:
    from autocompress.tasks.preprocess import Preprocessing

    if isinstance(given, Preprocessing):
        return given
    try:
        return Preprocessing.from_dict(given)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"preprocessing={given!r} is not a preprocessing ({type(e).__name__}: {e}); give a dict "
                          "with resize, crop, mean, std (e.g. resize=146, crop=128, mean=[0.485, 0.456, 0.406], "
                          "std=[0.229, 0.224, 0.225]) or an autocompress Preprocessing") from None


def _outputs(model: torch.nn.Module | str, data: DataLike) -> int | None:
    """The number of classes a model object predicts (its output width on one training image), if it says."""
    import torch

    if isinstance(model, str):
        return None
    try:
        item = next(iter(data)) if isinstance(data, torch.utils.data.DataLoader) else data[0]
        x = item[0] if isinstance(data, torch.utils.data.DataLoader) else torch.as_tensor(item[0]).unsqueeze(0)
        with torch.no_grad():
            out = model.eval()(x[:1].float())
        return int(out.shape[1]) if isinstance(out, torch.Tensor) and out.dim() == 2 else None
    except Exception:  # noqa: BLE001 - the same forward pass is checked, with a clear error, by prepare()
        return None
