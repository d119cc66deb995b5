"""Streamed splits (read on demand, never held), the model's own preprocessing, and augmentation that fits the data.

1. Splits of files are read in DataLoader workers: disjoint, seeded, uncapped on request, small to pickle.
2. Preprocessing: --resize/--crop/--mean/--std/--normalize reach the pixels, meta.json, the report and pick --export.
3. Augmentation: crop-flip for natural images, shift (never a flip) for digits.
"""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest
import torch
from conftest import FAST_FLAGS, run_cli
from PIL import Image
from test_data import write_class_tree, write_mnist

from autocompress.errors import ConfigError
from autocompress.pipeline.augment import augment
from autocompress.tasks.data import load_dataset
from autocompress.tasks.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

SPLITS = ("train", "calib", "val", "test")


def _hashes(split) -> list[bytes]:
    x, _ = split.arrays()
    return [hashlib.sha1(row.tobytes()).digest() for row in x]


# ----------------------------------------------------------------------------------------- 1. streamed splits


def test_file_splits_are_disjoint_seeded_and_read_the_same_by_worker_processes(tmp_path):
    root = tmp_path / "tree"
    write_class_tree(root / "train", dict.fromkeys(("a", "b", "c"), 20), seed=0)
    write_class_tree(root / "val", dict.fromkeys(("a", "b", "c"), 4), seed=1)
    caps = {k: None for k in SPLITS}
    s = load_dataset("imagefolder", data_dir=root, input_size=16, max_images=caps, seed=1)
    assert s.sizes() == {"train": 42, "calib": 6, "val": 12, "test": 12}  # no cap: all 60 + 12 images used
    hashes = {k: _hashes(getattr(s, k)) for k in SPLITS}
    for i, a in enumerate(SPLITS):
        assert len(set(hashes[a])) == len(hashes[a])
        for b in SPLITS[i + 1:]:
            assert not set(hashes[a]) & set(hashes[b]), f"{a} and {b} overlap"
    again = load_dataset("imagefolder", data_dir=root, input_size=16, max_images=caps, seed=1, workers=2)
    other = load_dataset("imagefolder", data_dir=root, input_size=16, max_images=caps, seed=2)
    for k in SPLITS:  # the same seed picks the same images, whether read here or in 2 worker processes
        x1, y1 = getattr(s, k).arrays()
        x2, y2 = getattr(again, k).arrays()
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert again.name == s.name != other.name
    assert set(_hashes(other.train)) != set(hashes["train"])
    # shuffled batches through 2 workers hold exactly the requested items
    order = np.random.default_rng(0).permutation(len(again.train))
    got = torch.cat([x for x, _ in again.train.batches(7, order=order)]).numpy()
    np.testing.assert_array_equal(got, s.train.arrays()[0][order])


def test_a_copy_of_the_same_folder_names_the_same_splits(tmp_path):
    """The baseline cache is keyed on Splits.name: a copied folder (new modification times) is the same data, and a
    changed file is not."""
    import os
    import shutil

    root = tmp_path / "tree"
    write_class_tree(root / "train", dict.fromkeys(("a", "b"), 10), seed=0)
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, copy_function=shutil.copyfile)  # contents only: every file gets a new mtime
    some = next((copy / "train" / "a").iterdir())
    assert os.stat(some).st_mtime_ns != os.stat(root / "train" / "a" / some.name).st_mtime_ns
    name = load_dataset("imagefolder", data_dir=root, input_size=16).name
    assert load_dataset("imagefolder", data_dir=copy, input_size=16).name == name
    some.write_bytes(some.read_bytes() + b"\0")  # one file one byte longer: other data
    assert load_dataset("imagefolder", data_dir=copy, input_size=16).name != name


def test_a_split_of_files_pickles_without_its_pixels(tmp_path):
    root = tmp_path / "big"
    for c in ("a", "b"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(30):
            Image.fromarray(np.full((120, 160, 3), i * 8, np.uint8)).save(root / "train" / c / f"{i}.jpg")
    s = load_dataset("imagefolder", data_dir=root, input_size=96, max_images={k: None for k in SPLITS})
    pixels = sum(s.sizes().values()) * 3 * 96 * 96 * 4
    blob = pickle.dumps(s)  # what a Ray worker receives: paths and indices, not images
    assert len(blob) < pixels / 50, (len(blob), pixels)
    back = pickle.loads(blob)
    np.testing.assert_array_equal(back.val.arrays()[0], s.val.arrays()[0])


def test_mnist_arrays_are_read_from_the_files_in_each_process(tmp_path):
    root = write_mnist(tmp_path / "m")
    s = load_dataset("mnist", data_dir=root, max_images={k: None for k in SPLITS})
    blob = pickle.dumps(s.train)
    assert len(blob) < 20_000  # no uint8 array inside (60 training images x 784 bytes would be 47 kB)
    np.testing.assert_array_equal(pickle.loads(blob).arrays()[0], s.train.arrays()[0])


def test_user_dataset_without_targets_is_streamed_and_capped(tmp_path):
    from autocompress.tasks.datasets import splits_from_data

    class Noise(torch.utils.data.Dataset):  # no `targets`: its labels are read once
        def __init__(self, n, seed):
            self.n, self.seed, self.reads = n, seed, 0

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            self.reads += 1
            g = torch.Generator().manual_seed(self.seed * 100_000 + i)
            return torch.rand(3, 8, 8, generator=g), i % 4

    train, val = Noise(200, 1), Noise(40, 2)
    s = splits_from_data(train, val, caps={"train": 50, "calib": 10, "val": None, "test": None}, seed=0,
                         log=lambda _: None)
    assert s.sizes() == {"train": 50, "calib": 10, "val": 20, "test": 20}
    assert set(s.calib.indices) <= set(s.train.indices)  # calibration: a choice of the training images
    assert not set(s.val.indices) & set(s.test.indices)
    assert s.augment == "shift"  # unknown data is never flipped unless asked
    x, y = next(iter(s.train.batches(16)))
    assert x.shape == (16, 3, 8, 8) and y.tolist() == [int(i) % 4 for i in s.train.indices[:16]]


# ----------------------------------------------------------------------------------------- 2. preprocessing


def test_resize_then_center_crop_and_given_normalization(tmp_path):
    root = tmp_path / "wide"
    for c, value in (("dark", 40), ("light", 200)):
        (root / "train" / c).mkdir(parents=True)
        for i in range(6):
            arr = np.full((60, 90, 3), value, np.uint8)
            arr[:, :15] = 255  # a white left edge that a 60 -> 48 resize and 40 crop cut off
            Image.fromarray(arr).save(root / "train" / c / f"{i}.png")
    s = load_dataset("imagefolder", data_dir=root, input_size=40, resize=48, mean=[0.5, 0.5, 0.5],
                     std=[0.25, 0.25, 0.25], max_images={k: None for k in SPLITS})
    assert s.input_shape == (3, 40, 40)
    assert s.preprocessing == Preprocessing(48, 40, (0.5,) * 3, (0.25,) * 3, 3, normalize="given")
    x, y = s.train.arrays()
    for img, label in zip(x, y, strict=True):  # the edge is cropped away; each pixel is (v/255 - 0.5) / 0.25
        want = ((40 if label == 0 else 200) / 255 - 0.5) / 0.25
        np.testing.assert_allclose(img, want, atol=1e-4)
    imagenet = load_dataset("imagefolder", data_dir=root, input_size=40, normalize="imagenet")
    assert imagenet.preprocessing.mean == IMAGENET_MEAN and imagenet.preprocessing.std == IMAGENET_STD
    assert imagenet.name != s.name  # the baseline cache tells preprocessings apart


@pytest.mark.parametrize("kwargs, match", [
    ({"mean": [0.5, 0.5, 0.5]}, "--mean and --std go together"),
    ({"mean": [0.5, 0.5], "std": [0.2, 0.2]}, "has 2 values but the images have 3 channel"),
    ({"mean": [0.5], "std": [0.0]}, "has a value <= 0"),
    ({"resize": 12}, "--resize 12 is smaller than the crop"),
])
def test_bad_preprocessing_is_a_config_error(tmp_path, kwargs, match):
    write_class_tree(tmp_path / "t" / "train", {"a": 5, "b": 5}, seed=0)
    with pytest.raises(ConfigError, match=match):
        load_dataset("imagefolder", data_dir=tmp_path / "t", input_size=16, **kwargs)


def test_imagenet_normalization_of_grayscale_is_refused(tmp_path):
    root = write_mnist(tmp_path / "m")
    with pytest.raises(ConfigError, match="--normalize imagenet needs RGB images"):
        load_dataset("mnist", data_dir=root, normalize="imagenet")


@pytest.mark.slow
def test_imagefolder_search_at_128px_records_its_preprocessing_and_export_writes_it(tmp_path):
    data = tmp_path / "data"
    for split, n, seed in (("train", 10, 0), ("val", 3, 1)):
        root = data / split
        rng = np.random.default_rng(seed)
        for c in ("cat", "dog"):
            (root / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)).save(root / c / f"{i}.jpg")
    run = tmp_path / "run"
    res = run_cli("search", "--out", str(run), "--budget", "1", "--dataset", "imagefolder", "--data-dir", str(data),
                  "--resize", "146", "--crop", "128", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225",
                  "--baseline-epochs", "1", *FAST_FLAGS)
    assert res.returncode == 0, res.stderr[-4000:]
    meta = json.loads((run / "meta.json").read_text())
    assert meta["input_shape"] == [3, 128, 128]
    pre = meta["preprocessing"]
    assert (pre["resize"], pre["crop"], pre["normalize"]) == (146, 128, "given")
    assert pre["mean"] == [0.485, 0.456, 0.406] and pre["std"] == [0.229, 0.224, 0.225]
    assert meta["augment"] == "crop-flip"
    assert "resize 146, center crop 128" in (run / "report.html").read_text()
    out = tmp_path / "ship" / "model.onnx"
    res = run_cli("pick", str(run), "--export", str(out))
    assert res.returncode == 0, res.stderr[-4000:]
    shipped = json.loads((tmp_path / "ship" / "model.preprocessing.json").read_text())
    assert shipped["input_shape"] == [1, 3, 128, 128] and shipped["preprocessing"] == pre
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((1, 3, 128, 128), np.float32)})[0].shape == (1, 2)


# ------------------------------------------------------------------------------------------ 3. augmentation


def test_crop_flip_flips_and_crops_each_image_reproducibly():
    x = torch.linspace(0, 1, 32).expand(64, 3, 32, 32).contiguous()  # brighter to the right
    a = augment(x, "crop-flip", torch.Generator().manual_seed(0))
    b = augment(x, "crop-flip", torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    slope = (a[:, 0, :, -1] - a[:, 0, :, 0]).mean(dim=1)
    flipped = int((slope < 0).sum())
    assert 16 <= flipped <= 48  # about half of the images are mirrored
    assert len({round(float(s), 3) for s in slope.abs()}) > 32  # each its own crop scale


def test_shift_never_flips_digits():
    x = torch.linspace(0, 1, 32).expand(64, 1, 32, 32).contiguous()
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        out = augment(x, "shift", g)
        assert ((out[:, 0, :, -1] - out[:, 0, :, 0]) >= 0).all()


def test_auto_augmentation_fits_the_data(tmp_path):
    write_class_tree(tmp_path / "t" / "train", {"a": 5, "b": 5}, seed=0)
    assert load_dataset("imagefolder", data_dir=tmp_path / "t", input_size=16).augment == "crop-flip"
    assert load_dataset("mnist", data_dir=write_mnist(tmp_path / "m")).augment == "shift"
    assert load_dataset("digits").augment == "shift"
    assert load_dataset("digits", augment="none").augment == "none"


def test_api_records_the_preprocessing_the_users_datasets_apply(tmp_path):
    from autocompress.api import plan

    data = torch.utils.data.TensorDataset(torch.randn(40, 1, 8, 8), torch.arange(40) % 2)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 2))
    prep = plan(model, data, data, out=tmp_path / "run", log=lambda _: None,
                preprocessing={"resize": 9, "crop": 8, "mean": [0.1], "std": [0.3]})
    assert prep.splits.preprocessing == Preprocessing(9, 8, (0.1,), (0.3,), 1, normalize="given")
    with pytest.raises(ConfigError, match="is not a preprocessing"):
        plan(model, data, data, out=tmp_path / "run2", log=lambda _: None, preprocessing={"crop": 8})


class _CollectingSource(torch.utils.data.Dataset):
    """Each item runs a full garbage collection in the reader process, as a long epoch's allocations do, and is the
    reader's private memory (kB) after it."""

    def __len__(self) -> int:
        return 128

    def __getitem__(self, i: int):
        import gc

        gc.collect()
        with open("/proc/self/smaps_rollup") as f:
            private = sum(int(line.split()[1]) for line in f if line.startswith(("Private_Clean", "Private_Dirty")))
        return torch.tensor([float(private)]), 0


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/smaps_rollup"), reason="Linux /proc only")
def test_reader_processes_do_not_copy_the_parents_python_heap():
    """A reader forked from a worker with a large Python heap copies little of it when it collects garbage: the
    parent's objects are frozen while its readers start. Compared in one run with readers forked the plain way
    (here ~57 MB each against ~12 MB)."""
    from torch.utils.data import DataLoader

    from autocompress.tasks.splitting import Split

    heap = [{"k": i, "v": str(i)} for i in range(2_000_000)]  # the parent's Python objects
    source = _CollectingSource()
    plain = [float(x) for x, _ in DataLoader(source, batch_size=8, num_workers=2) for x in x.flatten()]
    split = Split(source, np.zeros(len(source), np.int64), workers=2)
    frozen = [float(x) for x, _ in split.batches(8) for x in x.flatten()]
    assert len(heap) == 2_000_000  # alive until the readers have run
    assert max(frozen) < 0.5 * min(plain), (max(frozen) / 1024, min(plain) / 1024)
