"""A user's own data: `torch.utils.data.Dataset`s (or DataLoaders) of (image_tensor, label) made into `Splits`.

The images are used as the Datasets give them (their own transforms and normalization), read when a split is
read, in DataLoader worker processes: no split is held in memory. A split longer than its cap (`max_images`) is a
seeded random choice of that many items. A DataLoader stands for the items of its Dataset that its sampler draws
(and its number of workers).
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    SubsetRandomSampler,
    TensorDataset,
    default_collate,
    default_convert,
)

from autocompress.errors import DataError
from autocompress.tasks.splitting import Split, Splits

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
    return x.float(), _label(y, where)


def _dataset(data: DataLike, where: str) -> tuple[Dataset, int]:
    """The map-style Dataset behind `data` (for a DataLoader: its Dataset, restricted to the indices its sampler
    draws), and the reader processes to use for it."""
    if isinstance(data, DataLoader):
        if isinstance(data.dataset, IterableDataset):
            raise DataError(f"{where} is a DataLoader over an IterableDataset ({type(data.dataset).__name__}); "
                            "autocompress reads items by index: give a map-style Dataset (with __getitem__ and "
                            "__len__) or a DataLoader over one")
        return _sampled(data, where), int(data.num_workers)
    if isinstance(data, IterableDataset):
        raise DataError(f"{where} is an IterableDataset ({type(data).__name__}); autocompress reads items by index: "
                        "give a map-style Dataset (with __getitem__ and __len__) or a DataLoader over one")
    try:
        len(data)  # type: ignore[arg-type]
    except TypeError:
        raise DataError(f"{where} has no length; give a map-style Dataset or a DataLoader over one") from None
    return data, 0


def _sampled(loader: DataLoader, where: str) -> Dataset:
    """The loader's Dataset, or the Subset of it its sampler draws (e.g. two loaders over one Dataset with a
    SubsetRandomSampler each: train and validation must stay the images each sampler selects)."""
    if loader.collate_fn not in (default_collate, default_convert):
        raise DataError(f"{where} is a DataLoader with its own collate_fn; autocompress reads (image, label) items "
                        "one at a time: give the Dataset (or a DataLoader without collate_fn) whose items are "
                        "(image_tensor, label)")
    if type(loader.batch_sampler) is not BatchSampler or loader.batch_sampler.sampler is not loader.sampler:
        raise DataError(f"{where} is a DataLoader with its own batch_sampler; autocompress needs the items it "
                        "draws, not batches: give a DataLoader with a sampler= (e.g. SubsetRandomSampler(indices)) "
                        "or a torch.utils.data.Subset")
    ds, sampler = loader.dataset, loader.sampler
    # the common samplers are read without drawing from them: drawing would move the caller's random generator
    if isinstance(sampler, SequentialSampler) or (isinstance(sampler, RandomSampler) and not sampler.replacement
                                                  and sampler.num_samples == len(ds)):  # type: ignore[arg-type]
        return ds
    drawn = [int(i) for i in (sampler.indices if isinstance(sampler, SubsetRandomSampler) else sampler)]
    if len(set(drawn)) != len(drawn):
        raise DataError(f"{where}'s sampler ({type(sampler).__name__}) draws some items more than once; "
                        "autocompress uses each selected image once: give a sampler without replacement (e.g. "
                        "SubsetRandomSampler(indices)) or a torch.utils.data.Subset")
    if len(drawn) == len(ds) and sorted(drawn) == list(range(len(ds))):  # type: ignore[arg-type]
        return ds  # SequentialSampler, RandomSampler: the whole Dataset
    return Subset(ds, sorted(drawn))


def _labels(ds: Dataset, where: str, workers: int, log) -> np.ndarray:
    """Every item's label: from `targets` / a TensorDataset's labels when the Dataset has them, else read once."""
    n = len(ds)  # type: ignore[arg-type]
    if isinstance(ds, Subset):
        inner = _known_labels(ds.dataset)
        if inner is not None:
            return inner[np.asarray(ds.indices, dtype=np.int64)]
    known = _known_labels(ds)
    if known is not None and len(known) == n:
        return known
    if n > 2000:
        log(f"reading the labels of {where} ({n} items; a Dataset with a `targets` list is not read for them)")
    loader = DataLoader(ds, batch_size=256, num_workers=workers, collate_fn=lambda items: [it[1] for it in items])
    labels: list[int] = []
    for i, batch in enumerate(loader):
        for j, y in enumerate(batch):
            labels.append(_label(y, f"{where}[{i * 256 + j}]"))
    return np.asarray(labels, dtype=np.int64)


def _known_labels(ds) -> np.ndarray | None:
    if isinstance(ds, TensorDataset) and len(ds.tensors) >= 2:
        return ds.tensors[1].numpy().astype(np.int64)
    targets = getattr(ds, "targets", None)
    if targets is None:
        return None
    try:
        return np.asarray(targets, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        return None


def _label(y: Any, where: str) -> int:
    try:
        return int(y)
    except (TypeError, ValueError):
        raise DataError(f"{where} gives a label {y!r}; labels must be class indices (int)") from None


class _Checked(Dataset):
    """A user's Dataset whose items are made (float image C x H x W, int label) as they are read."""

    def __init__(self, ds: Dataset, where: str) -> None:
        self.ds, self.where = ds, where
        self.cheap = isinstance(ds, TensorDataset)  # in memory: read without worker processes

    def __len__(self) -> int:
        return len(self.ds)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return _pair(self.ds[i], f"{self.where}[{i}]")


def _choose(n: int, cap: int | None, seed: int) -> np.ndarray:
    if cap is None or n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


def _split(data: DataLike, cap: int | None, seed: int, where: str, workers: int, log) -> Split:
    """A capped (seeded choice), checked Split of a user's data."""
    ds, own_workers = _dataset(data, where)
    if len(ds) == 0:  # type: ignore[arg-type]
        raise DataError(f"{where} is empty; give at least one (image, label) item")
    _pair(ds[0], f"{where}[0]")  # a Dataset that gives no (image, label) pairs fails before any work
    labels = _labels(ds, where, own_workers or workers, log)
    if labels.min() < 0:
        raise DataError(f"{where} has a negative label ({int(labels.min())}); labels must be class indices 0, 1, ...")
    return Split(_Checked(ds, where), labels, _choose(len(labels), cap, seed), workers=own_workers or workers)


def _halve(split: Split, seed: int) -> tuple[Split, Split]:
    """Validation and test halves of one split (stratified when every class has two items)."""
    from sklearn.model_selection import train_test_split

    y = split.labels
    counts = np.bincount(y)
    stratify = y if len(y) >= 2 * len(np.unique(y)) and counts[counts > 0].min() >= 2 else None
    a, b = train_test_split(np.arange(len(y)), test_size=0.5, random_state=seed, stratify=stratify)
    return split.take(np.sort(a)), split.take(np.sort(b))


def _fingerprint(splits: dict[str, Split], num_classes: int, name: str) -> str:
    """A digest of what the baseline cache must tell apart: every label, the split sizes, and the pixels of a few
    items per split (reading every image to name the data would cost a pass over all of it)."""
    h = hashlib.sha256(f"{name}:{num_classes}".encode())
    for key, split in splits.items():
        h.update(f"{key}:{len(split)}:{type(split.source).__name__}".encode())
        h.update(split.labels.tobytes())
        for i in np.unique(np.linspace(0, len(split) - 1, num=min(len(split), 16)).astype(np.int64)):
            h.update(np.ascontiguousarray(split[int(i)][0].numpy()).tobytes())
    return h.hexdigest()[:10]


def splits_from_data(train: DataLike, val: DataLike, *, test: DataLike | None = None, calib: DataLike | None = None,
                     caps: Mapping[str, int | None], seed: int = 0, num_classes: int | None = None,
                     name: str = "custom", log=print, workers: int = 0, augment: str = "auto") -> Splits:
    """The four splits of a user's data, read on demand (nothing is loaded here but the labels); `num_classes` (the
    model's outputs, when known) or the largest label + 1 classes. No test data: half of the validation data is
    held out as test (reported only, never used to select). No calibration data: a seeded choice of training
    images. `workers`: reader processes for a Dataset (a DataLoader brings its own num_workers). `augment: auto` is
    `shift` (never flips: the data may be digits); pass crop-flip for natural images.
    The CLI's own splits (`Splits.datasets()`) come back as they were."""
    own = getattr(val, "origin", None)
    if isinstance(own, Splits) and own.datasets() == {"train": train, "val": val, "test": test, "calib": calib}:
        if augment != "auto":
            own.augment = augment
        return own
    made = {"train": _split(train, caps.get("train"), seed, "train_data", workers, log)}
    if test is None:
        whole = _split(val, None, seed, "val_data", workers, log)
        if len(whole) < 2:
            raise DataError("val_data has fewer than 2 items and no test_data was given; give more validation data")
        made["val"], made["test"] = _halve(whole, seed)
        made["val"], made["test"] = made["val"].head(caps.get("val") or len(whole)), \
            made["test"].head(caps.get("test") or len(whole))
        log(f"no test_data: half of val_data ({len(made['test'])} items) is held out as the test split (reported only)")
    else:
        made["val"] = _split(val, caps.get("val"), seed, "val_data", workers, log)
        made["test"] = _split(test, caps.get("test"), seed, "test_data", workers, log)
    made["calib"] = (_split(calib, caps.get("calib"), seed, "calib_data", workers, log) if calib is not None
                     else made["train"].take(_choose(len(made["train"]), caps.get("calib"), seed + 1)))
    shapes = {f"{k}_data": tuple(v[0][0].shape) for k, v in made.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{k} {v}" for k, v in shapes.items())
        raise DataError(f"the splits' images differ in shape ({listed}); give every split the same preprocessing")
    classes = max(num_classes or 0, int(max(made[k].labels.max() for k in ("train", "val", "test"))) + 1)
    return Splits(name=f"{name}-{_fingerprint(made, classes, name)}", **made, num_classes=classes,
                  rule=_rule(val, test), augment="shift" if augment == "auto" else augment)


def _rule(val: DataLike, test: DataLike | None) -> str:
    """Where validation came from."""
    return Splits.rule if test is not None else f"{Splits.rule}; half of it held out as the test split (no test_data)"
