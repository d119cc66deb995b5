"""Bring-your-own data and models, end to end through the CLI.

1. A search on each on-disk layout (CIFAR-10 python batches, MNIST idx files, an ImageFolder tree) completes,
   and meta.json records the split sizes the data implies.
2. torchvision resnet18 and mobilenet_v2 (random init) at 32x32 complete a search whose pruned trials really
   have fewer channels in the shipped ONNX file, which runs in a plain ONNX Runtime session.

Data is tiny (random-noise images) so every baseline trains in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest

from tests.conftest import FAST_CONFIG, run_cli
from tests.test_data import write_cifar10, write_class_tree, write_mnist

# Shorter than conftest.FAST_FLAGS: these runs only have to complete, not to learn anything.
QUICK_FLAGS = ["--config", str(FAST_CONFIG), "--baseline-epochs", "1", "--finetune-epochs", "0.3", "--no-progress"]


def _search(run: Path, *args: str) -> pd.DataFrame:
    res = run_cli("search", "--out", str(run), *args, *QUICK_FLAGS)
    assert res.returncode == 0, f"stdout:\n{res.stdout[-2000:]}\nstderr:\n{res.stderr[-4000:]}"
    assert (run / "report.html").is_file()
    return pd.read_csv(run / "trials.csv")


def _check_trials(table: pd.DataFrame, run: Path, n: int) -> None:
    assert len(table) == n
    assert sorted(table["trial"]) == list(range(n))
    assert (table["state"] == "COMPLETE").all(), table["error"].tolist()
    for rel in table["onnx"]:
        assert (run / rel).is_file(), rel


# ------------------------------------------------------------------------------------- 1. data layouts


def _cifar10(root: Path) -> tuple[Path, dict[str, int], list[int]]:
    # 5 batches x 10 classes x 1 = 50 train images, 10 x 2 = 20 test images (3-channel 32x32).
    write_cifar10(root, per_batch_per_class=1, test_per_class=2)
    # test comes from test_batch; val = round(0.2 * 50) = 10 and calib = round(0.1 * 50) = 5 are carved
    # from the 50 training images, leaving 35 to train on.
    return root, {"train": 35, "calib": 5, "val": 10, "test": 20}, [3, 32, 32]


def _mnist(root: Path) -> tuple[Path, dict[str, int], list[int]]:
    # 10 classes x 6 = 60 train images, 10 x 2 = 20 test images (1-channel 28x28, resized to 32).
    write_mnist(root, per_class=6, test_per_class=2)
    # val = round(0.2 * 60) = 12, calib = round(0.1 * 60) = 6, train = 42
    return root, {"train": 42, "calib": 6, "val": 12, "test": 20}, [1, 32, 32]


def _imagefolder(root: Path) -> tuple[Path, dict[str, int], list[int]]:
    # 3 classes of small RGB PNGs: 16 per class in train/, 4 in val/, 4 in test/ (72 images).
    classes = ("cat", "dog", "eel")
    write_class_tree(root / "train", dict.fromkeys(classes, 16), seed=0)
    write_class_tree(root / "val", dict.fromkeys(classes, 4), seed=1)
    write_class_tree(root / "test", dict.fromkeys(classes, 4), seed=2)
    # val/ and test/ are used as shipped; calib = round(0.1 * 48) = 5 is carved from train/ (43 left)
    return root, {"train": 43, "calib": 5, "val": 12, "test": 12}, [3, 32, 32]


LAYOUTS = {"cifar10": _cifar10, "mnist": _mnist, "imagefolder": _imagefolder}


@pytest.mark.slow
@pytest.mark.parametrize("dataset", list(LAYOUTS))
def test_search_on_local_files(tmp_path, dataset):
    data, sizes, input_shape = LAYOUTS[dataset](tmp_path / "data")
    run = tmp_path / "run"
    table = _search(run, "--budget", "2", "--dataset", dataset, "--data-dir", str(data), "--input-size", "32")
    _check_trials(table, run, 2)
    meta = json.loads((run / "meta.json").read_text())
    assert meta["dataset"] == dataset
    assert meta["splits"] == sizes
    assert all(v > 0 for v in meta["splits"].values())
    assert meta["input_shape"] == input_shape


# ------------------------------------------------------------------------ 2. torchvision models, pruning


def _conv_weights(path: Path) -> dict[str, int]:
    """Output channels of each Conv weight initializer, keyed `<layer>.weight` (`_quantized` suffix removed)."""
    m = onnx.load(str(path))
    dims = {i.name.removesuffix("_quantized"): list(i.dims) for i in m.graph.initializer}
    return {name: d[0] for name, d in dims.items() if name.endswith(".weight") and len(d) == 4}


def _pruned_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Trials whose searched `prune:*` ratios include one > 0."""
    prune_cols = [c for c in table.columns if c.startswith("prune:")]
    if not prune_cols:
        return table.iloc[:0]
    return table[(table[prune_cols].fillna(0) > 0).any(axis=1)]


def _check_pruned_onnx(baseline_path: Path, run: Path, pruned: pd.DataFrame, num_classes: int) -> None:
    """Every pruned trial's ONNX file has a Conv with fewer output channels than the unpruned baseline's
    same-named Conv, and runs in a plain ONNX Runtime session giving (1, num_classes)."""
    base = onnx.load(str(baseline_path))
    base_convs = {n.input[1] for n in base.graph.node if n.op_type == "Conv"}
    base_out = {k: v for k, v in _conv_weights(baseline_path).items() if k in base_convs}
    assert base_out, "no Conv weight initializers named <layer>.weight in the baseline"

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # quiet about unused constant initializers
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    assert len(pruned) >= 1
    for _, row in pruned.iterrows():
        path = run / row["onnx"]
        got = _conv_weights(path)
        shared = set(got) & set(base_out)
        assert shared, f"trial {row['trial']}: no Conv initializer shares a name with the baseline"
        smaller = {k: (got[k], base_out[k]) for k in shared if got[k] < base_out[k]}
        assert smaller, f"trial {row['trial']} has prune ratios > 0 but no Conv with fewer output channels"
        assert all(got[k] <= base_out[k] for k in shared)  # pruning never adds channels

        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        (inp,) = sess.get_inputs()
        out = sess.run(None, {inp.name: x})[0]
        assert out.shape == (1, num_classes)
        assert np.isfinite(out).all()


def _rgb_tree(root: Path) -> tuple[Path, int]:
    classes = tuple("abcdefghij")  # 10 classes, as the issue asks of the torchvision models
    write_class_tree(root / "train", dict.fromkeys(classes, 6), seed=10)
    write_class_tree(root / "val", dict.fromkeys(classes, 2), seed=11)
    write_class_tree(root / "test", dict.fromkeys(classes, 2), seed=12)
    return root, len(classes)


def _rgb_cifar(root: Path) -> tuple[Path, int]:
    write_cifar10(root, per_batch_per_class=1, test_per_class=2, seed=5)
    return root, 10


@pytest.mark.slow
# the sensitivity scan of a torchvision model is covered once (resnet18); mobilenet_v2's 52 layers would add 27 s
@pytest.mark.parametrize("model,dataset,make,scan", [("resnet18", "imagefolder", _rgb_tree, []),
                                                     ("mobilenet_v2", "cifar10", _rgb_cifar, ["--no-sensitivity"])])
def test_torchvision_model_is_really_pruned(tmp_path, model, dataset, make, scan):
    data, num_classes = make(tmp_path / "data")
    common = ["--budget", "3", "--model", model, "--dataset", dataset, "--data-dir", str(data), "--input-size", "32",
              *scan]
    run = tmp_path / "run"
    table = _search(run, *common)
    _check_trials(table, run, 3)
    baseline_fp32 = run / "models" / "baseline-fp32.onnx"  # unpruned: the default space offers ratio 0
    meta = json.loads((run / "meta.json").read_text())
    assert meta["model"] == model and meta["input_shape"] == [3, 32, 32]

    pruned = _pruned_rows(table)
    if pruned.empty:
        # The sampler chose ratio 0 everywhere: search again in a space where every group is pruned.
        space = tmp_path / "prune-half.yaml"
        space.write_text("prune:\n  ratios: [0.5]\n")
        run = tmp_path / "run-pruned"
        table = _search(run, *common, "--space", str(space))
        _check_trials(table, run, 3)
        # every group's only choice is ratio 0.5 (the baselines stay unpruned whatever the space allows)
        baseline_fp32 = run / "models" / "baseline-fp32.onnx"
        groups = [r for r in json.loads((run / "meta.json").read_text())["space"] if r["kind"] == "group"]
        assert groups and all(len(g["choices"]) == 1 and g["choices"][0].startswith("0.5->") for g in groups)
        pruned = table
    _check_pruned_onnx(baseline_fp32, run, pruned, num_classes)
