"""Splits that respect pretrained weights (issue 16, part 4).

1. load_dataset(val_from="test") carves validation from the test images (never the training images), disjoint
   from the test split; val_from="train" keeps carving it from the training images; the rule is recorded.
2. Through the CLI, --weights makes validation come from the test images, and meta.json says so.
3. A model validated on the images it was trained on (the Python API): the search warns, in its log, meta.json
   and the report.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import TensorDataset

from autocompress.tasks.data import load_dataset
from autocompress.tasks.splitting import RULES
from tests.conftest import FAST_FLAGS, run_cli
from tests.test_data import _raises, write_cifar10, write_class_tree

# ------------------------------------------------------------------------------- 1. load_dataset

# Red channel: which folder an image is from (train/ 0, test/ 255); green: a number unique to the image.
_MARK = {"train": 0, "test": 255}


def _marked_tree(root: Path, per_class: dict[str, int]) -> None:
    """root/<folder>/<class>/<i>.png, each image one flat colour: red marks the folder, green the image."""
    number = 0
    for folder, n in per_class.items():
        for c in ("a", "b", "c"):
            (root / folder / c).mkdir(parents=True)
            for i in range(n):
                colour = (_MARK[folder], number, 7 * number % 256)
                Image.new("RGB", (12, 12), colour).save(root / folder / c / f"{i}.png")
                number += 1


def _red(x: np.ndarray) -> set[float]:
    return {round(float(v), 4) for v in x[:, 0].reshape(len(x), -1).max(axis=1)}


def _greens(x: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in x[:, 1, 0, 0]]


def test_val_from_test_carves_validation_from_the_test_images(tmp_path):
    _marked_tree(tmp_path, {"train": 10, "test": 6})
    s = load_dataset("imagefolder", data_dir=tmp_path, input_size=12, val_from="test")
    # train/ has red 0 (normalized: 0, its std is 0), test/ red 255 (normalized: 1)
    assert _red(s.train.arrays()[0]) == {0.0} and _red(s.calib.arrays()[0]) == {0.0}
    assert _red(s.val.arrays()[0]) == {1.0} and _red(s.test.arrays()[0]) == {1.0}
    val, test = _greens(s.val.arrays()[0]), _greens(s.test.arrays()[0])
    assert len(set(val)) == len(val) and len(set(test)) == len(test)  # each image once
    assert not set(val) & set(test)  # the test split is disjoint from validation
    assert s.sizes() == {"train": 27, "calib": 3, "val": 9, "test": 9}  # 18 test images halved, calib 10% of 30
    assert sorted(np.bincount(s.val.labels)) == [3, 3, 3]  # stratified
    assert s.rule == RULES["test"] == "validation carved from the test images: the weights may have seen the " \
                                      "training images"
    assert s.datasets()["val"].origin is s  # the CLI's Datasets bring their Splits (and rule) into the library


def test_val_from_train_carves_validation_from_the_training_images(tmp_path):
    _marked_tree(tmp_path, {"train": 10, "test": 6})
    s = load_dataset("imagefolder", data_dir=tmp_path, input_size=12, val_from="train")
    assert _red(s.val.arrays()[0]) == {0.0} and _red(s.test.arrays()[0]) == {1.0}
    assert not set(_greens(s.val.arrays()[0])) & set(_greens(s.train.arrays()[0]))
    assert s.sizes() == {"train": 21, "calib": 3, "val": 6, "test": 18}
    assert s.rule == RULES["train"] == load_dataset("imagefolder", data_dir=tmp_path, input_size=12).rule


def test_val_folder_flat_folder_torchvision_and_digits_rules(tmp_path):
    tree = tmp_path / "tree"
    write_class_tree(tree / "train", {"a": 8, "b": 8}, seed=0)
    write_class_tree(tree / "val", {"a": 2, "b": 2}, seed=1)
    write_class_tree(tree / "test", {"a": 2, "b": 2}, seed=2)
    s = load_dataset("imagefolder", data_dir=tree, input_size=8, val_from="test")
    assert s.rule == RULES["folder"] and s.sizes()["val"] == 4 and s.sizes()["test"] == 4  # val/ used as shipped
    flat = tmp_path / "flat"
    write_class_tree(flat, {"a": 8, "b": 8}, seed=3)
    assert load_dataset("imagefolder", data_dir=flat, input_size=8, val_from="test").rule == RULES["train-only"]
    write_cifar10(tmp_path / "cifar", per_batch_per_class=1, test_per_class=3)
    c = load_dataset("cifar10", data_dir=tmp_path / "cifar", input_size=8, val_from="test")
    assert c.sizes() == {"train": 45, "calib": 5, "val": 15, "test": 15} and c.rule == RULES["test"]
    assert load_dataset("digits", val_from="test").rule == RULES["train"]  # digits ignores val_from


def test_too_few_test_images_to_carve_validation(tmp_path):
    root = write_cifar10(tmp_path, per_batch_per_class=1)
    blob = {"batch_label": "test_batch", "labels": [0], "data": np.zeros((1, 3072), np.uint8), "filenames": ["x"]}
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(blob))
    _raises(r"too few test images in .* to carve validation from: 1 cannot fill val and test \(with trained "
            r"weights, .*\); add test images, a few per class", "cifar10", data_dir=root, val_from="test")
    assert load_dataset("cifar10", data_dir=root, input_size=8).sizes()["test"] == 1  # fine without weights


# ------------------------------------------------------------------------------------ 2. the CLI


@pytest.mark.slow
def test_cli_weights_take_validation_from_the_test_images(tmp_path):
    from autocompress.tasks.models import build_model

    data = tmp_path / "data"
    write_class_tree(data / "train", dict.fromkeys(("cat", "dog", "eel"), 8), seed=0)
    write_class_tree(data / "test", dict.fromkeys(("cat", "dog", "eel"), 4), seed=1)
    weights = tmp_path / "resnet20.pt"
    torch.manual_seed(0)
    torch.save(build_model("resnet20", num_classes=3, in_channels=3).state_dict(), weights)  # random init will do
    run = tmp_path / "run"
    res = run_cli("search", "--out", str(run), "--budget", "1", "--dataset", "imagefolder", "--data-dir", str(data),
                  "--input-size", "32", "--weights", str(weights), *FAST_FLAGS)
    assert res.returncode == 0, res.stderr[-4000:]
    meta = json.loads((run / "meta.json").read_text())
    assert meta["split_rule"] == RULES["test"]
    assert meta["splits"] == {"train": 22, "calib": 2, "val": 6, "test": 6}  # the 12 test images halved
    assert "Validation split: validation carved from the test images" in (run / "report.html").read_text()


# ------------------------------------------------------------------------------ 3. leaked validation


def _memorizing_model(x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """A small CNN trained until it knows every one of these noise images (and nothing else)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 16 * 16, 4))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.mark.slow
def test_validation_on_training_images_is_warned_about(tmp_path):
    import autocompress

    g = torch.Generator().manual_seed(0)
    seen = TensorDataset(torch.randn(48, 1, 16, 16, generator=g), torch.arange(48) % 4)
    unseen = TensorDataset(torch.randn(48, 1, 16, 16, generator=g), torch.arange(48) % 4)
    model = _memorizing_model(*seen.tensors)
    lines: list[str] = []
    autocompress.search(model, seen, seen, test_data=unseen, budget=1, out=tmp_path / "run", progress=False,
                        log=lines.append, baselines=["fp32"], confirm_rounds=0, sensitivity=False,
                        latency={"sessions": 2, "max_sessions": 4, "session_gap_s": 0.05, "max_contended": 2,
                                 "burst_wait_s": 0}, finetune={"epochs": 0.5}, latency_model=False)
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["split_rule"] == RULES["given"]
    warning = meta["split_warning"]
    assert warning.startswith("validation accuracy 100.0% is ") and "points above test accuracy" in warning
    assert warning.endswith("validation images look like training images; give validation images the model was "
                            "not trained on")
    assert any(warning in line for line in lines)
    assert warning in (tmp_path / "run" / "report.html").read_text()


def test_searches_of_several_seeds_share_one_baselines_splits_with_a_split_seed(tmp_path):
    """--seed draws the splits unless --split-seed is given: a seed-1 search on a seed-0 baseline with split seed 0
    has the seed-0 splits (so its test images are not ones the baseline trained on); without it, other splits."""
    from autocompress.engine.plan import make_config
    from autocompress.tasks.data import dataset_of_config

    write_class_tree(tmp_path / "tree" / "train", {"a": 30, "b": 30}, seed=0)

    def positions(**kw):
        cfg = make_config({"dataset": "imagefolder", "data_dir": tmp_path / "tree", "input_size": 16, **kw})
        s = dataset_of_config(cfg)
        return {k: sorted(getattr(s, k).indices.tolist()) for k in ("train", "calib", "val", "test")}

    base = positions(seed=0)
    assert positions(seed=1, split_seed=0) == base
    assert positions(seed=1)["test"] != base["test"]
    assert positions(seed=0, split_seed=0) == base
