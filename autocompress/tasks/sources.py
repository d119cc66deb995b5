"""Readers of the dataset files under `data_dir` (torchvision's formats and a folder of class folders).

Each gives the dataset's shipped parts (train, and test/val when they exist) with labels read up front and
pixels decoded when a split is read, image by image (see `splitting`): nothing holds a decoded split.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from autocompress.errors import DataError
from autocompress.tasks.preprocess import Preprocessing
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


class ArrayImages(Dataset):
    """The images of a torchvision dataset whose files hold one uint8 array (CIFAR, MNIST, SVHN), each converted
    when read. The array is opened from the files on first use in each process and never pickled: a Ray worker
    reads the files itself instead of receiving the pixels."""

    cheap = True  # an item is a slice of an array in memory: read without worker processes

    def __init__(self, name: str, root: Path, which: str, pre: Preprocessing) -> None:
        self.name, self.root, self.which, self.pre = name, root, which, pre
        self._data: tuple[np.ndarray, str] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_data": None}

    def __len__(self) -> int:
        return len(self._array()[0])

    def _array(self) -> tuple[np.ndarray, str]:
        if self._data is None:
            ds = _open_torchvision(self.name, self.root, self.which, download=False)
            self._data = _pixels(ds)
        return self._data

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        data, layout = self._array()
        x = torch.from_numpy(np.ascontiguousarray(data[i])).float().div_(255.0)
        if layout == "nhw":
            x = x.unsqueeze(0)
        elif layout == "nhwc":
            x = x.permute(2, 0, 1)
        return self.pre.apply(x), 0


def _pixels(ds) -> tuple[np.ndarray, str]:
    """(uint8 array, its layout) of a torchvision dataset object."""
    cls = type(ds).__name__
    if cls == "SVHN":
        return ds.data, "nchw"
    if cls in ("MNIST", "FashionMNIST"):
        return ds.data.numpy(), "nhw"
    return ds.data, "nhwc"


def _labels(ds) -> np.ndarray:
    return np.asarray(ds.labels if type(ds).__name__ == "SVHN" else ds.targets, dtype=np.int64)


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


def _open_torchvision(name: str, root: Path, which: str, download: bool):
    """The torchvision dataset object of `name`'s `which` part ("train" or "test") under `root`."""
    import torchvision.datasets as tvd

    cls_name, layout = _TORCHVISION[name]
    cls = getattr(tvd, cls_name)
    if not download and cls_name in ("CIFAR10", "CIFAR100", "SVHN"):
        cls = _local_only(cls)
    try:
        if cls_name == "SVHN":
            return cls(str(root), split=which, download=download)
        return cls(str(root), train=which == "train", download=download)
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


def _array_fingerprint(data: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256(np.ascontiguousarray(data).tobytes())
    h.update(labels.tobytes())
    return h.hexdigest()[:16]


def torchvision_parts(name: str, root: Path, download: bool) -> tuple[dict[str, Part], int]:
    """The train and test parts of torchvision dataset `name` under `root`, and its number of classes."""
    folder = _TV_FOLDER.get(name)
    if folder and not (root / folder).exists() and root.name == folder and not download:
        root = root.parent  # data_dir points at the dataset's own folder
    parts: dict[str, Part] = {}
    num_classes = 10
    for which in ("train", "test"):
        ds = _open_torchvision(name, root, which, download)
        data, layout = _pixels(ds)
        labels = _labels(ds)
        channels = 1 if layout == "nhw" else (data.shape[3] if layout == "nhwc" else data.shape[1])
        parts[which] = Part(labels, functools.partial(ArrayImages, name, root, which),
                            _array_fingerprint(data, labels), channels)
        if type(ds).__name__ != "SVHN":
            num_classes = len(ds.classes)
    return parts, num_classes


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


class FileImages(Dataset):
    """Image files, each decoded and preprocessed when read (in the DataLoader's worker processes)."""

    def __init__(self, paths: list[str], pre: Preprocessing) -> None:
        self.paths, self.pre = paths, pre

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        try:
            with Image.open(self.paths[i]) as im:
                pixels = np.asarray(im.convert("L" if self.pre.channels == 1 else "RGB"))
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a broken file
            raise DataError(f"cannot decode image file {self.paths[i]} ({type(e).__name__}); "
                            "delete or replace it") from None
        x = torch.from_numpy(pixels.copy()).float().div_(255.0)
        x = x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)
        return self.pre.apply(x), 0


def _scan(paths: list[str], root: Path) -> bool:
    """Read every file's header (fast: no pixels decoded): all grayscale? A file that is not an image is a DataError."""
    from PIL import Image

    gray, bad = True, []
    for p in paths:
        try:
            with Image.open(p) as im:
                gray &= im.mode in _GRAY_MODES
        except Exception:  # noqa: BLE001 - PIL raises many types for a broken file
            bad.append(os.path.relpath(p, root))
    if bad:
        raise DataError(f"cannot decode {len(bad)} image file(s) in {root}: {', '.join(sorted(bad)[:3])}"
                        f"{' ...' if len(bad) > 3 else ''}; delete or replace them")
    return gray


def _file_part(samples: list[tuple[str, int]], root: Path, gray: bool) -> Part:
    paths = [p for p, _ in samples]
    # names and sizes, not modification times: a copy of the same folder (a new machine, a restored backup) is the
    # same data and must find the same cached baseline
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{os.path.relpath(p, root)}:{os.stat(p).st_size}\n".encode())
    labels = np.array([t for _, t in samples], dtype=np.int64)
    h.update(labels.tobytes())
    return Part(labels, functools.partial(FileImages, paths), h.hexdigest()[:16], 1 if gray else 3)


def imagefolder_parts(root: Path) -> tuple[dict[str, Part], int]:
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
    samples: dict[str, list[tuple[str, int]]] = {}
    for split, folder in present.items():
        if split != "train":
            other = _class_dirs(folder)
            if other != classes:
                only_t = sorted(set(classes) - set(other))
                only_o = sorted(set(other) - set(classes))
                raise DataError(f"class folders differ between {present['train']} and {folder}: only in train: "
                                f"{', '.join(only_t[:5]) or '-'}; only in {split}: {', '.join(only_o[:5]) or '-'}; "
                                "use the same class folders in every split")
        samples[split] = _image_folder(folder, classes).samples
    gray = all(_scan([p for p, _ in items], root) for items in samples.values())
    return {split: _file_part(items, root, gray) for split, items in samples.items()}, len(classes)


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
