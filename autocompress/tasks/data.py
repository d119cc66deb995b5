"""Datasets as in-memory splits. `digits` (scikit-learn's handwritten digits) is the built-in demo.

Four splits that never overlap: `train` (baseline training and fine-tuning), `calib` (ONNX Runtime
calibration), `val` (what the search optimizes) and `test` (reported only, never used to select).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from autocompress.errors import DataError

__all__ = ["Splits", "load_dataset", "DATASETS"]

DATASETS = ("digits",)


@dataclass
class Splits:
    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    calib_x: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train_x), "calib": len(self.calib_x), "val": len(self.val_x), "test": len(self.test_x)}


def _split(x: np.ndarray, y: np.ndarray, *, seed: int, name: str, num_classes: int,
           val: float = 0.2, test: float = 0.2, calib: float = 0.08) -> Splits:
    """Stratified, seeded split into train / calib / val / test (disjoint index sets)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(x))
    rest, test_idx = train_test_split(idx, test_size=test, random_state=seed, stratify=y)
    rest, val_idx = train_test_split(rest, test_size=val / (1 - test), random_state=seed, stratify=y[rest])
    train_idx, calib_idx = train_test_split(rest, test_size=calib / (1 - test - val), random_state=seed, stratify=y[rest])
    return Splits(
        name=name,
        train_x=x[train_idx], train_y=y[train_idx], calib_x=x[calib_idx],
        val_x=x[val_idx], val_y=y[val_idx], test_x=x[test_idx], test_y=y[test_idx],
        num_classes=num_classes,
    )


def _digits(input_size: int, seed: int) -> Splits:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # N,1,8,8 in [0,1]
    x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.5
    return _split(x.numpy(), d.target.astype(np.int64), seed=seed, name="digits", num_classes=10)


def load_dataset(name: str, *, input_size: int = 32, seed: int = 0) -> Splits:
    if name == "digits":
        return _digits(input_size, seed)
    raise DataError(f"unknown dataset {name!r}; use one of: {', '.join(DATASETS)}")
