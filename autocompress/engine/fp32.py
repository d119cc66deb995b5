"""The search's first stage: the FP32 model (given, loaded from the cache, or trained in a Ray worker and cached),
and a warning when its validation accuracy says the validation images look like training images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from autocompress.engine.prepare import Prepared

__all__ = ["Baseline", "fp32_baseline"]


@dataclass
class Baseline:
    model: torch.nn.Module
    info: dict
    warning: str = ""  # the validation split looks leaked (meta.json split_warning); "" when not


# Validation this far above test (points, and beyond sampling noise) means validation images the model has seen.
_LEAK_POINTS = 3.0


def _leak_warning(val_acc: float, test_acc: float, n_val: int, n_test: int) -> str:
    """One line when validation accuracy is more than _LEAK_POINTS above test accuracy, else "".

    Why the noise term: on a few dozen images one image moves accuracy by points, so a gap counts only when it
    is also over two standard errors of the difference of two binomial proportions."""
    gap = val_acc - test_acc
    p = (val_acc * n_val + test_acc * n_test) / max(1, n_val + n_test) / 100
    noise = 200 * (p * (1 - p) * (1 / max(1, n_val) + 1 / max(1, n_test))) ** 0.5
    if gap <= max(_LEAK_POINTS, noise):
        return ""
    return (f"validation accuracy {val_acc:.1f}% is {gap:.1f} points above test accuracy {test_acc:.1f}%: "
            "validation images look like training images; give validation images the model was not trained on")


def fp32_baseline(prep: Prepared, log: Callable[[str], None], progress: bool) -> Baseline:
    """The FP32 model (`_fp32`), and a warning when its validation accuracy is far above its test accuracy."""
    model, info = _fp32(prep, log, progress)
    splits = prep.splits
    val, test = info.get("val_accuracy_torch"), info.get("test_accuracy_torch")
    warning = _leak_warning(val, test, len(splits.val), len(splits.test)) if None not in (val, test) else ""
    if warning:
        log(f"  warning: {warning}")
    return Baseline(model, info, warning)


def _fp32(prep: Prepared, log: Callable[[str], None], progress: bool) -> tuple[torch.nn.Module, dict]:
    """The FP32 model: given (an object or --weights), or trained on the data and cached."""
    import ray

    from autocompress.pipeline.baseline import baseline_path, load_cached, save_baseline
    from autocompress.pipeline.devices import resolve_train_device
    from autocompress.pipeline.finetune import evaluate
    from autocompress.runtime.executor import train_baseline_in_worker

    cfg, splits = prep.config, prep.splits
    log(f"baseline: {cfg.model} on {cfg.dataset} ({splits.sizes()})")
    if splits.preprocessing is not None:
        log(f"  preprocessing: {splits.preprocessing.describe()}; fine-tuning augmentation: {splits.augment}")
    if prep.trained:
        info = {"cached": True, "path": str(cfg.weights) if cfg.weights else "(the model object given)",
                "from_weights": True, "val_accuracy_torch": evaluate(prep.model, splits.val),
                "test_accuracy_torch": evaluate(prep.model, splits.test)}
        log(f"  baseline given: {info['path']} (val {info['val_accuracy_torch']:.2f}%, PyTorch)")
        return prep.model, info
    epochs = cfg.baseline.epochs

    def on_epoch(e: int, loss: float) -> None:
        if progress:
            log(f"  baseline epoch {e + 1}/{epochs:g}: loss {loss:.3f}")

    path = baseline_path(cfg.model, splits, cfg.baseline, cfg.seed)
    cached = load_cached(path, cfg.model, splits)
    if cached is not None:
        model, info = cached
    else:
        device = resolve_train_device(cfg.train_device, ray.cluster_resources().get("GPU", 0))
        model, info = train_baseline_in_worker(cfg.model, splits, cfg.baseline, cfg.seed, device, on_epoch)
        info = save_baseline(path, model, info)
    how = "loaded from cache" if info["cached"] else f"trained in {info['train_seconds']} s"
    log(f"  baseline {how} ({info['path']})")
    return model, info
