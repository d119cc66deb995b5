"""The Python API: live model and Datasets in, a SearchResult out; the documented example runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils.data import Dataset, TensorDataset

import autocompress

DOC = Path(__file__).resolve().parent.parent / "docs" / "python-api.md"


def _example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert blocks, "docs/python-api.md has no python example"
    return blocks[0]


@pytest.mark.slow
def test_the_documented_example_runs_as_written(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(_example())
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                         env={**os.environ})
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    # the pick printed a trial with its figures and the file to ship, and a configuration per group and layer
    m = re.search(r"trial (\d+): ([\d.]+)% test, ([\d.]+) ms \(([\d.]+)x FP32\), (\S+\.onnx)", out)
    assert m, out
    assert Path(m.group(5)).is_file() and Path(m.group(5)).is_relative_to(tmp_path / "runs" / "digits-api")
    assert float(m.group(2)) > 50  # a trained model, compressed: far above chance (10%)
    assert re.search(r"\d+ -> \d+ channels \(ratio [\d.]+\)", out) and "precisions:" in out
    result = autocompress.load_run(tmp_path / "runs" / "digits-api")
    assert len(result.trials) >= 3 and set(result.baselines) >= {"fp32"}
    chosen = result.pick(max_latency_ms=float(result.pareto["latency_ms"].median()))  # the example's limit
    assert chosen is not None and chosen.trial == int(m.group(1)) and f"{chosen.latency_ms:.3f}" == m.group(3)
    # its configuration is the trial's: every layer's precision and every group's kept channels
    row = result.trials.set_index("trial").loc[chosen.trial]
    assert chosen.config.precisions == {k[6:]: v for k, v in row.items() if k.startswith("quant:")}
    assert {g: c["kept"] for g, c in chosen.config.groups.items()} == {
        k[9:]: int(v) for k, v in row.items() if k.startswith("channels:")}
    assert all(c["kept"] <= c["channels"] for c in chosen.config.groups.values())


def _data(n: int = 40):
    x = torch.randn(n, 1, 16, 16)
    return TensorDataset(x, torch.arange(n) % 4)


def _model():
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def test_an_unknown_option_is_named_with_the_allowed_ones(tmp_path):
    with pytest.raises(autocompress.ConfigError, match=r"'epochs' is not an option of autocompress.search; the "
                                                       r"options are .*finetune"):
        autocompress.search(_model(), _data(), _data(), out=tmp_path / "run", epochs=3)
    assert not (tmp_path / "run").exists()


def test_a_bad_option_value_names_the_key(tmp_path):
    with pytest.raises(autocompress.ConfigError, match=r"concurrency in the options of autocompress.search"):
        autocompress.search(_model(), _data(), _data(), out=tmp_path / "run", concurrency=0)


class _Images(Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, i):
        return torch.zeros(1, 16, 16)  # no label


def test_a_dataset_that_does_not_yield_pairs_is_refused(tmp_path):
    with pytest.raises(autocompress.DataError, match=r"train_data\[0\] gives a Tensor, not an \(image_tensor, label\)"):
        autocompress.search(_model(), _Images(), _data(), out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_model_that_cannot_take_the_images_is_refused(tmp_path):
    rgb = TensorDataset(torch.randn(20, 3, 16, 16), torch.arange(20) % 4)
    with pytest.raises(autocompress.ModelError, match=r"cannot take inputs of shape \(3, 16, 16\)"):
        autocompress.search(_model(), rgb, rgb, out=tmp_path / "run")


def test_a_model_with_fewer_outputs_than_classes_is_refused(tmp_path):
    many = TensorDataset(torch.randn(20, 1, 16, 16), torch.arange(20) % 6)
    with pytest.raises(autocompress.ModelError, match=r"returns \(1, 4\) for one image, but the data has 6 classes"):
        autocompress.search(_model(), many, many, out=tmp_path / "run")


def test_a_model_that_is_not_a_module_is_refused(tmp_path):
    with pytest.raises(autocompress.ModelError, match=r"model is a dict; pass a trained torch.nn.Module"):
        autocompress.search({"weights": 1}, _data(), _data(), out=tmp_path / "run")


def test_a_run_directory_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "run").write_text("not a directory")
    with pytest.raises(autocompress.RunError, match=r"--out .*run is a file; pass a directory for the run"):
        autocompress.search(_model(), _data(), _data(), out=tmp_path / "run")
