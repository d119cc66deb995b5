"""`Splits`, the four disjoint splits every trial uses, and how a dataset's shipped parts are cut into them.

Kept apart from the file readers so the sampling rules (stratified, seeded, capped, carved splits, train-split
normalization, content-digest names) live in one place whatever the data source.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Literal, Mapping

import numpy as np
import torch

from autocompress.config import DEFAULT_MAX_IMAGES
from autocompress.errors import ConfigError, DataError

__all__ = ["Splits", "Part", "assemble", "resolve_caps", "RULES", "ValFrom"]

# Share of the training pool carved out for a split the dataset does not ship (before the caps).
_CARVE = {"test": 0.2, "val": 0.2, "calib": 0.1}
# Share of the test images that becomes validation when it is carved from them (the rest stays test).
_CARVE_FROM_TEST = 0.5
_ORDER = ("train", "calib", "val", "test")

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


@dataclass
class Splits:
    """The train / calib / val / test arrays (float32 N x C x H x W; int64 labels) of one dataset."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    calib_x: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    rule: str = RULES["given"]  # where the validation images came from (RULES)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    def sizes(self) -> dict[str, int]:
        return {
            "train": len(self.train_x),
            "calib": len(self.calib_x),
            "val": len(self.val_x),
            "test": len(self.test_x),
        }

    def datasets(self) -> dict[str, torch.utils.data.TensorDataset]:
        """The four splits as in-memory Datasets of (image, label) (the calibration split's labels are 0)."""
        from torch.utils.data import TensorDataset

        def ds(x: np.ndarray, y: np.ndarray | None) -> TensorDataset:
            labels = y if y is not None else np.zeros(len(x), np.int64)
            return TensorDataset(torch.from_numpy(x), torch.from_numpy(labels))

        out = {"train": ds(self.train_x, self.train_y), "val": ds(self.val_x, self.val_y),
               "test": ds(self.test_x, self.test_y), "calib": ds(self.calib_x, None)}
        # The CLI hands these Datasets to the library, which makes Splits of them again: the rule travels along.
        out["val"].split_rule = self.rule
        return out


@dataclass
class Part:
    """One split as the dataset ships it: labels known up front, pixels decoded only for chosen indices."""

    y: np.ndarray  # int64 labels of every item
    # indices -> (float32 N,C,S,S in [0,1], all grayscale?, files that failed to decode)
    load: Callable[[np.ndarray], tuple[np.ndarray, bool, list[str]]]


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


def _normalize(xs: dict[str, np.ndarray]) -> None:
    """In place: per-channel mean/std of the train split, applied to every split."""
    tr = xs["train"]
    mean = tr.mean(axis=(0, 2, 3), dtype=np.float64)
    std = tr.std(axis=(0, 2, 3), dtype=np.float64)
    std = np.where(std < 1e-6, 1.0, std)
    m = mean.astype(np.float32)[None, :, None, None]
    s = std.astype(np.float32)[None, :, None, None]
    for x in xs.values():
        x -= m
        x /= s


def split_rule(parts: dict[str, Part], val_from: ValFrom) -> str:
    """Where `_plan` takes the validation images from, in words (a key of RULES)."""
    if "val" in parts:
        return RULES["folder"]
    if val_from == "test":
        return RULES["test"] if "test" in parts else RULES["train-only"]
    return RULES["train"]


def assemble(name: str, parts: dict[str, Part], num_classes: int, caps: Mapping[str, int | None],
             seed: int, where: str, val_from: ValFrom = "train") -> Splits:
    """The four Splits of `parts` (decoded, normalized, named by a digest); `where` names the files in errors.
    `val_from`: carve validation (when there is no val part) from the training images or from the test part."""
    if num_classes < 2:
        raise DataError(f"{name} in {where} has {num_classes} class; a classifier needs at least 2 classes, "
                        "add images of another class")
    for part in parts.values():
        if len(part.y) and (part.y.min() < 0 or part.y.max() >= num_classes):
            raise DataError(f"{name} files in {where} have labels outside 0..{num_classes - 1}; replace the files")
    rng = np.random.default_rng(seed)
    plan = _plan(parts, caps, rng, where, val_from)
    xs: dict[str, np.ndarray] = {}
    ys: dict[str, np.ndarray] = {}
    gray = True
    bad: list[str] = []
    for split in _ORDER:
        part_name, idx = plan[split]
        x, g, b = parts[part_name].load(idx)
        xs[split], ys[split] = x, parts[part_name].y[idx].astype(np.int64)
        gray &= g
        bad += b
    if bad:
        raise DataError(f"cannot decode {len(bad)} image file(s) in {where}: {', '.join(sorted(bad)[:3])}"
                        f"{' ...' if len(bad) > 3 else ''}; delete or replace them")
    if gray:  # every decoded image was grayscale: one channel
        xs = {k: np.ascontiguousarray(v[:, :1]) for k, v in xs.items()}
    for split in _ORDER:
        if len(xs[split]) == 0:
            raise DataError(f"the {split} split of {name} in {where} is empty; add images to {where}")
    _normalize(xs)
    # The baseline cache is keyed on Splits.name: make it name these exact arrays (files, seed, caps, size).
    h = hashlib.sha256(f"{name}:{num_classes}".encode())
    for split in _ORDER:
        h.update(xs[split].tobytes())
        h.update(ys[split].tobytes())
    return Splits(
        name=f"{name}-{h.hexdigest()[:10]}",
        train_x=xs["train"], train_y=ys["train"], calib_x=xs["calib"],
        val_x=xs["val"], val_y=ys["val"], test_x=xs["test"], test_y=ys["test"],
        num_classes=num_classes, rule=split_rule(parts, val_from),
    )


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
