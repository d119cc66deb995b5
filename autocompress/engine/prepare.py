"""Everything that can be wrong with the user's input is found here, before a search writes anything: the config,
the data, the model (it runs, exports, and fits the data's classes) and the search space built from its real
prunable groups and quantizable layers."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from autocompress.config import SearchConfig
from autocompress.errors import DataError, ModelError, RunError
from autocompress.results.rundir import RunDir
from autocompress.runtime import cluster
from autocompress.space import SearchSpace, build_space, load_space_file
from autocompress.tasks.data import Splits

__all__ = ["Prepared", "prepare", "load_resume_config"]


@dataclass
class Prepared:
    config: SearchConfig
    splits: Splits
    space: SearchSpace
    model: torch.nn.Module  # the FP32 baseline, or (trained=False) the untrained model to train on the data
    trained: bool
    run_dir: Path
    run_name: str
    resume: bool = False

    def describe(self) -> dict:
        """What --dry-run prints: the resolved config and the search space."""
        return {
            "config": self.config.dump(), "run_dir": str(self.run_dir), "splits": self.splits.sizes(),
            "input_shape": list(self.splits.input_shape), "search_space": self.space.describe(),
            "optuna_params": len(self.space.params()), "excluded_layers": self.space.excluded,
            "pruning_limits": self.space.pruning_limits,
        }


def load_resume_config(run_dir: str | Path, *, budget=None) -> SearchConfig:
    """The stored config of a run to resume; `budget` (a Budget) replaces the stored one when given."""
    rd = RunDir(Path(run_dir))
    if not rd.path.is_dir():
        raise RunError(f"--resume {str(run_dir)!r}: no such run directory; pass the directory of an earlier search")
    for needed in (rd.config, rd.meta):
        if not needed.is_file():
            raise RunError(f"--resume {str(run_dir)!r} has no {needed.name}; it was not written by "
                           "`autocompress search`, start a new search instead")
    data = rd.read_json(rd.config)
    data["out"] = str(rd.path)
    if budget is not None:
        data["budget"] = budget.model_dump()
    return SearchConfig.model_validate(data)


def _check_forward(model: torch.nn.Module, splits: Splits, label: str) -> None:
    try:
        with torch.no_grad():
            out = model.eval()(splits.val.images(1))
    except Exception as e:  # noqa: BLE001 - any failure here means the model cannot take the data
        raise ModelError(f"model {label!r} cannot take inputs of shape {tuple(splits.input_shape)}: "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; "
                         "choose another --input-size or model") from e
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] < splits.num_classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"model {label!r} returns {shape} for one image, but the data has {splits.num_classes} "
                         "classes; the model must return one logit per class (N x classes)")


def _space(config: SearchConfig, model: torch.nn.Module, splits: Splits) -> SearchSpace:
    """The model's real groups and quantizable layers with the YAML's choices (the structure of an untrained
    model is the trained one's, so a bad rule fails before any training)."""
    from autocompress.measure.cache import cache_dir
    from autocompress.pipeline.prune import find_groups
    from autocompress.space.group_check import limit_to_safe_groups
    from autocompress.space.layers import quantizable_layers

    space_file = load_space_file(config.space)
    example = splits.val.images(1)
    try:
        layers, excluded = quantizable_layers(model, example)
    except Exception as e:  # noqa: BLE001 - an export failure is a property of the user's model
        raise ModelError(f"cannot export model {config.model!r} to ONNX: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}; autocompress needs a model torch.onnx can export"
                         ) from e
    untraceable = {}
    try:
        groups = find_groups(model, example)
    except Exception as e:  # noqa: BLE001 - partial support: search precisions only, and say why
        groups = []
        untraceable["(all groups)"] = (f"torch-pruning cannot trace the model ({type(e).__name__}: "
                                       f"{' '.join(str(e).split())[:200]}); "
                                       "no layer is pruned, precisions are still searched")
    parts = sorted({g.part for g in groups if g.part})
    if parts:
        untraceable["(whole model)"] = (f"torch-pruning cannot trace the model as a whole; channels are cut only "
                                        f"within the {len(parts)} parts it can trace ({', '.join(parts[:3])}, ...)")
    blocks = _blocks(model, example) if space_file.depth.blocks else []
    space = build_space(space_file, groups, layers, source=str(config.space or "the default search space"),
                        blocks=blocks)
    space, limited = limit_to_safe_groups(space, model, example, cache_dir())
    return replace(space, excluded=excluded, pruning_limits={**untraceable, **limited})


def _blocks(model: torch.nn.Module, example: torch.Tensor) -> list:
    """The removable residual blocks (pipeline/blocks.py); none when the model cannot be traced for them."""
    from autocompress.pipeline.blocks import removable_blocks

    try:
        return removable_blocks(model, example)
    except Exception:  # noqa: BLE001 - depth is a lever the search goes without
        return []


def _run_dir(config: SearchConfig, resume: bool) -> tuple[Path, str]:
    if resume:
        run_dir = Path(config.out)  # type: ignore[arg-type]
        return run_dir, RunDir(run_dir).read_json(RunDir(run_dir).meta)["run_name"]
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_name = config.run_name or f"{Path(config.model).name.replace(':', '-')}-{config.dataset}-{stamp}"
    run_dir = Path(config.out) if config.out else Path("reports") / run_name
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"--out {run_dir} is a file; pass a directory for the run (it is created if missing)")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"run directory {str(run_dir)!r} already exists and is not empty; pass another --out, "
                       f"remove it, or continue it with --resume {run_dir}")
    return run_dir, run_name


def prepare(config: SearchConfig, splits: Splits, model: torch.nn.Module | str, *, resume: bool = False) -> Prepared:
    """Everything that can be wrong with the user's input is found here, before anything is written. `model` is
    the trained FP32 model, or a name (built here; its weights from config.weights, else trained later)."""
    from autocompress.tasks.models import build_model

    if config.num_classes is not None and config.num_classes != splits.num_classes:
        raise DataError(f"--num-classes {config.num_classes} does not match the data: {config.dataset} has "
                        f"{splits.num_classes} classes; drop --num-classes or point --data-dir at the right data")
    trained = not isinstance(model, str)
    if isinstance(model, str):
        model = build_model(model, num_classes=splits.num_classes, in_channels=splits.input_shape[0])
        if config.weights is not None:
            from autocompress.tasks.weights import load_weights

            load_weights(model, config.weights)  # fails now, before anything is written, if they do not fit
            trained = True
    model.eval()
    _check_forward(model, splits, config.model)
    space = _space(config, model, splits)
    if config.ray_address:
        cluster.check_ray_address(config.ray_address)
    elif config.train_device == "cuda":  # a cluster's GPUs are known once joined (engine/run.py checks them)
        from autocompress.pipeline.devices import resolve_train_device

        resolve_train_device("cuda", torch.cuda.device_count())
    run_dir, run_name = _run_dir(config, resume)
    return Prepared(config, splits, space, model, trained, run_dir, run_name, resume=resume)
