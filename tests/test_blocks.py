"""Removable residual blocks (pipeline/blocks.py): which blocks are offered, and that a removed block keeps the model
running and leaves the exported graph."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torchvision

from autocompress.pipeline.blocks import removable_blocks, remove_blocks
from autocompress.pipeline.export import export_onnx, fold_batchnorm, layer_nodes
from autocompress.tasks.models import build_model


@pytest.mark.parametrize("name,build,shape,expected", [
    # a stage's first block changes the width or the resolution (its shortcut is a convolution): it stays
    ("resnet20", lambda: build_model("resnet20", num_classes=10, in_channels=1), (1, 1, 32, 32),
     ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]),
    ("resnet18", lambda: torchvision.models.resnet18(num_classes=10), (1, 3, 64, 64),
     ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]),
    ("mobilenet_v2", lambda: torchvision.models.mobilenet_v2(num_classes=10), (1, 3, 64, 64),
     [f"features.{i}" for i in (3, 5, 6, 8, 9, 10, 12, 13, 15, 16)]),  # the inverted residuals with use_res_connect
    ("densenet121", lambda: torchvision.models.densenet121(num_classes=10), (1, 3, 64, 64), []),  # concatenation
])
def test_the_residual_blocks_with_an_identity_shortcut_are_offered(name, build, shape, expected):
    model = build().eval()
    blocks = removable_blocks(model, torch.randn(*shape))
    assert [b.name for b in blocks] == expected
    if expected:
        modules = dict(model.named_modules())
        assert all(b.layers and all(isinstance(modules[n], (nn.Conv2d, nn.Linear)) for n in b.layers) for b in blocks)


class Plain(nn.Module):
    """Shape-preserving layers without a shortcut, and a block whose shortcut is a convolution: neither is
    removable (without the shortcut the signal would not go on; with a convolution it is not the identity)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.proj = ConvShortcut()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))

    def forward(self, x):
        return self.head(self.proj(self.stack(x)))


class ConvShortcut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.shortcut = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return torch.relu(self.conv(x) + self.shortcut(x))


def test_layers_without_an_identity_shortcut_are_not_offered():
    assert removable_blocks(Plain().eval(), torch.randn(1, 8, 8, 8)) == []


def _exported(model: nn.Module, example: torch.Tensor):
    folded = copy.deepcopy(model)
    fold_batchnorm(folded, example)
    return export_onnx(folded, example)


def test_a_removed_block_keeps_the_model_running_and_its_layers_leave_the_exported_graph():
    model = build_model("resnet20", num_classes=10, in_channels=1).eval()
    example = torch.randn(2, 1, 32, 32)
    block = next(b for b in removable_blocks(model, example[:1]) if b.name == "layer2.1")
    pruned = copy.deepcopy(model)
    remove_blocks(pruned, [block.name])
    with torch.no_grad():
        out = pruned(example)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert not any(n.startswith("layer2.1.") for n, _ in pruned.named_modules())
    # exported as a trial's artifact is: BatchNorm folded first, so each weight keeps its layer's name
    before, after = (_exported(m, example[:1]) for m in (model, pruned))
    convs = [sum(n.op_type == "Conv" for n in p.graph.node) for p in (before, after)]
    assert convs[1] == convs[0] - 2  # the block's two convolutions are gone
    assert set(layer_nodes(before, list(block.layers))) == set(block.layers)  # they were there
    assert layer_nodes(after, list(block.layers)) == {}
    assert not any(init.name.startswith("layer2.1.") for init in after.graph.initializer)
    # the other blocks are untouched: the same outputs from the same weights, before and after, up to the block
    with torch.no_grad():
        x = model.bn1(model.conv1(example)).relu()
        assert torch.equal(pruned.layer1(x), model.layer1(x))
