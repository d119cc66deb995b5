"""Datasets as four splits read on demand. `digits` (scikit-learn's handwritten digits) is the built-in demo.

Four splits that never overlap: `train` (baseline training and fine-tuning), `calib` (ONNX Runtime
calibration), `val` (what the search optimizes) and `test` (reported only, never used to select).

Besides `digits`, datasets are read from local files under `data_dir` (nothing is downloaded unless
`download=True`): the torchvision datasets `cifar10`, `cifar100`, `mnist`, `fashionmnist`, `svhn`, and
`imagefolder` (a folder of class folders, see `load_dataset`).
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from autocompress.config import DEFAULT_MAX_IMAGES, SearchConfig
from autocompress.errors import ConfigError, DataError
from autocompress.tasks.preprocess import Normalize, Preprocessing, PreprocessOptions
from autocompress.tasks.sources import data_root, imagefolder_parts, torchvision_parts
from autocompress.tasks.splitting import RULES, Split, Splits, TensorImages, ValFrom, assemble, resolve_caps

__all__ = ["Splits", "load_dataset", "dataset_of_config", "DATASETS", "DEFAULT_MAX_IMAGES"]

DATASETS = ("digits", "cifar10", "cifar100", "mnist", "fashionmnist", "svhn", "imagefolder")
# `augment: auto` by dataset: digits must not be flipped (a mirrored 2 is no 2); the rest are natural images
_AUTO_AUGMENT = {"digits": "shift", "mnist": "shift", "fashionmnist": "shift", "svhn": "shift"}


# ---------------------------------------------------------------------------------------------- digits


def _split(x: torch.Tensor, y: np.ndarray, *, seed: int, name: str, num_classes: int,
           val: float = 0.2, test: float = 0.2, calib: float = 0.08) -> dict[str, Split]:
    """Stratified, seeded split into train / calib / val / test (disjoint index sets) of in-memory images."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(x))
    rest, test_idx = train_test_split(idx, test_size=test, random_state=seed, stratify=y)
    rest, val_idx = train_test_split(rest, test_size=val / (1 - test), random_state=seed, stratify=y[rest])
    train_idx, calib_idx = train_test_split(
        rest, test_size=calib / (1 - test - val), random_state=seed, stratify=y[rest]
    )
    source = TensorImages(x, torch.from_numpy(y))
    return {k: Split(source, y, i, fingerprint=f"{name}:{k}")
            for k, i in (("train", train_idx), ("calib", calib_idx), ("val", val_idx), ("test", test_idx))}


def _digits(input_size: int, seed: int, caps: Mapping[str, int | None] | None) -> Splits:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # N,1,8,8 in [0,1]
    x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.5
    splits = _split(x.contiguous(), d.target.astype(np.int64), seed=seed, name="digits", num_classes=10)
    for k, cap in (caps or {}).items():  # each split cut to its cap, only when caps are given
        if cap is not None:
            splits[k] = splits[k].head(cap)
    pre = Preprocessing(resize=input_size, crop=input_size, mean=(0.5,), std=(0.5,), channels=1, normalize="given",
                        scale=16.0)
    return Splits(name="digits", **splits, num_classes=10, rule=RULES["train"], preprocessing=pre, augment="shift")


# ----------------------------------------------------------------------------------------------- public


def load_dataset(
    name: str,
    *,
    input_size: int = 32,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    max_images: Mapping[str, int | None] | None = None,
    val_from: ValFrom = "train",
    resize: int | None = None,
    normalize: Normalize = "dataset",
    mean: list[float] | None = None,
    std: list[float] | None = None,
    augment: str = "auto",
    workers: int = 0,
    recorded: Preprocessing | None = None,
) -> Splits:
    """Load `name` as four disjoint, stratified, seeded splits of C x input_size x input_size images, read on demand.

    Datasets (`DATASETS`):
      - `digits`: scikit-learn's digits, no files needed, held in memory; (x - 0.5) / 0.5. `data_dir`, `download`
        and the preprocessing options are ignored, and so is `max_images` unless given (then each split is cut).
      - `cifar10`, `cifar100`, `mnist`, `fashionmnist`, `svhn`: torchvision's files under `data_dir` (the
        layout torchvision uses, e.g. data_dir/cifar-10-batches-py/, data_dir/MNIST/raw/); downloaded there
        only with `download=True`. train/calib come from the train files, test from the test files, val as
        `val_from` says.
      - `imagefolder`: data_dir/train/<class>/<image>, with optional data_dir/val/ and data_dir/test/ (same
        class folders); or data_dir/<class>/<image> (flat). A val/ folder is the val split; another split
        without its own folder is carved out of the training images (val: as `val_from` says).
    For all but digits, each image is decoded when read (`workers` DataLoader processes; 0 = in the reading
    process): its short side resized to `resize` (default input_size; bilinear, antialiased), the center
    input_size x input_size cropped, scaled to [0, 1] and normalized per channel: `normalize="dataset"` with the
    mean/std of up to 2,000 training images, "imagenet" with ImageNet's, "none" not at all, or the given
    `mean`/`std`. Grayscale data keeps one channel. `Splits.preprocessing` records what was used. A carved split
    takes 20% (test, val) or 10% (calib) of the training images before the caps.

    `val_from` (ignored by digits and when there is a val/ folder): "train" carves validation from the training
    images, disjoint from the train split (for a baseline trained on that split); "test" carves it from the test
    images, half of them before the caps, and the test split is the rest (for trained weights, which may have
    seen every training image; with no test images at all it falls back to "train"). `Splits.rule` says which.

    `max_images` caps the images kept per split, e.g. {"train": 20000, "test": None} (None = no cap); keys
    not given keep `DEFAULT_MAX_IMAGES`: calibration 500, the others uncapped. Sampling is stratified by
    class and deterministic given `seed`.

    `augment` is the fine-tune's augmentation (pipeline/augment.py); "auto" picks crop-flip for natural images
    (imagefolder, CIFAR) and shift for digits (digits, MNIST, Fashion-MNIST, SVHN: a mirrored 2 is no 2).

    `recorded`: a run's own preprocessing (meta.json), used as it is instead of the options above.

    `Splits.name` is the dataset name plus a digest of the files, the chosen items and the preprocessing (it keys
    the baseline cache), except for `digits`. Raises `DataError` (one line: the problem and the fix) for anything
    wrong with the data.
    """
    caps = resolve_caps(max_images)
    if val_from not in ("train", "test"):
        raise ConfigError(f"val_from={val_from!r}; use 'train' or 'test'")
    if name == "digits":
        splits = _digits(input_size, seed, caps if max_images else None)
        if augment != "auto":
            splits.augment = augment
        return splits
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; use one of: {', '.join(DATASETS)}")
    if resize is not None and resize < input_size:
        raise ConfigError(f"--resize {resize} is smaller than the crop ({input_size}); resize the short side to at "
                          f"least the crop, e.g. --resize {round(input_size / 0.875)} --crop {input_size}")
    root = data_root(name, data_dir, download)
    if name == "imagefolder":
        parts, num_classes = imagefolder_parts(root)
    else:
        parts, num_classes = torchvision_parts(name, root, download)
    options = PreprocessOptions(crop=input_size, resize=resize, normalize=normalize, mean=mean, std=std,
                                stats_workers=workers, recorded=recorded)
    splits = assemble(name, parts, num_classes, caps, seed, str(root), val_from, options=options, workers=workers)
    splits.augment = _AUTO_AUGMENT.get(name, "crop-flip") if augment == "auto" else augment
    return splits


def dataset_of_config(cfg: SearchConfig, *, max_images: Mapping[str, int | None] | None = None,
                      recorded: Preprocessing | None = None) -> Splits:
    """The splits a run's config names (the CLI's data flags); `max_images` replaces the config's caps; `recorded`
    (a run's own preprocessing) replaces the config's preprocessing options."""
    # Weights trained elsewhere may have seen every training image: then validation comes from the test images.
    return load_dataset(cfg.dataset, input_size=cfg.input_size, seed=cfg.data_seed, data_dir=cfg.data_dir,
                        download=cfg.download, max_images=cfg.max_images if max_images is None else max_images,
                        val_from="test" if cfg.weights is not None else "train", resize=cfg.resize,
                        normalize=cfg.normalize, mean=cfg.mean, std=cfg.std, augment=cfg.augment,
                        workers=cfg.data_workers, recorded=recorded)
