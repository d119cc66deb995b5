"""load_dataset on small data written to disk in each format (no download), and every DataError case."""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from autocompress.errors import ConfigError, DataError
from autocompress.tasks.data import DATASETS, Splits, load_dataset

SPLITS = ("train", "calib", "val", "test")


# ------------------------------------------------------------------------------------------ writers


def _images(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)  # random noise: every image is unique


def _labels(n_per_class: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), n_per_class))


def write_cifar10(root: Path, *, per_batch_per_class: int = 2, test_per_class: int = 3, seed: int = 0) -> Path:
    """data_batch_1..5, test_batch, batches.meta in root/cifar-10-batches-py, as the python version ships them."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    batches = [f"data_batch_{i}" for i in range(1, 6)]
    for fname, per_class in [(b, per_batch_per_class) for b in batches] + [("test_batch", test_per_class)]:
        y = _labels(per_class, 10, rng)
        blob = {"batch_label": fname, "labels": y.tolist(), "data": _images(rng, len(y), (3072,)),
                "filenames": [f"{fname}_{i}.png" for i in range(len(y))]}
        (d / fname).write_bytes(pickle.dumps(blob))
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)],
                                                   "num_cases_per_batch": 10 * per_batch_per_class,
                                                   "num_vis": 3072}))
    return root


def write_cifar100(root: Path, *, per_class: int = 2, test_per_class: int = 1) -> Path:
    rng = np.random.default_rng(1)
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    for fname, k in (("train", per_class), ("test", test_per_class)):
        y = _labels(k, 100, rng)
        (d / fname).write_bytes(pickle.dumps({"fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist(),
                                              "data": _images(rng, len(y), (3072,))}))
    (d / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"f{i}" for i in range(100)],
                                           "coarse_label_names": [f"g{i}" for i in range(20)]}))
    return root


def _idx(path: Path, arr: np.ndarray) -> None:
    """IDX ubyte file: magic 0x0000 08 <ndim>, big-endian int32 dims, then the uint8 data."""
    header = struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str = "MNIST", *, per_class: int = 6, test_per_class: int = 2) -> Path:
    """root/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte, as torchvision.datasets.MNIST reads."""
    rng = np.random.default_rng(2)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, k in (("train", per_class), ("t10k", test_per_class)):
        y = _labels(k, 10, rng)
        _idx(raw / f"{prefix}-images-idx3-ubyte", _images(rng, len(y), (28, 28)))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", y)
    return root


def write_svhn(root: Path, *, per_class: int = 6, test_per_class: int = 2) -> Path:
    """train_32x32.mat / test_32x32.mat: X is 32x32x3xN, y is Nx1 with digit 0 stored as 10."""
    import scipy.io

    rng = np.random.default_rng(3)
    root.mkdir(parents=True, exist_ok=True)
    for fname, k in (("train_32x32.mat", per_class), ("test_32x32.mat", test_per_class)):
        y = _labels(k, 10, rng)
        scipy.io.savemat(root / fname, {"X": _images(rng, len(y), (32, 32, 3)).transpose(1, 2, 3, 0),
                                        "y": np.where(y == 0, 10, y).reshape(-1, 1).astype(np.uint8)})
    return root


def write_class_tree(folder: Path, classes: dict[str, int], *, seed: int, gray: bool = False) -> None:
    """folder/<class>/<i>.png of random noise, sizes varying around 20 px."""
    rng = np.random.default_rng(seed)
    for c, n in classes.items():
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = (int(v) for v in rng.integers(14, 26, size=2))
            arr = rng.integers(0, 256, size=(h, w) if gray else (h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(folder / c / f"{i}.png")


# ------------------------------------------------------------------------------------------- checks


def _row_hashes(x: np.ndarray) -> set[bytes]:
    return {hashlib.sha1(row.tobytes()).digest() for row in x}


def check_splits(s: Splits, *, channels: int, size: int, num_classes: int, sizes: dict[str, int] | None = None,
                 all_classes_in: tuple[str, ...] = ("train",)) -> None:
    assert isinstance(s, Splits)
    assert s.num_classes == num_classes
    assert s.input_shape == (channels, size, size)
    xs = {k: getattr(s, k).arrays()[0] for k in SPLITS}
    ys = {"train": s.train.labels, "val": s.val.labels, "test": s.test.labels}
    for k, x in xs.items():
        assert x.dtype == np.float32 and x.ndim == 4 and x.shape[1:] == (channels, size, size), k
        assert len(x) > 0, k
        assert np.isfinite(x).all(), k
    for k, y in ys.items():
        assert y.dtype == np.int64 and y.shape == (len(xs[k]),), k
        assert y.min() >= 0 and y.max() < num_classes, k
    for k in all_classes_in:
        assert set(ys[k].tolist()) == set(range(num_classes)), k
    hashes = {k: _row_hashes(x) for k, x in xs.items()}
    for k, h in hashes.items():
        assert len(h) == len(xs[k]), f"duplicate rows inside {k}"
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            assert not hashes[a] & hashes[b], f"{a} and {b} overlap"
    # normalized with the train split's per-channel statistics
    np.testing.assert_allclose(s.train.arrays()[0].mean(axis=(0, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(s.train.arrays()[0].std(axis=(0, 2, 3)), 1.0, atol=1e-3)
    if sizes is not None:
        assert s.sizes() == sizes


# ------------------------------------------------------------------------------- torchvision formats


def test_datasets_lists_every_name():
    assert DATASETS == ("digits", "cifar10", "cifar100", "mnist", "fashionmnist", "svhn", "imagefolder")


def test_cifar10(tmp_path):
    root = write_cifar10(tmp_path / "data")
    s = load_dataset("cifar10", data_dir=root)
    # train files: 5 x 20 = 100 -> val 20%, calib 10%, rest train; test_batch (30) is the test split
    check_splits(s, channels=3, size=32, num_classes=10, sizes={"train": 70, "calib": 10, "val": 20, "test": 30},
                 all_classes_in=("train", "val", "test"))
    assert s.name.startswith("cifar10-")


def test_cifar10_resized_capped_and_seeded(tmp_path):
    root = write_cifar10(tmp_path / "data")
    caps = {"train": 15, "calib": 4, "val": 10, "test": 10}
    a = load_dataset("cifar10", data_dir=root, input_size=16, seed=1, max_images=caps)
    check_splits(a, channels=3, size=16, num_classes=10, sizes=caps, all_classes_in=("train", "val", "test"))
    b = load_dataset("cifar10", data_dir=root, input_size=16, seed=1, max_images=caps)
    c = load_dataset("cifar10", data_dir=root, input_size=16, seed=2, max_images=caps)
    for k in ("train", "calib", "val", "test"):
        for got, want in zip(getattr(a, k).arrays(), getattr(b, k).arrays(), strict=True):
            np.testing.assert_array_equal(got, want)
    assert a.name == b.name != c.name
    assert not np.array_equal(a.test.labels, c.test.labels) or \
        not np.array_equal(a.test.arrays()[0], c.test.arrays()[0])
    # None = no cap on that split
    full = load_dataset("cifar10", data_dir=root, max_images={"test": None, "val": 5})
    assert full.sizes() == {"train": 85, "calib": 10, "val": 5, "test": 30}


def test_cifar100(tmp_path):
    s = load_dataset("cifar100", data_dir=write_cifar100(tmp_path / "data"))
    check_splits(s, channels=3, size=32, num_classes=100, sizes={"train": 140, "calib": 20, "val": 40, "test": 100},
                 all_classes_in=("train", "test"))


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")])
def test_mnist_idx(tmp_path, name, folder):
    root = write_mnist(tmp_path / "data", folder)
    s = load_dataset(name, data_dir=root)  # 28 px gray, resized to 32
    check_splits(s, channels=1, size=32, num_classes=10, sizes={"train": 42, "calib": 6, "val": 12, "test": 20},
                 all_classes_in=("train", "val", "test"))
    # data_dir may also point at the dataset's own folder
    t = load_dataset(name, data_dir=root / folder)
    np.testing.assert_array_equal(s.train.arrays()[0], t.train.arrays()[0])


def test_svhn(tmp_path):
    s = load_dataset("svhn", data_dir=write_svhn(tmp_path / "svhn"), input_size=24)
    check_splits(s, channels=3, size=24, num_classes=10, sizes={"train": 42, "calib": 6, "val": 12, "test": 20},
                 all_classes_in=("train", "val", "test"))


# --------------------------------------------------------------------------------------- imagefolder


def test_imagefolder_train_val_test(tmp_path):
    root = tmp_path / "tree"
    classes = ("cat", "dog", "eel")
    write_class_tree(root / "train", dict.fromkeys(classes, 8), seed=0)
    write_class_tree(root / "val", dict.fromkeys(classes, 2), seed=1)
    write_class_tree(root / "test", dict.fromkeys(classes, 3), seed=2)
    (root / "train" / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    (root / "train" / "cat" / "notes.txt").write_text("not an image")  # other extensions are ignored
    s = load_dataset("imagefolder", data_dir=root, input_size=16)
    # val/ and test/ are used as they are; calib (10%) is carved from train/
    check_splits(s, channels=3, size=16, num_classes=3, sizes={"train": 22, "calib": 2, "val": 6, "test": 9},
                 all_classes_in=("train", "val", "test"))
    assert s.name.startswith("imagefolder-")


def test_imagefolder_train_test_carves_val(tmp_path):
    root = tmp_path / "tree"
    write_class_tree(root / "train", {"a": 10, "b": 10}, seed=0)
    write_class_tree(root / "test", {"a": 3, "b": 3}, seed=1)
    s = load_dataset("imagefolder", data_dir=root, input_size=8)
    check_splits(s, channels=3, size=8, num_classes=2, sizes={"train": 14, "calib": 2, "val": 4, "test": 6},
                 all_classes_in=("train", "val", "test"))


def test_imagefolder_flat_is_split(tmp_path):
    root = tmp_path / "flat"
    write_class_tree(root, {"x": 10, "y": 10, "z": 10}, seed=0)
    s = load_dataset("imagefolder", data_dir=root, input_size=12, seed=3)
    check_splits(s, channels=3, size=12, num_classes=3, sizes={"train": 15, "calib": 3, "val": 6, "test": 6},
                 all_classes_in=("train", "val", "test"))


def test_imagefolder_grayscale_has_one_channel(tmp_path):
    root = tmp_path / "gray"
    write_class_tree(root / "train", {"a": 6, "b": 6}, seed=0, gray=True)
    s = load_dataset("imagefolder", data_dir=root, input_size=10)
    check_splits(s, channels=1, size=10, num_classes=2)


# ------------------------------------------------------------------------------------------- digits


def test_digits_unchanged():
    """Same indices and values as before data_dir support: cached baselines are keyed on them."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = ((F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False) - 0.5) / 0.5).numpy()
    y = d.target.astype(np.int64)
    idx = np.arange(len(x))
    rest, te = train_test_split(idx, test_size=0.2, random_state=0, stratify=y)
    rest, va = train_test_split(rest, test_size=0.2 / 0.8, random_state=0, stratify=y[rest])
    tr, ca = train_test_split(rest, test_size=0.08 / 0.6, random_state=0, stratify=y[rest])
    s = load_dataset("digits", input_size=32, seed=0)
    assert s.name == "digits" and s.num_classes == 10
    for got, want in ((s.train.arrays()[0], x[tr]), (s.train.labels, y[tr]), (s.calib.arrays()[0], x[ca]),
                      (s.val.arrays()[0], x[va]),
                      (s.val.labels, y[va]), (s.test.arrays()[0], x[te]), (s.test.labels, y[te])):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert s.sizes() == {"train": 933, "calib": 144, "val": 360, "test": 360}


# ------------------------------------------------------------------------------------------- errors


def _raises(match: str, *args, **kwargs) -> str:
    with pytest.raises(DataError, match=match) as e:
        load_dataset(*args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def test_error_unknown_name():
    _raises(r"unknown dataset 'imagenet'; use one of: digits, cifar10, cifar100, mnist, fashionmnist, svhn, "
            r"imagefolder$", "imagenet")


@pytest.mark.parametrize("name", ["cifar10", "imagefolder"])
def test_error_no_data_dir(name):
    _raises(rf"dataset '{name}' is read from local files and needs a data directory; pass --data-dir DIR", name)


def test_error_data_dir_missing_or_empty(tmp_path):
    _raises(r"data directory .*nope does not exist; create it and put the cifar10 files there or pass --download",
            "cifar10", data_dir=tmp_path / "nope")
    msg = _raises(r"data directory .*nope does not exist; create it and put the imagefolder files there$",
                  "imagefolder", data_dir=tmp_path / "nope")
    assert "--download" not in msg
    (tmp_path / "empty").mkdir()
    _raises(r"data directory .*empty is empty; put the mnist files there or pass --download",
            "mnist", data_dir=tmp_path / "empty")
    _raises(r"data directory .*empty is empty; put the imagefolder files there$", "imagefolder",
            data_dir=tmp_path / "empty")
    (tmp_path / "afile").write_text("x")
    _raises(r"data directory .*afile is not a directory", "svhn", data_dir=tmp_path / "afile")


@pytest.mark.parametrize("name,expects", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                                          ("mnist", "MNIST/raw"), ("fashionmnist", "FashionMNIST/raw"),
                                          ("svhn", "train_32x32.mat")])
def test_error_torchvision_files_missing(tmp_path, name, expects):
    (tmp_path / "README").write_text("something else")
    msg = _raises(rf"{name} files not found in .* \(torchvision reads .*\); put the files there or pass --download$",
                  name, data_dir=tmp_path)
    assert expects in msg


def test_error_torchvision_partial_files(tmp_path):
    root = write_cifar10(tmp_path)
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    _raises(r"cifar10 files not found in .*; put the files there or pass --download$", "cifar10", data_dir=root)


def test_error_torchvision_corrupt_file(tmp_path):
    root = write_cifar10(tmp_path)
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x00garbage")
    _raises(r"cannot read the cifar10 files in .*: \w+.*; replace them \(or pass --download to fetch fresh copies\)$",
            "cifar10", data_dir=root)
    root = write_mnist(tmp_path / "m")
    (root / "MNIST" / "raw" / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 12)
    _raises(r"cannot read the mnist files in .*; replace them", "mnist", data_dir=root)


def test_error_imagefolder_no_class_folders(tmp_path):
    (tmp_path / "loose.png").write_bytes(b"")
    _raises(r"imagefolder .* has no class folders; put images in .*/<class>/ \(one folder per class\)$",
            "imagefolder", data_dir=tmp_path)
    (tmp_path / "t" / "train").mkdir(parents=True)
    (tmp_path / "t" / "train" / "x.png").write_bytes(b"")
    _raises(r"imagefolder .*train has no class folders", "imagefolder", data_dir=tmp_path / "t")


def test_error_imagefolder_no_images(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        (tmp_path / c / "readme.txt").write_text("x")
    _raises(r"imagefolder .* has class folders but no images \(\.jpg .*\); put image files in .*/<class>/$",
            "imagefolder", data_dir=tmp_path)


def test_error_imagefolder_empty_class(tmp_path):
    write_class_tree(tmp_path, {"a": 4, "b": 4}, seed=0)
    (tmp_path / "c").mkdir()
    _raises(r"imagefolder .* has class folders without images: c; add images to them or remove them$",
            "imagefolder", data_dir=tmp_path)


def test_error_imagefolder_undecodable(tmp_path):
    write_class_tree(tmp_path, {"a": 6, "b": 6}, seed=0)
    for i in range(4):
        (tmp_path / "b" / f"broken{i}.png").write_bytes(b"not a png at all")
    msg = _raises(r"cannot decode 4 image file\(s\) in .*: .*broken.* \.\.\.; delete or replace them$",
                  "imagefolder", data_dir=tmp_path)
    assert msg.count("broken") == 3


def test_error_single_class(tmp_path):
    write_class_tree(tmp_path / "train", {"only": 5}, seed=0)
    _raises(r"imagefolder .*train has only one class folder \('only'\); a classifier needs at least 2 classes",
            "imagefolder", data_dir=tmp_path)


@pytest.mark.parametrize("other", ["val", "test"])
def test_error_class_folders_differ(tmp_path, other):
    write_class_tree(tmp_path / "train", {"a": 5, "b": 5}, seed=0)
    write_class_tree(tmp_path / other, {"a": 2, "c": 2}, seed=1)
    _raises(rf"class folders differ between .*train and .*{other}: only in train: b; only in {other}: c; "
            r"use the same class folders in every split$", "imagefolder", data_dir=tmp_path)


def test_error_val_without_train(tmp_path):
    write_class_tree(tmp_path / "val", {"a": 2, "b": 2}, seed=0)
    _raises(r"imagefolder .* has val/ but no train/; add .*/train/<class>/<image> files$", "imagefolder",
            data_dir=tmp_path)


def test_error_too_few_images(tmp_path):
    write_class_tree(tmp_path, {"a": 1, "b": 2}, seed=0)
    _raises(r"too few training images in .*: 3 cannot fill train, test, val, calib; add images", "imagefolder",
            data_dir=tmp_path)


def test_bad_max_images_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown split 'training'"):
        load_dataset("digits", max_images={"training": 10})
    with pytest.raises(ConfigError, match="positive integer or None"):
        load_dataset("digits", max_images={"train": 0})


def test_a_runs_recorded_preprocessing_is_used_as_recorded(tmp_path):
    """finalize reads a run's data again with every training image: the mean/std must stay the run's own."""
    root = write_cifar10(tmp_path)
    capped = load_dataset("cifar10", data_dir=root, input_size=16, max_images={"train": 20})
    recorded = capped.preprocessing.with_stats([0.1, 0.2, 0.3], [0.5, 0.4, 0.3])  # not what any split would give
    again = load_dataset("cifar10", data_dir=root, input_size=16, recorded=recorded)
    assert again.preprocessing == recorded and len(again.train) > len(capped.train)
    given = load_dataset("cifar10", data_dir=root, input_size=16, mean=[0.1, 0.2, 0.3], std=[0.5, 0.4, 0.3])
    for i in range(3):
        assert torch.equal(again.train[i][0], given.train[i][0])
    assert load_dataset("cifar10", data_dir=root, input_size=16).preprocessing.mean != recorded.mean
