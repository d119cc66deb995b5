"""The Python API: live model and Datasets in, a SearchResult out; the documented example runs as written."""

from __future__ import annotations

import inspect
import json
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


def test_a_config_that_is_not_a_search_config_is_refused(tmp_path):
    with pytest.raises(autocompress.ConfigError, match=r"config= is a dict; pass an autocompress.SearchConfig"):
        autocompress.search(_model(), _data(), _data(), config={"budget": 2}, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_resume_is_its_own_function(tmp_path):
    with pytest.raises(autocompress.ConfigError, match=r"resume= is not an option of autocompress.search; continue a "
                                                       r"run with autocompress.resume\(run_dir\)"):
        autocompress.search(_model(), _data(), _data(), out=tmp_path / "run", resume=True)
    with pytest.raises(autocompress.RunError, match=r"no such run directory"):
        autocompress.resume(tmp_path / "nowhere")
    assert not (tmp_path / "run").exists()


def test_the_public_signatures(tmp_path):
    """pick and finalize take keywords only; the types of the public signatures are importable from autocompress."""
    import pandas as pd

    result = autocompress.SearchResult(run_dir=tmp_path, trials=pd.DataFrame(), pareto=pd.DataFrame(), baselines={},
                                       report=tmp_path / "report.html", meta={})
    with pytest.raises(TypeError):
        result.pick(0.5)
    with pytest.raises(TypeError):
        result.finalize(3)
    with pytest.raises(TypeError):
        autocompress.finalize(tmp_path, 3)
    assert inspect.signature(result.finalize).parameters.keys() == \
        inspect.signature(autocompress.finalize).parameters.keys() - {"run_dir"}
    for name in ("search", "resume", "finalize", "load_run", "SearchConfig", "SearchResult", "PickedModel",
                 "TrialRecord", "FinalModel", "Preprocessing", "Budget"):
        assert name in autocompress.__all__ and getattr(autocompress, name) is not None


def test_the_budget_default_is_the_search_configs():
    assert autocompress.SearchConfig().budget == autocompress.Budget(trials=12)
    assert autocompress.SearchConfig(budget=5).budget.trials == 5  # a count or a duration, as on the CLI
    assert autocompress.SearchConfig(budget="1h30m").budget.seconds == 5400
    assert "budget" not in inspect.signature(autocompress.search).parameters  # no default of its own


# A search in seconds: no int8 / pruned baselines, sensitivity scan, latency model or confirmation; light latency.
LIGHT = autocompress.SearchConfig(
    budget=5, baselines=["fp32"], sensitivity=False, confirm_rounds=0, latency_model=False, finetune={"epochs": 0.5},
    latency={"sessions": 1, "max_sessions": 2, "warmup": 3, "min_reps": 10, "max_reps": 40, "max_seconds": 3,
             "session_gap_s": 0, "max_contended": 1, "burst_wait_s": 0, "probe": False})


def _pair():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 1, 16, 16, generator=g)
    return TensorDataset(x[:40], torch.arange(40) % 4), TensorDataset(x[40:], torch.arange(40) % 4)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()


@pytest.mark.slow
def test_a_config_with_an_override_runs_and_resume_continues_it(tmp_path):
    run, (train, val), model = tmp_path / "run", _pair(), _net()
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the caller's own setting: the search may use more, and gives it back
    try:
        result = autocompress.search(model, train, val, config=LIGHT, budget=2, out=run, progress=False, log=print)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert len(result.trials) == 2  # the override's budget, over the config's 5
    stored = json.loads((run / "config.json").read_text())
    assert stored["budget"]["trials"] == 2 and stored["finetune"]["epochs"] == 0.5 and not stored["sensitivity"]
    assert stored["model"] == "Sequential" and stored["dataset"] == "custom"
    with pytest.raises(autocompress.ConfigError, match=r"searched on a model object: pass the same trained model"):
        autocompress.resume(run)
    with pytest.raises(autocompress.ConfigError, match=r"searched on Datasets given in Python: pass them again"):
        autocompress.resume(run, model=model)
    with pytest.raises(autocompress.ConfigError, match=r"'epochs' is not an option of autocompress.resume"):
        autocompress.resume(run, model=model, train_data=train, val_data=val, epochs=3)
    with pytest.raises(autocompress.ConfigError, match=r"space= cannot change when a run is resumed"):
        autocompress.resume(run, model=model, train_data=train, val_data=val, space="my.yaml")
    first = result.trials.set_index("trial")["sha256"].to_dict()
    again = autocompress.resume(run, model=model, train_data=train, val_data=val, budget=3, progress=False, log=print)
    assert sorted(again.trials["trial"]) == [0, 1, 2]  # one more trial, the first two kept, not run again
    assert {t: again.trials.set_index("trial")["sha256"][t] for t in first} == first
    assert json.loads((run / "meta.json").read_text())["resumed"] == 1


def test_a_partial_section_keeps_its_other_defaults():
    default = autocompress.SearchConfig()
    cfg = autocompress.SearchConfig(finetune={"epochs": 2}, latency={"threads": 2})
    assert cfg.finetune == default.finetune.model_copy(update={"epochs": 2.0})
    assert cfg.latency == default.latency.model_copy(update={"threads": 2})
