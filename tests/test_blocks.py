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


def _depth_space(model, example):
    from autocompress.pipeline.prune import find_groups
    from autocompress.space import SpaceFile, build_space

    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    spec = SpaceFile.model_validate({"prune": {"ratios": [0.0, 0.5]}, "quantize": {"precisions": ["fp32", "int8"]},
                                     "depth": {"blocks": True}})
    return build_space(spec, find_groups(model, example), layers, blocks=removable_blocks(model, example))


def test_a_space_with_depth_offers_each_block_and_tells_models_apart():
    from autocompress.space import SpaceFile, build_space
    from autocompress.space.keys import config_columns, params_key

    model = build_model("resnet20", num_classes=10, in_channels=1).eval()
    example = torch.randn(1, 1, 32, 32)
    space = _depth_space(model, example)
    assert [b.name for b in space.blocks] == ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1",
                                              "layer3.2"]
    assert space.params()["depth:layer2.1"] == ["keep", "drop"]
    assert build_space(SpaceFile(), [], [], blocks=removable_blocks(model, example)).blocks == []  # off by default
    full = space.uniform(0.5, "int8")
    assert space.dropped(full) == () and full["depth:layer3.2"] == "keep"  # the uniform ladder keeps every block
    assert space.complete({"quant:fc": "int8"})["depth:layer1.0"] == "keep"
    short = {**full, "depth:layer2.1": "drop"}
    assert space.dropped(short) == ("layer2.1",)
    assert params_key(space, short) != params_key(space, full)
    # what is asked of a removed block's layers does not make another model
    other = {**short, "quant:layer2.1.conv1": "fp32" if short["quant:layer2.1.conv1"] == "int8" else "int8"}
    assert params_key(space, other) == params_key(space, short)
    assert config_columns(space, short)["depth:layer2.1"] == "drop"


def test_a_trial_and_a_score_with_a_block_removed_build_the_shorter_model(digits):
    from autocompress.pipeline.score import ScoreSettings, score_candidate
    from autocompress.pipeline.trial import TrialSpec, run_pipeline

    model = build_model("resnet20", num_classes=10, in_channels=1).eval()
    space = _depth_space(model, digits.val.images(1))
    params = {**space.uniform(0.5, "int8"), "depth:layer2.1": "drop", "depth:layer3.1": "drop"}
    ratios, precisions = space.decode(params)
    spec = TrialSpec(ratios, precisions, None, space.round_to, space.min_channels, drop_blocks=space.dropped(params))
    out = run_pipeline(model, digits, spec)
    import onnx

    graph = onnx.load_from_string(out.onnx_bytes).graph
    convs = sum(n.op_type in ("Conv", "QLinearConv") for n in graph.node)
    assert convs == 21 - 4  # ResNet-20's 19 convolutions and 2 shortcut projections, less the two blocks' four
    assert not any(layer.startswith(("layer2.1.", "layer3.1.")) for layer in out.integer_layers + out.float_layers)
    assert out.integer_layers and 0 <= out.val_accuracy <= 100
    score = score_candidate(model, digits, ratios, precisions, criterion="l2", round_to=space.round_to,
                            min_channels=space.min_channels, reduce_range=False,
                            settings=ScoreSettings(bn_images=64, val_images=64), drop_blocks=space.dropped(params))
    full = score_candidate(model, digits, ratios, precisions, criterion="l2", round_to=space.round_to,
                           min_channels=space.min_channels, reduce_range=False,
                           settings=ScoreSettings(bn_images=64, val_images=64))
    assert score.parameters < full.parameters
    assert not any(g.startswith(("layer2.1.", "layer3.1.")) for g in score.kept)


def test_the_latency_model_predicts_a_removed_block_faster():
    from autocompress.latency_model.layers import wire_layers
    from autocompress.latency_model.model import LatencyModel, LatencyTable, all_keys
    from autocompress.latency_model.predict import Predictor

    model = build_model("resnet20", num_classes=10, in_channels=1).eval()
    example = torch.randn(1, 1, 32, 32)
    space = _depth_space(model, example)
    sites = wire_layers(model, example, space)
    table = LatencyTable()
    keys = all_keys(sites, space)
    table.record(keys, [1e-6 * k.cin * k.cout * k.hw[0] * k.hw[1] for k in keys])
    predictor = Predictor(LatencyModel(sites, space, table), space)
    full = space.uniform(0.0, "int8")
    one, two = ({**full, **{f"depth:{b}": "drop" for b in blocks}}
                for blocks in (["layer1.1"], ["layer1.1", "layer2.2"]))
    assert predictor.predict(two) < predictor.predict(one) < predictor.predict(full)
    # by what the table holds for the removed layers (no junction touches them in ResNet-20)
    keys, _ = predictor.model.keys(*space.decode(full))
    removed = [table.entries[k.text()] for site, k in zip(sites, keys, strict=True)
               if site.name.startswith("layer1.1.")]
    assert len(removed) == 2
    lighter = predictor.model.total(*space.decode(one), ("layer1.1",))
    assert predictor.model.total(*space.decode(full)) - lighter == pytest.approx(sum(removed))


def test_a_records_depth_choices_survive_the_round_trip_a_resume_and_finalize_read():
    from autocompress.results.records import TrialRecord, TrialState

    choices = {"prune:conv1": 0.5, "quant:fc": "int8", "depth:layer2.1": "drop", "depth:layer3.1": "keep"}
    rec = TrialRecord(3, TrialState.FAIL, choices, error="boom")
    assert TrialRecord.from_row(rec.to_row()).choices == choices
