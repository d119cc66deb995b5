"""A user's own data: `torch.utils.data.Dataset`s (or DataLoaders) of (image_tensor, label) made into `Splits`.

The images are used as the Datasets give them (their own transforms and normalization). Each split is read once
into memory, up to its cap (`max_images`): a seeded random choice of that many items when the Dataset is longer,
the first that many batches of a DataLoader (a shuffling loader gives a random choice).
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from autocompress.errors import DataError
from autocompress.tasks.data import Splits

__all__ = ["splits_from_data", "DataLike"]

DataLike = Dataset | DataLoader


def _pair(item: Any, where: str) -> tuple[torch.Tensor, int]:
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise DataError(f"{where} gives a {type(item).__name__}, not an (image_tensor, label) pair; "
                        "make __getitem__ return (image, label)")
    x, y = item[0], item[1]
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.dim() != 3:
        raise DataError(f"{where} gives an image of shape {tuple(x.shape)}; autocompress needs C x H x W tensors "
                        "(add torchvision.transforms.ToTensor() to the Dataset's transform)")
    try:
        label = int(y)
    except (TypeError, ValueError):
        raise DataError(f"{where} gives a label {y!r}; labels must be class indices (int)") from None
    return x.float(), label


def _batches(data: DataLike, cap: int | None, seed: int, where: str):
    """(images N x C x H x W, labels N) chunks of `data`, at most `cap` items in all."""
    if isinstance(data, DataLoader):
        taken = 0
        for batch in data:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise DataError(f"{where} yields a {type(batch).__name__}, not (images, labels) batches; "
                                "give a DataLoader over (image, label) items")
            x, y = torch.as_tensor(batch[0]).float(), torch.as_tensor(batch[1]).long()
            if x.dim() != 4:
                raise DataError(f"{where} yields image batches of shape {tuple(x.shape)}; need N x C x H x W")
            keep = len(x) if cap is None else min(len(x), cap - taken)
            yield x[:keep], y[:keep]
            taken += keep
            if cap is not None and taken >= cap:
                return
        return
    if isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) >= 2:  # already in memory
        idx = _choose(len(data), cap, seed)
        yield data.tensors[0][idx].float(), data.tensors[1][idx].long()
        return
    try:
        n = len(data)  # type: ignore[arg-type]
    except TypeError:
        raise DataError(f"{where} has no length; give a map-style Dataset or a DataLoader") from None
    idx = _choose(n, cap, seed)
    loader = DataLoader(Subset(data, idx.tolist()), batch_size=256, collate_fn=lambda items: items)
    for items in loader:
        pairs = [_pair(it, f"{where}[{i}]") for i, it in zip(idx, items, strict=False)]
        yield torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs], dtype=torch.long)


def _choose(n: int, cap: int | None, seed: int) -> np.ndarray:
    if cap is None or n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


def _read(data: DataLike, cap: int | None, seed: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    try:
        for x, y in _batches(data, cap, seed, where):
            xs.append(x)
            ys.append(y)
    except DataError:
        raise
    except RuntimeError as e:  # e.g. torch.stack of images of different sizes
        raise DataError(f"cannot read {where}: {str(e).splitlines()[0]}; give images of one size "
                        "(resize them in the Dataset's transform)") from None
    if not xs or sum(len(x) for x in xs) == 0:
        raise DataError(f"{where} is empty; give at least one (image, label) item")
    return torch.cat(xs).numpy().astype(np.float32, copy=False), torch.cat(ys).numpy().astype(np.int64)


def _halve(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[tuple, tuple]:
    """Validation and test halves of one split (stratified when every class has two items)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(x))
    counts = np.bincount(y)
    stratify = y if len(x) >= 2 * len(np.unique(y)) and counts[counts > 0].min() >= 2 else None
    a, b = train_test_split(idx, test_size=0.5, random_state=seed, stratify=stratify)
    return (x[a], y[a]), (x[b], y[b])


def splits_from_data(train: DataLike, val: DataLike, *, test: DataLike | None = None, calib: DataLike | None = None,
                     caps: Mapping[str, int | None], seed: int = 0, num_classes: int | None = None,
                     name: str = "custom", log=print) -> Splits:
    """The four splits from a user's data; `num_classes` (the model's outputs, when known) or the largest label + 1
    classes. No test data: half of the validation data is held out as test (reported
    only, never used to select). No calibration data: a seeded choice of training images."""
    train_x, train_y = _read(train, caps.get("train"), seed, "train_data")
    val_x, val_y = _read(val, None if test is None else caps.get("val"), seed, "val_data")
    if test is None:
        if len(val_x) < 2:
            raise DataError("val_data has fewer than 2 items and no test_data was given; give more validation data")
        (val_x, val_y), (test_x, test_y) = _halve(val_x, val_y, seed)
        val_x, val_y = val_x[:caps.get("val") or len(val_x)], val_y[:caps.get("val") or len(val_y)]
        test_x, test_y = test_x[:caps.get("test") or len(test_x)], test_y[:caps.get("test") or len(test_y)]
        log(f"no test_data: half of val_data ({len(test_x)} items) is held out as the test split (reported only)")
    else:
        test_x, test_y = _read(test, caps.get("test"), seed, "test_data")
    calib_x = (_read(calib, caps.get("calib"), seed, "calib_data")[0] if calib is not None
               else train_x[_choose(len(train_x), caps.get("calib"), seed + 1)])
    shapes = {k: v.shape[1:] for k, v in (("train_data", train_x), ("val_data", val_x), ("test_data", test_x),
                                          ("calib_data", calib_x))}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{k} {tuple(v)}" for k, v in shapes.items())
        raise DataError(f"the splits' images differ in shape ({listed}); give every split the same preprocessing")
    classes = max(num_classes or 0, int(max(train_y.max(), val_y.max(), test_y.max())) + 1)
    for where, y in (("train_data", train_y), ("val_data", val_y), ("test_data", test_y)):
        if y.min() < 0:
            raise DataError(f"{where} has a negative label ({int(y.min())}); labels must be class indices 0, 1, ...")
    digest = hashlib.sha256()
    for a in (train_x, train_y, calib_x, val_x, val_y, test_x, test_y):
        digest.update(np.ascontiguousarray(a).tobytes())
    return Splits(name=f"{name}-{digest.hexdigest()[:10]}", train_x=np.ascontiguousarray(train_x), train_y=train_y,
                  calib_x=np.ascontiguousarray(calib_x), val_x=np.ascontiguousarray(val_x), val_y=val_y,
                  test_x=np.ascontiguousarray(test_x), test_y=test_y, num_classes=classes,
                  rule=_rule(val, test))


def _rule(val: DataLike, test: DataLike | None) -> str:
    """Where validation came from: the CLI's Datasets carry their loader's rule (Splits.datasets)."""
    rule = getattr(val, "split_rule", Splits.rule)
    return rule if test is not None else f"{rule}; half of it held out as the test split (no test_data)"
