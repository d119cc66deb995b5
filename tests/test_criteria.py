"""The pruning criteria of the field as a choice (pipeline.prune.CRITERIA): magnitude (L2, L1), BatchNorm scale
(network slimming) and first-order Taylor, each really ranking channels, and searched as a per-trial choice."""

from __future__ import annotations

import copy

import pytest
import torch

from autocompress.errors import SpaceError
from autocompress.pipeline.prune import CRITERIA, find_groups, prune_model
from autocompress.space import SpaceFile, build_space, load_space_file


def test_bn_scale_keeps_the_channels_with_the_largest_batchnorm_scales(trained_resnet20, digits):
    model = copy.deepcopy(trained_resnet20)
    gamma = model.layer1[0].bn1.weight.detach().clone()  # the group layer1.0.conv1: its only BatchNorm is bn1
    prune_model(model, digits.val.images(1), {"layer1.0.conv1": 0.5}, round_to=8, criterion="bn")
    top = torch.sort(torch.topk(gamma.abs(), 8).indices).values
    assert torch.equal(model.layer1[0].bn1.weight.detach(), gamma[top])


@pytest.mark.parametrize("criterion", CRITERIA)
def test_each_criterion_removes_channels_and_the_model_still_runs(trained_resnet20, digits, criterion):
    example = digits.val.images(1)
    ratios = {g.name: 0.5 for g in find_groups(trained_resnet20, example)}
    model = copy.deepcopy(trained_resnet20)
    kept = prune_model(model, example, ratios, round_to=8, criterion=criterion, data=digits.train)
    assert all(after < before for before, after in kept.values())
    assert model.layer3[0].conv1.out_channels == 32 and model(digits.val.images(4)).shape == (4, 10)
    assert all(p.grad is None for p in model.parameters())  # taylor's gradients do not reach the fine-tune
    # the criteria disagree on which channels matter: another criterion keeps other BatchNorm scales
    l2 = copy.deepcopy(trained_resnet20)
    prune_model(l2, example, ratios, round_to=8, criterion="l2")
    if criterion != "l2":
        assert any(not torch.equal(a, b) for a, b in zip(_bn_scales(model), _bn_scales(l2), strict=True))


def _bn_scales(model: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_taylor_without_training_images_says_so(trained_resnet20, digits):
    with pytest.raises(ValueError, match="taylor criterion needs training images"):
        prune_model(copy.deepcopy(trained_resnet20), digits.val.images(1), {"layer1.0.conv1": 0.5}, criterion="taylor")


def test_the_space_offers_criteria_as_one_choice_per_trial(trained_resnet20, digits, tmp_path):
    from autocompress.space.keys import config_columns, model_key

    example = digits.val.images(1)
    spec = SpaceFile.model_validate({"prune": {"ratios": [0.0, 0.5], "criteria": ["l1", "taylor"]}})
    space = build_space(spec, find_groups(trained_resnet20, example)[:2], ["conv1"])
    assert space.params()["criterion"] == ["l1", "taylor"]
    params = {**space.uniform(0.5, "fp32"), "criterion": "taylor"}
    assert config_columns(space, params)["criterion"] == "taylor"
    assert space.criterion(space.uniform(0.5, "fp32")) == "l1"  # the first listed, when the sampler gave none
    # the same channel counts ranked by another criterion are another model
    r, p = space.decode(params)
    assert model_key(space, r, p, "taylor") != model_key(space, r, p, "l1")
    bad = tmp_path / "s.yaml"
    bad.write_text("prune:\n  criteria: [l3]\n")
    with pytest.raises(SpaceError, match=r"prune\.criteria\.0 in .*s\.yaml"):
        load_space_file(bad)
