"""From the caller's objects to a `Prepared` search: a SearchConfig (given, with overrides), model and data ->
checked splits, then `prepare` (engine/prepare.py). A new search comes through `plan`; a resumed one, and
finalize, through `plan_resume`, which rebuilds a CLI run's model and data from its stored config."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from pydantic import ValidationError

from autocompress.config import Budget, SearchConfig, config_error, parse_budget
from autocompress.errors import ConfigError, ModelError

if TYPE_CHECKING:  # torch loads when a search starts, not when autocompress is imported
    import torch

    from autocompress.engine.prepare import Prepared
    from autocompress.tasks.datasets import DataLike
    from autocompress.tasks.preprocess import Preprocessing

__all__ = ["plan", "plan_resume", "make_config"]

_SECTIONS = ("baseline", "finetune", "latency", "max_images", "funnel")  # a partial mapping keeps the base's other keys
_FIXED_ON_RESUME = ("out", "space")  # a resumed run stays in its directory, on the space its study was made on


def make_config(overrides: Mapping[str, Any] | None = None, *, base: SearchConfig | None = None,
                caller: str = "autocompress.search") -> SearchConfig:
    """`base` (default: SearchConfig()) with `overrides`, keys of SearchConfig, validated; a partial `finetune`,
    `baseline`, `latency` or `max_images` mapping keeps the base's other keys. Raises ConfigError naming an unknown
    key or a bad value (`caller` is the function the message names)."""
    overrides = dict(overrides or {})
    if base is not None and not isinstance(base, SearchConfig):
        raise ConfigError(f"config= is a {type(base).__name__}; pass an autocompress.SearchConfig "
                          "(e.g. SearchConfig(seed=1, finetune={'epochs': 3})) or give its keys as keyword arguments")
    if "resume" in overrides:
        raise ConfigError("resume= is not an option of autocompress.search; continue a run with "
                          "autocompress.resume(run_dir) (or `autocompress search --resume RUN_DIR`)")
    base_data = (base or SearchConfig()).model_dump()
    unknown = [k for k in overrides if k not in base_data]
    if unknown:
        allowed = ", ".join(k for k in base_data if k != "model")  # the model is an argument of its own
        raise ConfigError(f"{unknown[0]!r} is not an option of {caller}; the options are {allowed}")
    if not overrides and base is not None:
        return base
    data = {**base_data, **overrides}
    for section in _SECTIONS:
        if isinstance(overrides.get(section), dict):
            data[section] = {**base_data[section], **overrides[section]}
    budget = overrides.get("budget")
    if isinstance(budget, (int, str)) and not isinstance(budget, bool):
        data["budget"] = parse_budget(budget)  # its own message, naming the budget given
    elif isinstance(budget, Budget):
        data["budget"] = budget.model_dump()
    try:
        return SearchConfig.model_validate(data)
    except ValidationError as e:
        raise config_error(e, f"the options of {caller}") from None


def _model_label(model: torch.nn.Module | str) -> str:
    import torch

    if isinstance(model, str):
        return model
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"model is a {type(model).__name__}; pass a trained torch.nn.Module, a model name "
                         "(`autocompress models`) or 'path/to/file.py:function'")
    return type(model).__name__


def plan(model: torch.nn.Module | str, train_data: DataLike, val_data: DataLike, *, test_data: DataLike | None = None,
         calib_data: DataLike | None = None, config: SearchConfig | None = None, log: Callable[[str], None] = print,
         preprocessing: Preprocessing | dict | None = None, **overrides: Any) -> Prepared:
    """Everything a new search checks before it writes anything: the config (`config` with `overrides`), the data,
    the model and the search space. The config's `model` is the model given (a name, or the object's class name);
    its `dataset` is `custom` unless the caller named it. Returns the `Prepared` search (`.describe()` is what
    `autocompress search --dry-run` prints)."""
    named = {"model": _model_label(model)}
    given = config.model_fields_set if isinstance(config, SearchConfig) else set()
    if "dataset" not in overrides and "dataset" not in given:
        named["dataset"] = "custom"  # Datasets given in Python: a resume or finalize needs them again
    if isinstance(config, SearchConfig):  # a config that already says so passes through unchanged
        named = {k: v for k, v in named.items() if getattr(config, k) != v}
    config = make_config({**named, **overrides, **_loader_batch(train_data, config, overrides, log)}, base=config)
    return _prepare(model if not isinstance(model, str) else config.model,
                    {"train": train_data, "val": val_data, "test": test_data, "calib": calib_data}, config, log,
                    preprocessing=preprocessing, resume=False)


def _loader_batch(train_data: DataLike, config: SearchConfig | None, overrides: dict, log: Callable[[str], None]
                  ) -> dict:
    """A training DataLoader's batch size is the fine-tune's, unless the config or an override sets one."""
    from torch.utils.data import DataLoader

    size = train_data.batch_size if isinstance(train_data, DataLoader) else None
    if size is None:
        return {}
    given = overrides.get("finetune")
    said = given is not None and (not isinstance(given, dict) or "batch_size" in given)
    # a config of the wrong type is refused by make_config, with its own message
    said = said or (isinstance(config, SearchConfig) and "batch_size" in config.finetune.model_fields_set)
    if said:
        return {}
    log(f"fine-tuning in batches of {size}, the training DataLoader's batch_size")
    return {"finetune": {**(given or {}), "batch_size": size}}


def plan_resume(run_dir: str | Path, *, model: torch.nn.Module | None = None, train_data: DataLike | None = None,
                val_data: DataLike | None = None, test_data: DataLike | None = None,
                calib_data: DataLike | None = None, log: Callable[[str], None] = print,
                recorded_preprocessing: bool = False, **overrides: Any) -> Prepared:
    """A stopped, interrupted or killed run made ready to go on: its stored config with `overrides` (e.g. a new
    budget), and its model and data again. A run searched on a model object and Datasets needs them again
    (`model=`, `train_data=`, `val_data=`, ...); a run of the CLI rebuilds them from its config, with the
    preprocessing it recorded when `recorded_preprocessing` (finalize: other caps would give other mean/std than
    the model that ships was searched and exported with)."""
    from autocompress.engine.prepare import load_resume_config
    from autocompress.results.rundir import RunDir

    fixed = [k for k in _FIXED_ON_RESUME if k in overrides]
    if fixed:
        raise ConfigError(f"{fixed[0]}= cannot change when a run is resumed: it goes on in its own directory, on "
                          "the search space its study was made on; start a new search for another")
    config = make_config(overrides, base=load_resume_config(run_dir), caller="autocompress.resume")
    rd = RunDir(Path(run_dir))
    if model is None and rd.read_json(rd.meta).get("baseline", {}).get("path") == "(the model object given)":
        raise ConfigError(f"{rd.path} was searched on a model object: pass the same trained model again "
                          "(model=model, train_data=..., val_data=...)")
    if train_data is not None or val_data is not None or config.dataset == "custom":
        if train_data is None or val_data is None:
            raise ConfigError(f"{rd.path} was searched on Datasets given in Python: pass them again "
                              "(train_data=, val_data=, and test_data= if the search had it)")
        data = {"train": train_data, "val": val_data, "test": test_data, "calib": calib_data}
    else:
        from autocompress.tasks.data import dataset_of_config
        from autocompress.tasks.preprocess import Preprocessing

        recorded = rd.read_json(rd.meta).get("preprocessing") if recorded_preprocessing else None
        data = dataset_of_config(config, recorded=Preprocessing.from_dict(recorded) if recorded else None).datasets()
    if model is not None:
        _model_label(model)  # a clear error for something that is not a model
    return _prepare(model if model is not None else config.model, data, config, log, preprocessing=None, resume=True)


def _prepare(model: torch.nn.Module | str, data: dict[str, DataLike | None], config: SearchConfig,
             log: Callable[[str], None], *, preprocessing: Preprocessing | dict | None, resume: bool) -> Prepared:
    from autocompress.engine.prepare import prepare
    from autocompress.tasks.datasets import splits_from_data

    splits = splits_from_data(data["train"], data["val"], test=data["test"], calib=data["calib"],
                              caps=config.max_images, seed=config.data_seed, num_classes=_outputs(model, data["train"]),
                              name=config.dataset, log=log, workers=config.data_workers, augment=config.augment)
    if preprocessing is not None:  # what the user's Datasets do to an image: recorded, and written by pick --export
        splits.preprocessing = _preprocessing(preprocessing)
    return prepare(config, splits, model, resume=resume)


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
