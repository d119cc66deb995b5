"""Readers of the dataset files under `data_dir` (torchvision's formats and a folder of class folders).

Each gives the dataset's shipped parts (train, and test/val when they exist) with labels read up front and
pixels decoded on demand, so only the images the sampling picks are decoded (see `splitting`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from autocompress.errors import DataError
from autocompress.tasks.splitting import Part

__all__ = ["data_root", "torchvision_parts", "imagefolder_parts"]

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


# --------------------------------------------------------------------------------- torchvision datasets


def _array_part(data: np.ndarray, labels: np.ndarray, layout: str, size: int) -> Part:
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

    return Part(np.asarray(labels, dtype=np.int64), load)


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


def torchvision_parts(name: str, root: Path, size: int, download: bool) -> tuple[dict[str, Part], int]:
    """The train and test parts of torchvision dataset `name` under `root`, and its number of classes."""
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

    def part(ds) -> Part:
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


def _file_part(samples: list[tuple[str, int]], size: int, root: Path) -> Part:
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

    return Part(np.array([t for _, t in samples], dtype=np.int64), load)


def imagefolder_parts(root: Path, size: int) -> tuple[dict[str, Part], int]:
    """The parts (train, and val/test if their folders exist) of the imagefolder at `root`, and its class count."""
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
    parts: dict[str, Part] = {}
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


# --------------------------------------------------------------------------------------------- data_dir


def data_root(name: str, data_dir: str | os.PathLike | None, download: bool) -> Path:
    """`data_dir` as a Path, checked to exist and hold files (created when downloading a torchvision dataset)."""
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
