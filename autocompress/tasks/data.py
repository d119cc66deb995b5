"""Datasets as in-memory splits. `digits` (scikit-learn's handwritten digits) is the built-in demo.

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

from autocompress.config import DEFAULT_MAX_IMAGES
from autocompress.errors import ConfigError, DataError
from autocompress.tasks.sources import data_root, imagefolder_parts, torchvision_parts
from autocompress.tasks.splitting import RULES, Splits, ValFrom, assemble, resolve_caps

__all__ = ["Splits", "load_dataset", "DATASETS", "DEFAULT_MAX_IMAGES"]

DATASETS = ("digits", "cifar10", "cifar100", "mnist", "fashionmnist", "svhn", "imagefolder")


# ---------------------------------------------------------------------------------------------- digits


def _split(x: np.ndarray, y: np.ndarray, *, seed: int, name: str, num_classes: int,
           val: float = 0.2, test: float = 0.2, calib: float = 0.08) -> Splits:
    """Stratified, seeded split into train / calib / val / test (disjoint index sets)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(x))
    rest, test_idx = train_test_split(idx, test_size=test, random_state=seed, stratify=y)
    rest, val_idx = train_test_split(rest, test_size=val / (1 - test), random_state=seed, stratify=y[rest])
    train_idx, calib_idx = train_test_split(
        rest, test_size=calib / (1 - test - val), random_state=seed, stratify=y[rest]
    )
    return Splits(
        name=name,
        train_x=x[train_idx], train_y=y[train_idx], calib_x=x[calib_idx],
        val_x=x[val_idx], val_y=y[val_idx], test_x=x[test_idx], test_y=y[test_idx],
        num_classes=num_classes, rule=RULES["train"],
    )


def _digits(input_size: int, seed: int) -> Splits:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # N,1,8,8 in [0,1]
    x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.5
    return _split(x.numpy(), d.target.astype(np.int64), seed=seed, name="digits", num_classes=10)


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
) -> Splits:
    """Load `name` as four disjoint, stratified, seeded splits of float32 N x C x input_size x input_size.

    Datasets (`DATASETS`):
      - `digits`: scikit-learn's digits, no files needed; (x - 0.5) / 0.5. `data_dir` and `download` are
        ignored, and so is `max_images` unless given (then each split is cut to its cap).
      - `cifar10`, `cifar100`, `mnist`, `fashionmnist`, `svhn`: torchvision's files under `data_dir` (the
        layout torchvision uses, e.g. data_dir/cifar-10-batches-py/, data_dir/MNIST/raw/); downloaded there
        only with `download=True`. train/calib come from the train files, test from the test files, val as
        `val_from` says.
      - `imagefolder`: data_dir/train/<class>/<image>, with optional data_dir/val/ and data_dir/test/ (same
        class folders); or data_dir/<class>/<image> (flat). A val/ folder is the val split; another split
        without its own folder is carved out of the training images (val: as `val_from` says).
    For all but digits: images are resized (bilinear, antialiased) to input_size, grayscale data keeps one
    channel, and every split is normalized with the per-channel mean/std of the train split. A carved split
    takes 20% (test, val) or 10% (calib) of the training images before the caps.

    `val_from` (ignored by digits and when there is a val/ folder): "train" carves validation from the training
    images, disjoint from the train split (for a baseline trained on that split); "test" carves it from the test
    images, half of them before the caps, and the test split is the rest (for trained weights, which may have
    seen every training image; with no test images at all it falls back to "train"). `Splits.rule` says which.

    `max_images` caps the images kept per split, e.g. {"train": 20000, "test": None} (None = no cap); keys
    not given keep `DEFAULT_MAX_IMAGES`: train 5000, calib 500, val 1000, test 1000. Only the chosen images
    are decoded. Sampling is stratified by class and deterministic given `seed`.

    `Splits.name` is the dataset name plus a digest of the arrays (it keys the baseline cache), except for
    `digits`. Raises `DataError` (one line: the problem and the fix) for anything wrong with the data.
    """
    caps = resolve_caps(max_images)
    if val_from not in ("train", "test"):
        raise ConfigError(f"val_from={val_from!r}; use 'train' or 'test'")
    if name == "digits":
        splits = _digits(input_size, seed)
        if max_images:
            for split, attrs in (("train", ("train_x", "train_y")), ("calib", ("calib_x",)),
                                 ("val", ("val_x", "val_y")), ("test", ("test_x", "test_y"))):
                if caps[split] is not None:
                    for a in attrs:
                        setattr(splits, a, getattr(splits, a)[: caps[split]])
        return splits
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; use one of: {', '.join(DATASETS)}")
    root = data_root(name, data_dir, download)
    if name == "imagefolder":
        parts, num_classes = imagefolder_parts(root, input_size)
    else:
        parts, num_classes = torchvision_parts(name, root, input_size, download)
    return assemble(name, parts, num_classes, caps, seed, str(root), val_from)
