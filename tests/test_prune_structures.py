"""Structures torch-pruning needs help with: grouped convolutions (RegNet, ResNeXt) and models it cannot trace as a
whole (ShuffleNet's channel shuffle). Channels are really removed and the pruned model still runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from autocompress.pipeline.prune import channel_counts, find_groups, kept_channels, prune_model

X = torch.randn(1, 3, 16, 16)


class GroupedBlock(nn.Module):
    """1x1 -> 3x3 convolution in 4 groups of 16 channels -> 1x1, as a RegNet-X / ResNeXt block."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 64, 1)
        self.b = nn.Conv2d(64, 64, 3, padding=1, groups=4)
        self.c = nn.Conv2d(64, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.c(torch.relu(self.b(torch.relu(self.a(x)))))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("parts,ratio,expected", [(1, 0.5, 32), (4, 0.5, 32), (4, 0.375, 40), (25, 0.375, 250),
                                                  (4, 0.75, 16)])
def test_kept_channels_of_a_grouped_convolution_are_equal_per_group_and_on_the_grid(parts, ratio, expected):
    channels = 400 if parts == 25 else 64
    keep = kept_channels(channels, ratio, round_to=8, min_channels=8, channel_groups=parts)
    assert keep == expected and keep % parts == 0 and keep % 8 == 0 if parts in (1, 4) else keep % parts == 0


def test_a_grouped_convolution_loses_the_same_channels_in_every_group():
    torch.manual_seed(0)
    model = GroupedBlock().eval()
    groups = {g.name: g for g in find_groups(model, X)}
    assert groups["a"].channel_groups == 4 and groups["b"].channel_groups == 4
    kept = prune_model(model, X, {"a": 0.5, "b": 0.5}, round_to=8, min_channels=8)
    assert kept == {"a": (64, 32), "b": (64, 32)}
    assert model.b.groups == 4 and model.b.weight.shape == (32, 8, 3, 3)  # 4 groups of 8 channels in and out
    assert model(X).shape == (1, 10)


def test_a_model_untraceable_as_a_whole_is_pruned_within_its_parts():
    """torchvision's ShuffleNetV2: torch-pruning 1.6 fails on its channel shuffle when tracing the whole model."""
    from torchvision.models import shufflenet_v2_x0_5

    torch.manual_seed(0)
    model = shufflenet_v2_x0_5(num_classes=10).eval()
    groups = find_groups(model, X)
    # each block is traced alone: inside its main branch, the first conv with the depthwise conv after it; the
    # block's output channels, which the shuffle interleaves with the next block's, are at the part's boundary
    assert len(groups) == 16 and [g.part for g in groups][:2] == ["stage2.0", "stage2.1"]
    assert all(g.members == (f"{g.part}.branch2.0", f"{g.part}.branch2.3") for g in groups)
    before = channel_counts(model)
    kept = prune_model(model, X, {g.name: 0.5 for g in groups}, round_to=8, min_channels=8)
    after = channel_counts(model)
    for g in groups:
        assert after[g.name] == after[g.members[1]] == kept[g.name][1] < before[g.name]
        assert after[f"{g.part}.branch2.5"] == before[f"{g.part}.branch2.5"]  # the block's output keeps its width
    assert model(X).shape == (1, 10)
