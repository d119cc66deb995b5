"""The FP32 baseline: trained on first use (or loaded from --weights) and cached for later runs."""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from autocompress.config import TrainConfig
from autocompress.fileio import atomic_write_bytes
from autocompress.measure.cache import cache_dir
from autocompress.pipeline.finetune import MOMENTUM, WEIGHT_DECAY, evaluate, train
from autocompress.tasks.data import Splits
from autocompress.tasks.models import build_model

__all__ = ["cache_dir", "get_baseline", "baseline_path", "load_cached", "train_baseline", "save_baseline"]


def baseline_path(model_name: str, splits: Splits, settings: TrainConfig, seed: int) -> Path:
    """Where the baseline trained on these splits with these settings is cached."""
    # momentum, weight decay and augmentation were settings once and are fixed now: still in the key, so that the
    # baselines cached before keep their keys (`augment: True` was the batch shift, the only augmentation then)
    augment = True if splits.augment == "shift" else splits.augment
    trained_with = {**settings.model_dump(), "weight_decay": WEIGHT_DECAY, "momentum": MOMENTUM, "augment": augment}
    key = json.dumps(
        {"model": model_name, "data": splits.name, "shape": splits.input_shape, "classes": splits.num_classes,
         "sizes": splits.sizes(), "settings": trained_with, "seed": seed, "v": 1},
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / "baselines" / f"{model_name.replace('/', '_').replace(':', '_')}-{splits.name}-{digest}.pt"


def load_cached(path: Path, model_name: str, splits: Splits) -> tuple[nn.Module, dict] | None:
    """The cached baseline at `path` (eval mode) and its info, or None when it was never trained."""
    if not path.is_file():
        return None
    model = build_model(model_name, num_classes=splits.num_classes, in_channels=splits.input_shape[0])
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, {**blob["info"], "cached": True, "path": str(path)}


def get_baseline(
    *,
    model_name: str,
    splits: Splits,
    settings: TrainConfig,
    seed: int,
    on_epoch: Callable[[int, float], None] | None = None,
    weights: str | Path | None = None,
    device: str = "cpu",
) -> tuple[nn.Module, dict]:
    """Return (trained FP32 model in eval mode, info). Trains once per (model, data, settings, seed), on `device`,
    unless `weights` are given: then those are the baseline, and nothing is trained."""
    in_ch = splits.input_shape[0]
    if weights is not None:
        from autocompress.tasks.weights import load_weights

        model = build_model(model_name, num_classes=splits.num_classes, in_channels=in_ch)
        load_weights(model, weights)
        model.eval()
        return model, {"cached": True, "path": str(weights), "from_weights": True,
                       "val_accuracy_torch": evaluate(model, splits.val),
                       "test_accuracy_torch": evaluate(model, splits.test)}
    path = baseline_path(model_name, splits, settings, seed)
    cached = load_cached(path, model_name, splits)
    if cached is not None:
        return cached
    model, info = train_baseline(model_name, splits, settings, seed, on_epoch=on_epoch, device=device)
    return model, save_baseline(path, model, info)


def train_baseline(model_name: str, splits: Splits, settings: TrainConfig, seed: int, *,
                   on_epoch: Callable[[int, float], None] | None = None,
                   device: str = "cpu") -> tuple[nn.Module, dict]:
    """Train the FP32 model from scratch on the train split (nothing cached): (model in eval mode, info)."""
    torch.manual_seed(seed)
    model = build_model(model_name, num_classes=splits.num_classes, in_channels=splits.input_shape[0])
    t0 = time.perf_counter()
    train(model, splits.train, settings=settings, seed=seed, on_epoch=on_epoch, augment=splits.augment, device=device)
    info = {
        "train_seconds": round(time.perf_counter() - t0, 1),
        "val_accuracy_torch": evaluate(model, splits.val),
        "test_accuracy_torch": evaluate(model, splits.test),
    }
    return model, info


def save_baseline(path: Path, model: nn.Module, info: dict) -> dict:
    """Cache a trained baseline at `path`; the info a run records of it."""
    buf = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), "info": info}, buf)
    atomic_write_bytes(path, buf.getvalue())
    return {**info, "cached": False, "path": str(path)}
