"""`Splits`, the four disjoint splits every trial uses, and how a dataset's shipped parts are cut into them.

Kept apart from the file readers so the sampling rules (stratified, seeded, capped, carved splits, train-split
normalization, content-digest names) live in one place whatever the data source.
"""

from __future__ import annotations

import gc
import hashlib
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Literal, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from autocompress.config import DEFAULT_MAX_IMAGES
from autocompress.errors import ConfigError, DataError
from autocompress.tasks.preprocess import (
    STATS_IMAGES,
    Preprocessing,
    PreprocessOptions,
    channel_stats,
    resolve_normalization,
)

__all__ = ["Split", "Splits", "TensorImages", "Part", "assemble", "resolve_caps", "RULES", "ValFrom"]

# Share of the training pool carved out for a split the dataset does not ship (before the caps).
_CARVE = {"test": 0.2, "val": 0.2, "calib": 0.1}
# Share of the test images that becomes validation when it is carved from them (the rest stays test).
_CARVE_FROM_TEST = 0.5
_ORDER = ("train", "calib", "val", "test")
_FEW = 64  # items read without worker processes (an example input, a tiny split)

ValFrom = Literal["train", "test"]
# Where the validation images came from, in words (Splits.rule; meta.json split_rule; the report).
RULES = {
    "given": "validation as given",
    "folder": "validation from the val/ folder",
    "train": "validation carved from the training images, disjoint from the training split",
    "test": "validation carved from the test images: the weights may have seen the training images",
    "train-only": "validation carved from the training images, as there are no test images to carve it from: "
                  "the weights may have seen them",
}


class TensorImages(Dataset):
    """Images already in memory (float32 N x C x H x W, normalized) and their labels: the built-in demo."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


class Split(Dataset):
    """One split: the (image float32 C x H x W, label) items of `source` at `indices`, read when asked for.

    Nothing is held but the indices and labels: a split of files is decoded batch by batch in `workers` processes
    (torch's DataLoader), so no split has to fit in memory, and the object pickles small (Ray workers read the
    files themselves). `fingerprint` names the content (the baseline cache is keyed on it)."""

    def __init__(self, source: Dataset, labels: np.ndarray, indices: np.ndarray | None = None, *,
                 fingerprint: str = "", workers: int = 0) -> None:
        """`labels`: of every item of `source`; the split holds those at `indices` (default: every item)."""
        self.source = source
        self.indices = np.arange(len(labels), dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)[self.indices]
        self.fingerprint = fingerprint
        self.workers = workers
        self.origin: Splits | None = None  # the Splits this is one of (set by Splits)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, _ = self.source[int(self.indices[i])]
        return x, int(self.labels[i])

    def take(self, positions: np.ndarray) -> "Split":
        """The sub-split of these positions (in this order)."""
        positions = np.asarray(positions, dtype=np.int64)
        # labels as the constructor wants them, of every source item (only the chosen ones are ever read)
        labels = np.zeros(int(self.indices.max(initial=-1)) + 1, np.int64)
        labels[self.indices] = self.labels
        return Split(self.source, labels, self.indices[positions], workers=self.workers,
                     fingerprint=f"{self.fingerprint}[{hashlib.sha256(positions.tobytes()).hexdigest()[:8]}]")

    def head(self, n: int) -> "Split":
        return self.take(np.arange(min(n, len(self))))

    def batches(self, batch_size: int = 128, order: torch.Tensor | np.ndarray | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images N x C x H x W, labels N) in `order` (positions; default: as stored)."""
        order = np.arange(len(self)) if order is None else np.asarray(order, dtype=np.int64)
        if isinstance(self.source, TensorImages):  # in memory: slicing beats a loader
            for s in range(0, len(order), batch_size):
                pos = order[s:s + batch_size]
                yield self.source.x[torch.from_numpy(self.indices[pos])], torch.from_numpy(self.labels[pos])
            return
        # a source whose items cost microseconds (`cheap`), or a few items, are read here: forking readers would
        # cost more
        workers = 0 if getattr(self.source, "cheap", False) or len(order) < _FEW else self.workers
        loader = DataLoader(self, batch_size=batch_size, sampler=order.tolist(), num_workers=workers,
                            collate_fn=_collate)
        yield from (_started_frozen(loader) if workers else loader)

    def images(self, n: int | None = None) -> torch.Tensor:
        """The first n images (all by default) as one tensor: for an example input or a small split."""
        return torch.cat([x for x, _ in self.head(len(self) if n is None else n).batches(256)])

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(float32 images, int64 labels) of the whole split in memory: for small splits and tests only."""
        return self.images().numpy(), self.labels.copy()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self[0][0].shape)  # type: ignore[return-value]


def _started_frozen(loader: DataLoader) -> Iterator:
    """`loader`'s iterator, its reader processes forked while the garbage collector's objects are frozen: a full
    collection in a reader would otherwise visit, and so copy, every page of the parent's Python heap (a trial
    worker's holds torch, ONNX Runtime, Ray and Optuna), once per reader and epoch."""
    gc.freeze()
    try:
        return iter(loader)
    finally:
        gc.unfreeze()  # the parent's objects collectable again; the readers keep their frozen copy


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([x for x, _ in items]).float(), torch.tensor([y for _, y in items], dtype=torch.long)


@dataclass
class Splits:
    """The train / calib / val / test splits of one dataset (four disjoint `Split`s)."""

    name: str
    train: Split
    calib: Split
    val: Split
    test: Split
    num_classes: int
    rule: str = RULES["given"]  # where the validation images came from (RULES)
    preprocessing: Preprocessing | None = None  # None: the user's Datasets did their own
    augment: str = "shift"  # the fine-tune's augmentation (pipeline/augment.py), resolved from `auto`

    def __post_init__(self) -> None:
        for s in _ORDER:
            getattr(self, s).origin = self

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.val.input_shape

    def sizes(self) -> dict[str, int]:
        return {s: len(getattr(self, s)) for s in _ORDER}

    def datasets(self) -> dict[str, Split]:
        """The four splits as Datasets (for the library's own `search`, which keeps them as they are)."""
        return {s: getattr(self, s) for s in _ORDER}


@dataclass
class Part:
    """One split as the dataset ships it: labels known up front, pixels decoded only when read."""

    y: np.ndarray  # int64 labels of every item
    make: Callable[[Preprocessing], Dataset]  # a Dataset of every item, decoded with that preprocessing
    fingerprint: str  # of the files' content
    channels: int  # 1 when every image is grayscale, else 3 (or the array's own)


def _quota(counts: np.ndarray, k: int, min_count: int) -> np.ndarray:
    """How many of k items to take per class: proportional (largest remainder); when k allows it, at least
    one from every class that has `min_count` or more items."""
    exact = k * counts / counts.sum()
    q = np.minimum(np.floor(exact).astype(np.int64), counts)
    if k >= len(counts):
        q = np.maximum(q, (counts >= min_count).astype(np.int64))
    while q.sum() > k:  # only after the at-least-one bump; some class then has q >= 2
        j = int(np.argmax(np.where(q > 1, q - exact, -np.inf)))
        q[j] -= 1
    while q.sum() < k:
        j = int(np.argmax(np.where(q < counts, exact - q, -np.inf)))
        q[j] += 1
    return q


def _take(idx: np.ndarray, y: np.ndarray, k: int, rng: np.random.Generator, *,
          min_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded choice of k of `idx` (labels y[idx]): (chosen in random order, the rest sorted)."""
    labels = y[idx]
    classes, inverse = np.unique(labels, return_inverse=True)
    quota = _quota(np.bincount(inverse, minlength=len(classes)), k, min_count)
    chosen = [rng.permutation(idx[inverse == j])[: quota[j]] for j in range(len(classes))]
    picked = rng.permutation(np.concatenate(chosen)) if chosen else idx[:0]
    return picked, np.setdiff1d(idx, picked)


def _cap(caps: Mapping[str, int | None], split: str, n: int) -> int:
    c = caps.get(split)
    return n if c is None else min(c, n)


def _val_from_test(y: np.ndarray, caps: Mapping[str, int | None], rng: np.random.Generator,
                   where: str) -> dict[str, tuple[str, np.ndarray]]:
    """Validation and test both from the shipped test part (disjoint, stratified, seeded)."""
    n = len(y)
    if n < 2:
        raise DataError(f"too few test images in {where} to carve validation from: {n} cannot fill val and test "
                        "(with trained weights, validation comes from the test images: the weights may have seen "
                        "the training images); add test images, a few per class (imagefolder: or a val/ folder)")
    want = _cap(caps, "val", min(n - 1, max(1, int(round(_CARVE_FROM_TEST * n)))))
    val, rest = _take(np.arange(n), y, want, rng, min_count=2)  # leave test one of every class
    return {"val": ("test", val), "test": ("test", _take(rest, y, _cap(caps, "test", len(rest)), rng)[0])}


def _plan(parts: dict[str, Part], caps: Mapping[str, int | None], rng: np.random.Generator,
          where: str, val_from: ValFrom) -> dict[str, tuple[str, np.ndarray]]:
    """Which items of which shipped part go to each of the four splits (disjoint, stratified, seeded)."""
    plan: dict[str, tuple[str, np.ndarray]] = {}
    if val_from == "test" and "val" not in parts and "test" in parts:
        plan.update(_val_from_test(parts["test"].y, caps, rng, where))
    for split in ("val", "test"):
        if split in parts and split not in plan:
            y = parts[split].y
            plan[split] = (split, _take(np.arange(len(y)), y, _cap(caps, split, len(y)), rng)[0])
    y = parts["train"].y
    rest = np.arange(len(y))
    carve = [s for s in ("test", "val", "calib") if s not in plan]
    want = {s: _cap(caps, s, max(1, int(round(_CARVE[s] * len(rest))))) for s in carve}
    if len(rest) - sum(want.values()) < 1:
        raise DataError(f"too few training images in {where}: {len(rest)} cannot fill train, {', '.join(carve)}; "
                        f"add images (at least {len(carve) + 1}, a few per class)")
    for s in carve:
        taken, rest = _take(rest, y, want[s], rng, min_count=2)  # leave train one of every class
        plan[s] = ("train", taken)
    plan["train"] = ("train", _take(rest, y, _cap(caps, "train", len(rest)), rng)[0])
    return plan


def split_rule(parts: dict[str, Part], val_from: ValFrom) -> str:
    """Where `_plan` takes the validation images from, in words (a key of RULES)."""
    if "val" in parts:
        return RULES["folder"]
    if val_from == "test":
        return RULES["test"] if "test" in parts else RULES["train-only"]
    return RULES["train"]


def assemble(name: str, parts: dict[str, Part], num_classes: int, caps: Mapping[str, int | None],
             seed: int, where: str, val_from: ValFrom = "train", *, options: PreprocessOptions | None = None,
             workers: int = 0) -> Splits:
    """The four Splits of `parts` (read on demand with the preprocessing `options` resolve to, named by a digest);
    `where` names the files in errors. `val_from`: carve validation (when there is no val part) from the training
    images or from the test part."""
    options = options or PreprocessOptions()
    if num_classes < 2:
        raise DataError(f"{name} in {where} has {num_classes} class; a classifier needs at least 2 classes, "
                        "add images of another class")
    for part in parts.values():
        if len(part.y) and (part.y.min() < 0 or part.y.max() >= num_classes):
            raise DataError(f"{name} files in {where} have labels outside 0..{num_classes - 1}; replace the files")
    rng = np.random.default_rng(seed)
    plan = _plan(parts, caps, rng, where, val_from)
    for split in _ORDER:
        if len(plan[split][1]) == 0:
            raise DataError(f"the {split} split of {name} in {where} is empty; add images to {where}")
    channels = max(p.channels for p in parts.values())
    pre = _preprocessing(parts["train"], plan["train"][1], options, channels, seed)
    # The baseline cache is keyed on Splits.name: make it name these exact items (files, seed, caps, preprocessing).
    h = hashlib.sha256(f"{name}:{num_classes}:{sorted(asdict(pre).items())}".encode())
    for split in _ORDER:
        part_name, idx = plan[split]
        h.update(f"{split}:{part_name}:{parts[part_name].fingerprint}".encode())
        h.update(idx.tobytes())
    digest = h.hexdigest()[:10]
    sources = {k: p.make(pre) for k, p in parts.items()}
    made = {split: Split(sources[part_name], parts[part_name].y, idx, fingerprint=f"{digest}:{split}",
                         workers=workers) for split, (part_name, idx) in plan.items()}
    return Splits(name=f"{name}-{digest}", **made, num_classes=num_classes, rule=split_rule(parts, val_from),
                  preprocessing=pre)


def _preprocessing(train: Part, idx: np.ndarray, options: PreprocessOptions, channels: int,
                   seed: int) -> Preprocessing:
    """`options` made concrete; `normalize: dataset` takes the mean/std of a seeded sample of the train split (unless
    the options carry a run's recorded preprocessing)."""
    if options.recorded is not None:
        return options.recorded
    fixed = resolve_normalization(options.normalize, options.mean, options.std, channels)
    pre = Preprocessing(resize=options.resize or options.crop, crop=options.crop, mean=(0.0,) * channels,
                        std=(1.0,) * channels, channels=channels,
                        normalize="given" if options.mean is not None else options.normalize)
    if fixed is not None:
        return pre.with_stats(*fixed)
    sample = np.random.default_rng(seed + 7).permutation(idx)[:STATS_IMAGES]
    raw = Split(train.make(pre), train.y, np.sort(sample), workers=options.stats_workers)
    mean, std = channel_stats(x for x, _ in raw.batches(256))
    return pre.with_stats(mean, std)


def resolve_caps(max_images: Mapping[str, int | None] | None) -> dict[str, int | None]:
    """`DEFAULT_MAX_IMAGES` updated with `max_images` (validated: known splits, positive int or None)."""
    caps = dict(DEFAULT_MAX_IMAGES)
    for k, v in (max_images or {}).items():
        if k not in caps:
            raise ConfigError(f"max_images has unknown split {k!r}; use keys {', '.join(_ORDER)}")
        if v is not None and (not isinstance(v, (int, np.integer)) or v < 1):
            raise ConfigError(f"max_images[{k!r}] = {v!r}; use a positive integer or None (no cap)")
        caps[k] = None if v is None else int(v)
    return caps
