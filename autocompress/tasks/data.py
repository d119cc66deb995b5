"""Datasets as in-memory splits. `digits` (scikit-learn's handwritten digits) is the built-in demo.

Four splits that never overlap: `train` (baseline training and fine-tuning), `calib` (ONNX Runtime
calibration), `val` (what the search optimizes) and `test` (reported only, never used to select).

Besides `digits`, datasets are read from local files under `data_dir` (nothing is downloaded unless
`download=True`): the torchvision datasets `cifar10`, `cifar100`, `mnist`, `fashionmnist`, `svhn`, and
`imagefolder` (a folder of class folders, see `load_dataset`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from autocompress.config import DEFAULT_MAX_IMAGES
from autocompress.errors import ConfigError, DataError

__all__ = ["Splits", "load_dataset", "DATASETS", "DEFAULT_MAX_IMAGES"]

DATASETS = ("digits", "cifar10", "cifar100", "mnist", "fashionmnist", "svhn", "imagefolder")


# Share of the training pool carved out for a split the dataset does not ship (before the caps above).
_CARVE = {"test": 0.2, "val": 0.2, "calib": 0.1}
_ORDER = ("train", "calib", "val", "test")

# torchvision class, and the files it reads under data_dir (for the "files missing" message).
_TORCHVISION = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}"),
    "cifar100": ("CIFAR100", "cifar-100-python/{train, test, meta}"),
    "mnist": ("MNIST", "MNIST/raw/{train,t10k}-images-idx3-ubyte and {train,t10k}-labels-idx1-ubyte"),
    "fashionmnist": (
        "FashionMNIST",
        "FashionMNIST/raw/{train,t10k}-images-idx3-ubyte and {train,t10k}-labels-idx1-ubyte",
    ),
    "svhn": ("SVHN", "train_32x32.mat and test_32x32.mat"),
}
# The folder torchvision expects directly under data_dir (lets data_dir point at that folder itself).
_TV_FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "mnist": "MNIST",
              "fashionmnist": "FashionMNIST"}


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

        return {"train": ds(self.train_x, self.train_y), "val": ds(self.val_x, self.val_y),
                "test": ds(self.test_x, self.test_y), "calib": ds(self.calib_x, None)}


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
        num_classes=num_classes,
    )


def _digits(input_size: int, seed: int) -> Splits:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # N,1,8,8 in [0,1]
    x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.5
    return _split(x.numpy(), d.target.astype(np.int64), seed=seed, name="digits", num_classes=10)


# ------------------------------------------------------------------------------- splitting and sampling


@dataclass
class _Part:
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


def _plan(parts: dict[str, _Part], caps: Mapping[str, int | None], rng: np.random.Generator,
          where: str) -> dict[str, tuple[str, np.ndarray]]:
    """Which items of which shipped part go to each of the four splits (disjoint, stratified, seeded)."""
    def cap(split: str, n: int) -> int:
        c = caps.get(split)
        return n if c is None else min(c, n)

    plan: dict[str, tuple[str, np.ndarray]] = {}
    for split in ("val", "test"):
        if split in parts:
            y = parts[split].y
            plan[split] = (split, _take(np.arange(len(y)), y, cap(split, len(y)), rng)[0])
    y = parts["train"].y
    rest = np.arange(len(y))
    carve = [s for s in ("test", "val", "calib") if s not in plan]
    want = {s: cap(s, max(1, int(round(_CARVE[s] * len(rest))))) for s in carve}
    if len(rest) - sum(want.values()) < 1:
        raise DataError(f"too few training images in {where}: {len(rest)} cannot fill train, {', '.join(carve)}; "
                        f"add images (at least {len(carve) + 1}, a few per class)")
    for s in carve:
        taken, rest = _take(rest, y, want[s], rng, min_count=2)  # leave train one of every class
        plan[s] = ("train", taken)
    plan["train"] = ("train", _take(rest, y, cap("train", len(rest)), rng)[0])
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


def _assemble(name: str, parts: dict[str, _Part], num_classes: int, caps: Mapping[str, int | None],
              seed: int, where: str) -> Splits:
    if num_classes < 2:
        raise DataError(f"{name} in {where} has {num_classes} class; a classifier needs at least 2 classes, "
                        "add images of another class")
    for part in parts.values():
        if len(part.y) and (part.y.min() < 0 or part.y.max() >= num_classes):
            raise DataError(f"{name} files in {where} have labels outside 0..{num_classes - 1}; replace the files")
    rng = np.random.default_rng(seed)
    plan = _plan(parts, caps, rng, where)
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
        num_classes=num_classes,
    )


# --------------------------------------------------------------------------------- torchvision datasets


def _array_part(data: np.ndarray, labels: np.ndarray, layout: str, size: int) -> _Part:
    """A part backed by a uint8 array in `layout` (nhwc, nchw or nhw); resized in chunks on load."""
    channels = 1 if layout == "nhw" else (data.shape[3] if layout == "nhwc" else data.shape[1])

    def load(idx: np.ndarray) -> tuple[np.ndarray, bool, list[str]]:
        out = np.empty((len(idx), channels, size, size), dtype=np.float32)
        for s in range(0, len(idx), 1024):
            chunk = torch.from_numpy(np.ascontiguousarray(data[idx[s:s + 1024]])).float().div_(255.0)
            if layout == "nhw":
                chunk = chunk.unsqueeze(1)
            elif layout == "nhwc":
                chunk = chunk.permute(0, 3, 1, 2)
            if chunk.shape[-2:] != (size, size):
                chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            out[s:s + len(chunk)] = chunk.numpy()
        return out, channels == 1, []

    return _Part(np.asarray(labels, dtype=np.int64), load)


def _local_only(cls: type) -> type:
    """`cls` (CIFAR10/100, SVHN) with its integrity check reduced to "the file exists".

    Why: torchvision compares the md5 of every file with the official release on each construction. Those
    checksums guard a download; with download=False we read files the user put there themselves (the real
    files, a re-packed subset, or the tiny fixtures of our tests), so existence is the right check, and a
    file that is not in the format fails while parsing, which we report as a DataError. torchvision has no
    flag for this, but it treats md5=None as "existence only" (utils.check_integrity), so a subclass whose
    class attributes carry md5=None is the smallest override that leaves its parsing code untouched. With
    download=True we use the stock class, so downloads are verified.
    """
    attrs: dict = {}
    if hasattr(cls, "train_list"):
        attrs["train_list"] = [[f, None] for f, _ in cls.train_list]
        attrs["test_list"] = [[f, None] for f, _ in cls.test_list]
        attrs["meta"] = {**cls.meta, "md5": None}
    if hasattr(cls, "split_list"):
        attrs["split_list"] = {k: [url, f, None] for k, (url, f, _) in cls.split_list.items()}
    return type(cls.__name__, (cls,), attrs)


def _torchvision(name: str, root: Path, size: int, download: bool) -> tuple[dict[str, _Part], int]:
    import torchvision.datasets as tvd

    cls_name, layout = _TORCHVISION[name]
    folder = _TV_FOLDER.get(name)
    if folder and not (root / folder).exists() and root.name == folder and not download:
        root = root.parent  # data_dir points at the dataset's own folder
    cls = getattr(tvd, cls_name)
    if not download and cls_name in ("CIFAR10", "CIFAR100", "SVHN"):
        cls = _local_only(cls)
    try:
        if cls_name == "SVHN":
            train = cls(str(root), split="train", download=download)
            test = cls(str(root), split="test", download=download)
        else:
            train = cls(str(root), train=True, download=download)
            test = cls(str(root), train=False, download=download)
    except RuntimeError as e:
        if "not found" not in str(e):
            raise DataError(f"cannot read the {name} files in {root}: {str(e).splitlines()[0]}; replace them "
                            "(or pass --download to fetch fresh copies)") from e
        raise DataError(f"{name} files not found in {root} (torchvision reads {layout}); "
                        "put the files there or pass --download") from e
    except OSError as e:
        if download:
            raise DataError(f"downloading {name} into {root} failed ({type(e).__name__}: {e}); check the network "
                            f"or put the files there yourself ({layout})") from e
        raise DataError(f"cannot read the {name} files in {root}: {type(e).__name__}: {e}; replace them "
                        "(or pass --download to fetch fresh copies)") from e
    except Exception as e:  # noqa: BLE001 - a file in the wrong format fails anywhere in the parser
        raise DataError(f"cannot read the {name} files in {root}: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}; "
                        "replace them (or pass --download to fetch fresh copies)") from e

    def part(ds) -> _Part:
        if cls_name == "SVHN":
            return _array_part(ds.data, ds.labels, "nchw", size)
        if cls_name in ("MNIST", "FashionMNIST"):
            return _array_part(ds.data.numpy(), ds.targets.numpy(), "nhw", size)
        return _array_part(ds.data, np.asarray(ds.targets), "nhwc", size)

    num_classes = 10 if cls_name == "SVHN" else len(train.classes)
    return {"train": part(train), "test": part(test)}, num_classes


# -------------------------------------------------------------------------------------------- imagefolder

_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def _class_dirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _image_folder(folder: Path, classes: list[str]):
    """torchvision's ImageFolder over `classes` (hidden folders such as .ipynb_checkpoints are not classes)."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    class _Folder(ImageFolder):
        def find_classes(self, directory):  # documented override point
            return classes, {c: i for i, c in enumerate(classes)}

    counts = {c: 0 for c in classes}
    for c in classes:
        for _, _, files in os.walk(folder / c, followlinks=True):
            counts[c] += sum(has_file_allowed_extension(f, IMG_EXTENSIONS) for f in files)
    if not any(counts.values()):
        raise DataError(f"imagefolder {folder} has class folders but no images ({' '.join(IMG_EXTENSIONS)}); "
                        f"put image files in {folder}/<class>/")
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        # ImageFolder refuses empty class folders (allow_empty exists only in newer torchvision)
        raise DataError(f"imagefolder {folder} has class folders without images: {', '.join(empty[:5])}"
                        f"{' ...' if len(empty) > 5 else ''}; add images to them or remove them")
    return _Folder(str(folder))


def _file_part(samples: list[tuple[str, int]], size: int, root: Path) -> _Part:
    from PIL import Image

    paths = [p for p, _ in samples]

    def load(idx: np.ndarray) -> tuple[np.ndarray, bool, list[str]]:
        out = np.empty((len(idx), 3, size, size), dtype=np.float32)
        bad: list[str] = []
        gray = True
        for i, j in enumerate(idx):
            try:
                with Image.open(paths[j]) as im:
                    gray &= im.mode in _GRAY_MODES
                    rgb = im.convert("RGB").resize((size, size), Image.BILINEAR)
                out[i] = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0
            except Exception:  # noqa: BLE001 - PIL raises many types for a broken file
                bad.append(os.path.relpath(paths[j], root))
        return out, gray, bad

    return _Part(np.array([t for _, t in samples], dtype=np.int64), load)


def _imagefolder(root: Path, size: int) -> tuple[dict[str, _Part], int]:
    present = {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}
    if "train" not in present:
        if present:
            raise DataError(f"imagefolder {root} has {' and '.join(s + '/' for s in present)} but no train/; "
                            f"add {root}/train/<class>/<image> files")
        present = {"train": root}  # flat: root holds the class folders; all splits are carved from it
    classes = _class_dirs(present["train"])
    if not classes:
        raise DataError(f"imagefolder {present['train']} has no class folders; put images in "
                        f"{present['train']}/<class>/ (one folder per class)")
    if len(classes) == 1:
        raise DataError(f"imagefolder {present['train']} has only one class folder ({classes[0]!r}); a classifier "
                        "needs at least 2 classes, add another class folder")
    parts: dict[str, _Part] = {}
    for split, folder in present.items():
        if split != "train":
            other = _class_dirs(folder)
            if other != classes:
                only_t = sorted(set(classes) - set(other))
                only_o = sorted(set(other) - set(classes))
                raise DataError(f"class folders differ between {present['train']} and {folder}: only in train: "
                                f"{', '.join(only_t[:5]) or '-'}; only in {split}: {', '.join(only_o[:5]) or '-'}; "
                                "use the same class folders in every split")
        parts[split] = _file_part(_image_folder(folder, classes).samples, size, root)
    return parts, len(classes)


# ----------------------------------------------------------------------------------------------- public


def _data_root(name: str, data_dir: str | os.PathLike | None, download: bool) -> Path:
    hint = " or pass --download" if name in _TORCHVISION else ""
    if data_dir is None:
        raise DataError(f"dataset {name!r} is read from local files and needs a data directory; pass --data-dir DIR"
                        + (" (with --download to fetch it there)" if hint else ""))
    root = Path(data_dir).expanduser()
    if not root.exists():
        if download and name in _TORCHVISION:
            root.mkdir(parents=True, exist_ok=True)
            return root
        raise DataError(f"data directory {root} does not exist; create it and put the {name} files there{hint}")
    if not root.is_dir():
        raise DataError(f"data directory {root} is not a directory; pass the folder that holds the {name} files")
    if not download and not any(root.iterdir()):
        raise DataError(f"data directory {root} is empty; put the {name} files there{hint}")
    return root


def _caps(max_images: Mapping[str, int | None] | None) -> dict[str, int | None]:
    caps = dict(DEFAULT_MAX_IMAGES)
    for k, v in (max_images or {}).items():
        if k not in caps:
            raise ConfigError(f"max_images has unknown split {k!r}; use keys {', '.join(_ORDER)}")
        if v is not None and (not isinstance(v, (int, np.integer)) or v < 1):
            raise ConfigError(f"max_images[{k!r}] = {v!r}; use a positive integer or None (no cap)")
        caps[k] = None if v is None else int(v)
    return caps


def load_dataset(
    name: str,
    *,
    input_size: int = 32,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    max_images: Mapping[str, int | None] | None = None,
) -> Splits:
    """Load `name` as four disjoint, stratified, seeded splits of float32 N x C x input_size x input_size.

    Datasets (`DATASETS`):
      - `digits`: scikit-learn's digits, no files needed; (x - 0.5) / 0.5. `data_dir` and `download` are
        ignored, and so is `max_images` unless given (then each split is cut to its cap).
      - `cifar10`, `cifar100`, `mnist`, `fashionmnist`, `svhn`: torchvision's files under `data_dir` (the
        layout torchvision uses, e.g. data_dir/cifar-10-batches-py/, data_dir/MNIST/raw/); downloaded there
        only with `download=True`. train/calib/val come from the train files, test from the test files.
      - `imagefolder`: data_dir/train/<class>/<image>, with optional data_dir/val/ and data_dir/test/ (same
        class folders); or data_dir/<class>/<image> (flat). A split without its own folder is carved out
        of the training images.
    For all but digits: images are resized (bilinear, antialiased) to input_size, grayscale data keeps one
    channel, and every split is normalized with the per-channel mean/std of the train split. A carved split
    takes 20% (test, val) or 10% (calib) of the training images before the caps.

    `max_images` caps the images kept per split, e.g. {"train": 20000, "test": None} (None = no cap); keys
    not given keep `DEFAULT_MAX_IMAGES`: train 5000, calib 500, val 1000, test 1000. Only the chosen images
    are decoded. Sampling is stratified by class and deterministic given `seed`.

    `Splits.name` is the dataset name plus a digest of the arrays (it keys the baseline cache), except for
    `digits`. Raises `DataError` (one line: the problem and the fix) for anything wrong with the data.
    """
    caps = _caps(max_images)
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
    root = _data_root(name, data_dir, download)
    if name == "imagefolder":
        parts, num_classes = _imagefolder(root, input_size)
    else:
        parts, num_classes = _torchvision(name, root, input_size, download)
    return _assemble(name, parts, num_classes, caps, seed, str(root))
