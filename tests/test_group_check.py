"""Only groups that pruning may really cut reach the search: each is pruned alone before the search, and the model
must still run, export and give outputs of the right shape (autocompress/space/group_check.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

import autocompress
from autocompress.pipeline.prune import channel_counts, find_groups, prune_model
from autocompress.space import SpaceFile, build_space
from autocompress.space.group_check import limit_to_safe_groups
from autocompress.space.layers import quantizable_layers
from autocompress.tasks.models import build_model

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from option_a_resnet import build as option_a_resnet  # noqa: E402

X = torch.randn(1, 1, 32, 32)


def _space(model):
    layers, _ = quantizable_layers(model, X)
    return build_space(SpaceFile(), find_groups(model, X), layers)


def test_groups_around_a_zero_padded_shortcut_are_left_out_with_the_reason():
    model = option_a_resnet().eval()
    space = _space(model)
    assert "conv1" in [g.name for g in space.groups]  # torch-pruning offers it ...
    space, limits = limit_to_safe_groups(space, model, X)
    # ... but pruned alone, the stem's group no longer matches the padded shortcuts: the forward pass fails
    assert limits["conv1"].startswith("not pruned: pruned alone by 0.375: RuntimeError")
    assert "conv1" not in [g.name for g in space.groups]
    # every group left runs at its largest ratio, alone and all together, and really loses channels
    for g in space.groups:
        m = option_a_resnet().eval()
        kept = prune_model(m, X, {g.name: max(g.ratios)}, round_to=space.round_to, min_channels=space.min_channels)
        assert m(X).shape == (1, 10) and kept[g.name][1] < kept[g.name][0]
    m = option_a_resnet().eval()
    prune_model(m, X, {g.name: max(g.ratios) for g in space.groups}, round_to=8, min_channels=8)
    assert m(X).shape == (1, 10)
    assert sum(channel_counts(m).values()) < sum(channel_counts(option_a_resnet()).values())


def test_a_model_pruning_can_follow_keeps_every_group_and_ratio():
    model = build_model("resnet20", num_classes=10, in_channels=1).eval()
    space = _space(model)
    before = [(g.name, list(g.ratios)) for g in space.groups]
    space, limits = limit_to_safe_groups(space, model, X)
    assert limits == {}
    assert [(g.name, list(g.ratios)) for g in space.groups] == before


def test_the_check_is_cached_per_architecture(tmp_path):
    model = option_a_resnet().eval()
    _, first = limit_to_safe_groups(_space(model), model, X, tmp_path)
    files = list((tmp_path / "group_checks").glob("*.json"))
    assert len(files) == 1 and "conv1" in json.loads(files[0].read_text())
    space = _space(option_a_resnet().eval())  # other weights, same architecture: the same answer, from the cache
    space, limits = limit_to_safe_groups(space, option_a_resnet().eval(), X, tmp_path)
    assert limits == first
    assert "conv1" not in [g.name for g in space.groups]


@pytest.mark.slow
def test_a_search_on_an_option_a_resnet_completes_with_real_pruning(tmp_path):
    """Its class lives in a file no installed package provides: it travels to the Ray workers with the model."""
    torch.manual_seed(0)
    x = torch.randn(240, 1, 32, 32)
    y = torch.arange(240) % 4
    x += y.view(-1, 1, 1, 1).float()  # learnable: the class shifts the image
    model = option_a_resnet(num_classes=4)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[:160]), y[:160]).backward()
        opt.step()
    model.eval()
    fast = {"sessions": 2, "max_sessions": 4, "session_gap_s": 0.05, "max_contended": 2, "burst_wait_s": 0}
    result = autocompress.search(model, TensorDataset(x[:160], y[:160]), TensorDataset(x[160:], y[160:]), budget=4,
                                 out=tmp_path / "run", progress=False, log=lambda s: None,
                                 baselines=["fp32", "prune50-int8"],
                                 confirm_rounds=0, sensitivity=True, finetune={"epochs": 1}, latency=fast,
                                 latency_model=False)
    done = result.trials[result.trials["state"] == "COMPLETE"]
    assert len(done) >= 1, result.trials[["trial", "state", "error"]].to_string()
    channels = [c for c in done.columns if c.startswith("channels:")]
    widths = {g["name"]: g["channels"] for g in result.meta["space"] if g["kind"] == "group"}
    assert any(done[c].min() < widths[c.split(":", 1)[1]] for c in channels)  # some trial really pruned
    assert "conv1" in result.meta["pruning_limits"] and "Pruning limited" in result.report.read_text()
    assert result.baselines["prune50-int8"].state.value == "COMPLETE"  # uniform 50% of the groups that may be cut
    assert "cached" in result.meta["sensitivity"] and len(result.trials) >= 4
    import ray

    assert not ray.is_initialized()  # the Ray it started is shut down: nothing stays behind in the caller's process
