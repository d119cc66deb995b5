"""Unit tests per stage of the trial pipeline: prune, export, quantize + verify, fake quantization,
the whole trial, latency, the search space, the Pareto set and budget parsing.

Every assertion is on a real value computed by the code under test (no mocks).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.utils.parametrize as P
from onnx import numpy_helper

from autocompress.config import Budget, LatencyConfig, TrainConfig, parse_budget
from autocompress.errors import ConfigError, SpaceError
from autocompress.measure.accuracy import onnx_accuracy
from autocompress.measure.latency import LatencyMeter, measure_latency
from autocompress.measure.verify import kernel_report
from autocompress.pipeline.export import export_onnx, fold_batchnorm, layer_nodes
from autocompress.pipeline.prune import PruneGroup, channel_counts, find_groups, kept_channels, prune_model
from autocompress.pipeline.quantize import calibrate_activations, fake_quantized, quantize_static_onnx
from autocompress.pipeline.trial import TrialSpec, run_pipeline
from autocompress.results.pareto import pareto_front
from autocompress.space import DEFAULT_SPACE, SpaceFile, build_space, load_space_file
from autocompress.tasks.models import build_model

X1 = (1, 1, 32, 32)  # one digits image, as the pipeline sees it
RESNET20_LAYERS = 22  # 21 convs (19 3x3 + 2 shortcuts) + fc


def _resnet20() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet20", num_classes=10, in_channels=1).eval()


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so folding really changes the conv."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)


def _noise_split(n: int, shape: tuple[int, ...]):
    from autocompress.tasks.splitting import Split, TensorImages

    x = torch.from_numpy(np.random.default_rng(0).standard_normal((n, *shape), np.float32))
    return Split(TensorImages(x, torch.zeros(n, dtype=torch.long)), np.zeros(n, np.int64))


def _ort_run(path_or_bytes, x: np.ndarray) -> np.ndarray:
    src = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


# ============================================================================ prune
def test_find_groups_resnet20_couples_residual_layers():
    model = _resnet20()
    groups = find_groups(model, torch.randn(*X1))
    assert len(groups) == 12
    by_name = {g.name: g for g in groups}
    # each residual stage is one group: every conv that feeds the stage's sums loses channels together
    assert by_name["conv1"].members == ("conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2")
    assert by_name["layer2.0.conv2"].members == (
        "layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2", "layer2.2.conv2")
    assert by_name["layer3.0.conv2"].members == (
        "layer3.0.conv2", "layer3.0.shortcut.0", "layer3.1.conv2", "layer3.2.conv2")
    channels = (by_name["conv1"].channels, by_name["layer2.0.conv2"].channels, by_name["layer3.0.conv2"].channels)
    assert channels == (16, 32, 64)
    # the first conv of each block is a group of its own
    for name in ("layer1.0.conv1", "layer2.1.conv1", "layer3.2.conv1"):
        assert by_name[name].members == (name,)
    # the classifier is never a group, and every conv is in exactly one group
    members = [m for g in groups for m in g.members]
    assert "fc" not in members
    assert sorted(members) == sorted(n for n in channel_counts(model) if n != "fc")


def test_prune_resnet20_half_of_every_group():
    model = _resnet20()
    example = torch.randn(*X1)
    before = channel_counts(model)
    groups = find_groups(model, example)
    kept = prune_model(model, example, {g.name: 0.5 for g in groups})
    after = channel_counts(model)

    assert kept["layer3.0.conv1"] == (64, 32) and kept["conv1"] == (16, 8) and kept["layer2.0.conv2"] == (32, 16)
    assert before["layer3.0.conv1"] == 64 and after["layer3.0.conv1"] == 32
    for name, n in before.items():
        if name == "fc":
            assert after[name] == 10
        else:
            assert after[name] == n // 2, name
    # weights really shrink, inputs of consumers too, BN follows its conv
    assert tuple(model.conv1.weight.shape) == (8, 1, 3, 3)
    assert tuple(model.layer3[0].conv1.weight.shape) == (32, 16, 3, 3)
    assert tuple(model.layer3[0].shortcut[0].weight.shape) == (32, 16, 1, 1)
    assert model.layer3[0].bn1.num_features == 32 and model.layer3[0].bn1.running_mean.shape == (32,)
    assert tuple(model.fc.weight.shape) == (10, 32)
    assert model.fc.in_features == 32 and model.fc.out_features == 10
    assert sum(p.numel() for p in model.parameters()) < 0.3 * sum(p.numel() for p in _resnet20().parameters())
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_prune_one_residual_group_changes_only_its_members_and_consumers():
    model = _resnet20()
    example = torch.randn(*X1)
    before = channel_counts(model)
    kept = prune_model(model, example, {"layer3.0.conv2": 0.5})
    after = channel_counts(model)
    assert kept == {"layer3.0.conv2": (64, 32)}
    changed = {n for n in before if before[n] != after[n]}
    assert changed == {"layer3.0.conv2", "layer3.0.shortcut.0", "layer3.1.conv2", "layer3.2.conv2"}
    assert model.layer3[1].conv1.in_channels == 32 and model.layer3[1].conv1.out_channels == 64
    assert model.fc.in_features == 32
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_prune_drops_the_lowest_norm_channels_and_keeps_the_function():
    """Channels whose weights are zero contribute nothing: pruning them must not change the output."""

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
            self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    torch.manual_seed(0)
    model = Tiny().eval()
    with torch.no_grad():
        model.conv1.weight[8:] = 0.0
    w1, w2 = model.conv1.weight.detach().clone(), model.conv2.weight.detach().clone()
    x = torch.randn(4, 1, 12, 12)
    with torch.no_grad():
        ref = model(x)
    assert prune_model(model, x[:1], {"conv1": 0.5}) == {"conv1": (16, 8)}
    assert torch.equal(model.conv1.weight, w1[:8])
    assert torch.equal(model.conv2.weight, w2[:, :8])
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, atol=1e-6, rtol=0)


def test_prune_refuses_unknown_and_output_layers():
    model = _resnet20()
    with pytest.raises(KeyError, match="no layer named 'nosuch'"):
        prune_model(model, torch.randn(*X1), {"nosuch": 0.5})
    with pytest.raises(KeyError, match="produces the model's output"):
        prune_model(model, torch.randn(*X1), {"fc": 0.5})


def test_prune_ratio_zero_is_a_no_op():
    model = _resnet20()
    before = channel_counts(model)
    kept = prune_model(model, torch.randn(*X1), {"layer3.0.conv1": 0.0, "conv1": 0.0})
    assert kept == {"layer3.0.conv1": (64, 64), "conv1": (16, 16)}
    assert channel_counts(model) == before


@pytest.mark.parametrize(
    "channels, ratio, round_to, min_channels, expected",
    [
        (64, 0.0, 8, 8, 64),  # ratio 0 keeps all
        (64, 0.5, 8, 8, 32),
        (64, 0.3, 8, 8, 48),  # 44.8 -> nearest multiple of 8
        (64, 0.25, 8, 8, 48),
        (64, 0.375, 8, 8, 40),
        (16, 0.25, 8, 8, 16),  # 12 rounds up to 16 (ties go up)
        (16, 0.375, 8, 8, 8),
        (16, 0.75, 8, 8, 8),  # 4 -> never below min_channels
        (64, 0.95, 8, 8, 8),
        (64, 0.95, 8, 16, 16),
        (24, 0.5, 8, 8, 16),  # 12 -> 16
        (4, 0.5, 8, 8, 4),  # never more than the layer has
        (10, 0.5, 1, 1, 5),  # round_to 1: plain rounding
        (10, 0.94, 1, 1, 1),
        (10, 0.0, 1, 1, 10),
    ],
)
def test_kept_channels(channels, ratio, round_to, min_channels, expected):
    assert kept_channels(channels, ratio, round_to=round_to, min_channels=min_channels) == expected


def test_kept_channels_properties():
    """Exhaustive over a grid: multiples of round_to, within [min_channels, channels], nearest, monotone."""
    ratios = [i / 40 for i in range(39)] + [0.95]
    for round_to in (1, 2, 4, 8, 16):
        for blocks in range(1, 65):
            channels = blocks * round_to
            for min_blocks in (1, 2, 4):
                min_channels = min(min_blocks * round_to, channels)
                kept = [kept_channels(channels, r, round_to=round_to, min_channels=min_channels) for r in ratios]
                assert kept[0] == channels
                for r, k in zip(ratios, kept, strict=True):
                    assert k % round_to == 0, (channels, r, round_to, k)
                    assert min_channels <= k <= channels, (channels, r, round_to, min_channels, k)
                    if k > min_channels:  # not clamped: the multiple of round_to nearest to the target
                        assert abs(k - channels * (1 - r)) <= round_to / 2 + 1e-9, (channels, r, round_to, k)
                assert all(a >= b for a, b in zip(kept, kept[1:], strict=False))  # more pruning never keeps more


def test_prune_mobilenet_v2():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    example = torch.randn(1, 3, 64, 64)
    before = channel_counts(model)
    groups = find_groups(model, example)
    assert len(groups) >= 20
    assert all("classifier.1" not in g.members for g in groups)
    kept = prune_model(model, example, {g.name: 0.5 for g in groups})
    after = channel_counts(model)
    assert all(k < c for c, k in kept.values())
    assert kept["features.18.0"] == (1280, 640)
    assert sum(after.values()) < 0.6 * sum(before.values())
    assert after["classifier.1"] == 10 and model.classifier[1].in_features == 640
    # depthwise convs stay depthwise after their channels went
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.groups == m.in_channels == m.out_channels
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


# ============================================================================ export
def test_fold_batchnorm_keeps_outputs_and_removes_bn():
    model = _resnet20()
    _randomize_bn(model)
    x = torch.randn(4, *X1[1:])
    with torch.no_grad():
        ref = model(x)
    pairs = fold_batchnorm(model, x[:1])
    assert len(pairs) == 21
    assert ("layer2.0.shortcut.0", "layer2.0.shortcut.1") in pairs and ("conv1", "bn1") in pairs
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert isinstance(model.layer1[0].bn1, nn.Identity)
    assert model.layer1[0].conv1.bias is not None
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
    assert not torch.allclose(out, torch.zeros_like(out))


def test_fold_batchnorm_leaves_a_bn_that_follows_no_conv():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(1), nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    _randomize_bn(model)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        ref = model(x)
    assert fold_batchnorm(model, x[:1]) == [("1", "2")]
    assert isinstance(model[0], nn.BatchNorm2d) and isinstance(model[2], nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=0)


def test_export_onnx_layer_nodes_and_same_logits(tmp_path):
    model = _resnet20()
    _randomize_bn(model)
    example = torch.randn(*X1)
    fold_batchnorm(model, example)
    path = tmp_path / "m.onnx"
    proto = export_onnx(model, example, path)
    assert path.is_file()
    layers = list(channel_counts(model))
    assert len(layers) == RESNET20_LAYERS
    nodes = layer_nodes(proto, layers)
    assert set(nodes) == set(layers)
    op_of = {n.name: n.op_type for n in proto.graph.node}
    assert op_of[nodes["fc"]] == "Gemm"
    assert all(op_of[nodes[l]] == "Conv" for l in layers if l != "fc")
    # every node really reads that layer's weight, which keeps its PyTorch name
    by_name = {n.name: n for n in proto.graph.node}
    inits = {i.name: i for i in proto.graph.initializer}
    for layer, node in nodes.items():
        assert by_name[node].input[1] == f"{layer}.weight"
        assert tuple(inits[f"{layer}.weight"].dims) == tuple(dict(model.named_modules())[layer].weight.shape)
    # same logits as PyTorch, with a batch size other than the export's (dynamic batch axis)
    x = torch.randn(5, *X1[1:])
    with torch.no_grad():
        ref = model(x).numpy()
    out = _ort_run(path, x.numpy())
    assert out.shape == (5, 10)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


# ============================================================================ quantize + verify
FP32_LAYERS = ("layer1.1.conv1", "layer2.1.conv1", "fc")
INT4_LAYER = "layer3.2.conv1"


@pytest.fixture(scope="module")
def artifacts(trained_resnet20, digits, tmp_path_factory):
    """fp32, mixed (int8 / fp32 / int4) and all-int8 artifacts of the trained ResNet-20."""
    tmp = tmp_path_factory.mktemp("artifacts")
    model = copy.deepcopy(trained_resnet20).eval()
    example = digits.val.images(1)
    fold_batchnorm(model, example)
    proto = export_onnx(model, example, tmp / "fp32.onnx")
    layers = list(channel_counts(model))
    nodes = layer_nodes(proto, layers)
    mix = {l: "int8" for l in layers}
    mix.update({l: "fp32" for l in FP32_LAYERS})
    mix[INT4_LAYER] = "int4"
    got_mix = quantize_static_onnx(proto, tmp / "mix.onnx", precisions=mix, nodes=nodes, calib=digits.calib)
    all8 = {l: "int8" for l in layers}
    got_all8 = quantize_static_onnx(proto, tmp / "int8.onnx", precisions=all8, nodes=nodes, calib=digits.calib)
    got_fp32 = quantize_static_onnx(proto, tmp / "fp32_passthrough.onnx", precisions={l: "fp32" for l in layers},
                                    nodes=nodes, calib=digits.calib)
    return dict(dir=tmp, model=model, layers=layers, mix=mix, got_mix=got_mix, got_all8=got_all8, got_fp32=got_fp32)


def test_fake_quant_weights_equal_the_artifacts_dequantized_weights(artifacts):
    """What the fine-tune trains against is exactly what ONNX Runtime will compute with (int8 and int4 grids)."""
    q = onnx.load(str(artifacts["dir"] / "mix.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    model = copy.deepcopy(artifacts["model"])
    int8_layer = next(l for l, p in artifacts["mix"].items() if p == "int8" and l != "fc")
    with fake_quantized(model, {int8_layer: "int8", INT4_LAYER: "int4"}):
        mods = dict(model.named_modules())
        for layer in (int8_layer, INT4_LAYER):
            fq = mods[layer].weight.detach().numpy()
            w = inits[f"{layer}.weight_quantized"].astype(np.float32)
            scale = inits[f"{layer}.weight_scale"].astype(np.float32)
            deq = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
            np.testing.assert_allclose(fq, deq, rtol=1e-5, atol=1e-6, err_msg=layer)


def test_calibrated_activation_ranges_are_minmax_of_the_calibration_split(digits):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)).eval()
    with fake_quantized(net, {"0": "int8", "2": "int8"}) as qnet:
        calibrate_activations(qnet, digits.calib)
        # ORT's points: the input, the Relu's output (the conv before it is fused), the last conv's output
        obs = qnet._autocompress_act_observers
        assert len(obs) == 3
        x = digits.calib.images()
        with torch.no_grad():  # float weights: ORT calibrates the float model
            hidden = torch.relu(nn.functional.conv2d(x, net[0].parametrizations.weight.original, net[0].bias))
            out = nn.functional.conv2d(hidden, net[2].parametrizations.weight.original, net[2].bias)
        ranges = sorted((o.lo, o.hi) for o in obs)
        want = sorted([(float(x.min()), float(x.max())), (float(hidden.min()), float(hidden.max())),
                       (float(out.min()), float(out.max()))])
        for (lo, hi), (wlo, whi) in zip(ranges, want, strict=True):
            assert lo == pytest.approx(wlo, abs=1e-5) and hi == pytest.approx(whi, rel=1e-5)


def _activation_ranges(path) -> list[tuple[float, float]]:
    q = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    out = []
    for n in q.graph.node:
        if n.op_type == "QuantizeLinear":
            out.append((float(inits[n.input[1]]), int(inits[n.input[2]])))
    return sorted(out)


def _scale_zp(lo: float, hi: float) -> tuple[float, int]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255
    return scale, round(-lo / scale)


@pytest.mark.parametrize("config", ["mixed", "all-int8"])
def test_pytorch_fake_quant_computes_what_the_ort_artifact_computes(trained_resnet20, digits, tmp_path, config):
    """Same quantized tensors with the same ranges, and the same predictions as the artifact on ORT's
    optimized integer kernels (7-bit weights, as chosen for this CPU when it lacks VNNI)."""
    model = copy.deepcopy(trained_resnet20).eval()
    example = digits.val.images(1)
    fold_batchnorm(model, example)
    layers = list(channel_counts(model))
    prec = {l: "int8" for l in layers}
    if config == "mixed":
        prec.update({l: "fp32" for l in FP32_LAYERS})
        prec[INT4_LAYER] = "int4"
    proto = export_onnx(model, example)
    quantize_static_onnx(proto, tmp_path / "q.onnx", precisions=prec, nodes=layer_nodes(proto, layers),
                         calib=digits.calib, reduce_range=True)
    with fake_quantized(model, prec, reduce_range=True) as qm:
        calibrate_activations(qm, digits.calib)
        ranges = sorted(_scale_zp(o.lo, o.hi) for o in qm._autocompress_act_observers)
        with torch.no_grad():
            torch_logits = qm(digits.val.images()).numpy()
    ort_ranges = _activation_ranges(tmp_path / "q.onnx")  # (scale, zero point) of every QuantizeLinear
    assert len(ranges) == len(ort_ranges)
    np.testing.assert_allclose(np.array(ranges), np.array(ort_ranges), rtol=1e-4, atol=0)
    ort_logits = _ort_run(tmp_path / "q.onnx", digits.val.arrays()[0])
    agree = (ort_logits.argmax(1) == torch_logits.argmax(1)).mean()
    assert agree >= 0.97, agree  # the rest: integer rounding (requantization, int32 bias) on near-ties
    # logits agree closely (this briefly trained model has many near-ties, so argmax is a weak check alone)
    assert np.abs(ort_logits - torch_logits).max() < 0.05 * np.abs(torch_logits).max()


def test_quant_format_follows_the_target_cpu():
    from autocompress.pipeline.quantize import quant_format_for
    from autocompress.runtime.device import fingerprint

    avx2 = quant_format_for({"machine": "x86_64", "isa": ["avx", "avx2", "fma"]})
    assert avx2["reduce_range"] and avx2["int8_weight_range"] == [-64, 64]
    vnni = quant_format_for({"machine": "x86_64", "isa": ["avx2", "avx512f", "avx512_vnni"]})
    assert not vnni["reduce_range"] and vnni["int8_weight_range"] == [-127, 127]
    assert not quant_format_for({"machine": "aarch64", "isa": ["asimd"]})["reduce_range"]
    here = fingerprint(1)
    vnni = {"avx512_vnni", "avx_vnni", "amx_int8"} & set(here["isa"])
    assert quant_format_for(here)["reduce_range"] == (here["machine"] == "x86_64" and not vnni)


def test_quantize_returns_what_was_requested(artifacts):
    mix = artifacts["mix"]
    assert artifacts["got_mix"] == {l: p for l, p in mix.items() if p != "fp32"}
    assert artifacts["got_all8"] == {l: "int8" for l in artifacts["layers"]}
    # all-fp32: saved unchanged
    assert artifacts["got_fp32"] == {}
    a = onnx.load(str(artifacts["dir"] / "fp32_passthrough.onnx"))
    b = onnx.load(str(artifacts["dir"] / "fp32.onnx"))
    assert a.SerializeToString() == b.SerializeToString()


def test_mixed_precision_layers_land_on_the_right_kernels(artifacts):
    mix = artifacts["mix"]
    report = kernel_report(artifacts["dir"] / "mix.onnx")
    integer, floating = set(report["integer_layers"]), set(report["float_layers"])
    int8 = {l for l, p in mix.items() if p == "int8"}
    assert len(int8) == RESNET20_LAYERS - len(FP32_LAYERS) - 1
    assert int8 <= integer, int8 - integer
    assert set(FP32_LAYERS) <= floating, set(FP32_LAYERS) - floating
    assert not integer & set(FP32_LAYERS)
    assert not floating & int8
    assert INT4_LAYER in integer | floating  # found (int4 runs as DequantizeLinear + float Conv on ORT CPU)
    assert report["op_counts"].get("QLinearConv", 0) >= len(int8)


def test_int4_weight_is_stored_as_onnx_int4(artifacts):
    q = onnx.load(str(artifacts["dir"] / "mix.onnx"))
    inits = {i.name: i for i in q.graph.initializer}
    w4 = inits[f"{INT4_LAYER}.weight_quantized"]
    assert w4.data_type == onnx.TensorProto.INT4
    # an int8 layer is INT8, an fp32 layer keeps its float weight
    assert inits["layer3.1.conv1.weight_quantized"].data_type == onnx.TensorProto.INT8
    assert inits["layer1.1.conv1.weight"].data_type == onnx.TensorProto.FLOAT
    assert "layer1.1.conv1.weight_quantized" not in inits
    # the int4 values dequantize to the (BN-folded) float weights within half a step, per output channel
    q4 = numpy_helper.to_array(w4).astype(np.float32)
    scale = numpy_helper.to_array(inits[f"{INT4_LAYER}.weight_scale"]).astype(np.float32)
    assert q4.min() >= -8 and q4.max() <= 7
    assert scale.shape == (q4.shape[0],)  # per channel
    w = dict(artifacts["model"].named_modules())[INT4_LAYER].weight.detach().numpy()
    assert q4.shape == w.shape
    err = np.abs(q4 * scale[:, None, None, None] - w)
    assert (err <= scale[:, None, None, None] * 0.5 + 1e-6).all()
    for c in range(q4.shape[0]):
        assert len(np.unique(q4[c])) <= 16


def test_all_int8_is_smaller_and_about_as_accurate(artifacts, digits):
    d = artifacts["dir"]
    report = kernel_report(d / "int8.onnx")
    assert set(artifacts["layers"]) <= set(report["integer_layers"])
    assert report["op_counts"].get("Conv", 0) == 0
    fp32_size, int8_size = (d / "fp32.onnx").stat().st_size, (d / "int8.onnx").stat().st_size
    assert int8_size < 0.5 * fp32_size
    val = {"val": digits.val}
    acc32 = onnx_accuracy(d / "fp32.onnx", val)["val"]
    acc8 = onnx_accuracy((d / "int8.onnx").read_bytes(), val, threads=2)["val"]
    assert acc32 > 30.0  # the fixture is trained: far above chance (10%)
    assert abs(acc8 - acc32) <= 3.0, (acc32, acc8)
    # the mixed artifact also runs and stays close
    acc_mix = onnx_accuracy(d / "mix.onnx", val)["val"]
    assert abs(acc_mix - acc32) <= 5.0, (acc32, acc_mix)


def test_int8_linear_on_qgemm_is_reported_as_integer(artifacts):
    report = kernel_report(artifacts["dir"] / "int8.onnx")
    assert report["op_counts"].get("QGemm") == 1
    assert "fc" in report["integer_layers"]


# ============================================================================ fake quantization
def _small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 5)).eval()


def test_fake_quantized_inside_and_after():
    model = _small_net()
    float_w = {n: m.weight.detach().clone() for n, m in model.named_modules() if hasattr(m, "weight")}
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    precisions = {"0": "int4", "2": "fp32", "4": "int8"}
    with fake_quantized(model, precisions) as m:
        assert dict(m.named_modules())["0"] is model[0]  # a traced copy that shares the layers
        assert P.is_parametrized(model[0], "weight") and P.is_parametrized(model[4], "weight")
        assert not P.is_parametrized(model[2], "weight")
        w4, w8 = model[0].weight.detach(), model[4].weight.detach()
        assert not torch.equal(w4, float_w["0"]) and not torch.equal(w8, float_w["4"])
        assert torch.equal(model[2].weight, float_w["2"])
        # int4: ORT's grid, at most 16 values per output channel, multiples of 2*amax/15 in [-8, 7] steps
        for c in range(w4.shape[0]):
            assert len(torch.unique(w4[c])) <= 16
            step = 2 * float_w["0"][c].abs().max() / 15
            assert (w4[c] / step).min() >= -8 - 1e-4 and (w4[c] / step).max() <= 7 + 1e-4
            torch.testing.assert_close(w4[c] / step, torch.round(w4[c] / step), atol=1e-4, rtol=0)
            assert (w4[c] - float_w["0"][c]).abs().max() <= step / 2 + 1e-6
        for c in range(w8.shape[0]):
            assert len(torch.unique(w8[c])) <= 256
            assert (w8[c] - float_w["4"][c]).abs().max() <= float_w["4"][c].abs().max() / 127 / 2 + 1e-6
        # forward sees the quantized weights (and quantized activations): different outputs
        with torch.no_grad():
            fq = m(x)
        assert not torch.allclose(fq, ref, atol=1e-5)
        assert (fq - ref).abs().max() < 0.5 * ref.abs().max()  # but close: it is the same network
        # straight-through gradient reaches the float weights
        model.zero_grad()
        m(x).sum().backward()
        g = model[0].parametrizations.weight.original.grad
        assert g is not None and g.abs().sum() > 0
    for n, mod in model.named_modules():
        if hasattr(mod, "weight"):
            assert not P.is_parametrized(mod, "weight"), n
            assert torch.equal(mod.weight.detach(), float_w[n]), n
            assert not mod._forward_pre_hooks, n
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, atol=0, rtol=0)


def test_fake_quantized_cleans_up_after_an_error():
    model = _small_net()
    with pytest.raises(RuntimeError, match="boom"):
        with fake_quantized(model, {"0": "int8"}):
            assert P.is_parametrized(model[0], "weight")
            raise RuntimeError("boom")
    assert not P.is_parametrized(model[0], "weight") and not model[0]._forward_pre_hooks


def test_quantizing_drops_only_orts_notices_and_leaves_the_root_logger_as_it_was(tmp_path):
    import logging

    model = _small_net()
    proto = export_onnx(model, torch.randn(1, 3, 8, 8))
    nodes = layer_nodes(proto, ["0", "2", "4"])
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    root = logging.getLogger()
    level, filters, keep = root.level, list(root.filters), Keep()
    root.addHandler(keep)
    try:
        # int4 as well: ORT says int4 QDQ goes to the com.microsoft domain (one of the notices)
        quantize_static_onnx(proto, tmp_path / "q.onnx", precisions={"0": "int8", "2": "int4", "4": "int8"},
                             nodes=nodes, calib=_noise_split(4, (3, 8, 8)))
        logging.warning("a warning of the user's own")
    finally:
        root.removeHandler(keep)
    messages = [r.getMessage() for r in seen]
    assert not any("pre-processing" in m or "16-bit/4-bit" in m for m in messages), messages
    assert "a warning of the user's own" in messages
    assert root.level == level and root.filters == filters


# ============================================================================ trial
def test_run_pipeline_prunes_quantizes_and_measures(trained_resnet20, digits):
    example = digits.val.images(1)
    baseline_counts = channel_counts(trained_resnet20)
    baseline_state = {k: v.clone() for k, v in trained_resnet20.state_dict().items()}
    groups = find_groups(trained_resnet20, example)
    layers = list(baseline_counts)
    spec = TrialSpec(ratios={g.name: 0.5 for g in groups}, precisions={l: "int8" for l in layers},
                     finetune=TrainConfig(epochs=0.3, lr=0.02))
    out = run_pipeline(trained_resnet20, digits, spec, threads=2)

    # fewer channels, exactly as requested
    assert out.kept["layer3.0.conv1"] == (64, 32) and out.kept["conv1"] == (16, 8)
    assert out.channels["layer3.0.conv1"] == 32 and out.channels["fc"] == 10
    assert all(out.channels[l] == baseline_counts[l] // 2 for l in layers if l != "fc")
    # the artifact is the bytes reported
    assert out.sha256 == hashlib.sha256(out.onnx_bytes).hexdigest()
    assert out.size_bytes == len(out.onnx_bytes)
    proto = onnx.load_from_string(out.onnx_bytes)
    inits = {i.name: i for i in proto.graph.initializer}
    assert tuple(inits["layer3.0.conv1.weight_quantized"].dims) == (32, 16, 3, 3)
    assert inits["layer3.0.conv1.weight_quantized"].data_type == onnx.TensorProto.INT8
    # int8 layers run on integer kernels (convs on QLinearConv, fc on QGemm)
    assert out.requested_int8 == sorted(layers)
    assert set(out.requested_int8) <= set(out.integer_layers)
    assert out.float_layers == []
    assert out.op_counts.get("QLinearConv") == 21
    for acc in (out.val_accuracy, out.test_accuracy, out.torch_test_accuracy):
        assert 0.0 <= acc <= 100.0
    # the PyTorch counterpart (BN folded, fake-quantized as exported) predicts like the artifact; val only on request
    assert abs(out.torch_test_accuracy - out.test_accuracy) <= 1.0 and out.torch_val_accuracy is None
    # the reported accuracy is the artifact's own, under ONNX Runtime
    again = onnx_accuracy(out.onnx_bytes, {"val": digits.val})
    assert again["val"] == pytest.approx(out.val_accuracy)
    assert _ort_run(out.onnx_bytes, digits.val.images(3).numpy()).shape == (3, 10)
    assert set(out.stage_seconds) >= {"prune", "finetune", "export", "quantize", "verify", "evaluate_onnx"}
    # the shared baseline is untouched
    assert channel_counts(trained_resnet20) == baseline_counts
    for k, v in trained_resnet20.state_dict().items():
        assert torch.equal(v, baseline_state[k]), k
    assert not any(P.is_parametrized(m) for m in trained_resnet20.modules())


# ============================================================================ latency
def test_measure_latency(tmp_path):
    # the mechanics of one measurement; waiting out a long burst (burst_wait_s) is tested below
    model = _small_net()
    path = tmp_path / "small.onnx"
    export_onnx(model, torch.randn(1, 3, 8, 8), path)
    s = LatencyConfig(warmup=3, min_reps=20, max_reps=200, sessions=2, max_sessions=2, max_seconds=5, burst_wait_s=0)
    r = measure_latency(path, (3, 8, 8), s)
    assert r.median_ms > 0
    assert r.p90_ms >= r.median_ms
    assert r.p99_ms >= r.p90_ms
    assert r.reps >= s.min_reps * s.sessions and r.reps <= s.max_reps * s.sessions
    assert len(r.session_medians_ms) == 2
    # bytes work too; an unreachable CI target runs exactly max_reps per session
    r2 = measure_latency(path.read_bytes(), (3, 8, 8),
                         LatencyConfig(warmup=0, min_reps=10, max_reps=20, sessions=3, max_sessions=3, ci_target=1e-12,
                                       max_seconds=60, burst_wait_s=0))
    assert r2.reps == 60 and len(r2.session_medians_ms) == 3
    # session medians that disagree (a 1e-12 tolerance: always) bring more fresh sessions, up to max_sessions, and
    # the figure comes from the sessions at the quiet speed: here only the fastest
    r3 = measure_latency(path, (3, 8, 8), LatencyConfig(warmup=0, min_reps=10, max_reps=20, sessions=3, max_sessions=5,
                                                        ci_target=1e-12, max_seconds=60, burst_wait_s=0))
    assert len(r3.session_medians_ms) == 5 and r3.median_ms == pytest.approx(min(r3.session_medians_ms), abs=1e-4)
    assert 1 <= r3.slow_sessions <= 4  # all but the fastest (and any exact tie with it) are left out
    assert set(r2.as_dict()) == {"median_ms", "p90_ms", "p99_ms", "reps", "session_medians_ms", "other_load_cores",
                                 "contended_sessions", "burst_wait_s", "contended", "slow_sessions", "slowed_sessions",
                                 "paused_trials", "held_s", "probe_vs_best"}
    assert r2.held_s == 0.0  # no hook: no trial was held


def test_the_reference_probe_remembers_the_quiet_speed_of_this_device(tmp_path, monkeypatch):
    from autocompress.measure import latency

    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path))
    meter = LatencyMeter(LatencyConfig(threads=1))
    first = meter.probe  # first use here: calibrated, and remembered on disk
    assert meter.probe is first  # built once per meter
    assert 0 < first.best < 50 and first.path.is_file() and first.path.is_relative_to(tmp_path)
    assert json.loads(first.path.read_text())["best_ms"] == pytest.approx(first.best)
    again = LatencyMeter(LatencyConfig(threads=1)).probe  # a new meter (or process) starts from the remembered figure
    assert again is not first and again.best <= first.best and again() > 0
    assert LatencyMeter(LatencyConfig(probe=False)).probe is None
    assert latency._probe_model() == latency._probe_model()  # the same workload everywhere


def test_sessions_slowed_by_a_burst_are_left_out_and_replaced():
    from autocompress.measure.latency import _need_more, _quiet

    s = LatencyConfig(sessions=3, max_sessions=6, ci_target=0.02)
    assert _quiet([1.0, 1.5, 1.03, 1.04, 1.9], 0.02) == [0, 2, 3]  # within 4% of the fastest
    assert not _need_more([1.0, 1.01, 1.02], s)  # three agree: done
    assert _need_more([1.0, 1.01], s)  # fewer than `sessions`
    assert _need_more([1.7, 1.0, 1.01], s)  # a burst slowed the first: one more
    assert not _need_more([1.7, 1.0, 1.01, 0.99], s)
    assert not _need_more([1.0, 1.5, 2.0, 2.5, 3.0, 3.5], s)  # max_sessions


def test_sessions_are_spread_out_and_the_device_hook_holds_each_one(tmp_path):
    model = _small_net()
    path = tmp_path / "small.onnx"
    export_onnx(model, torch.randn(1, 3, 8, 8), path)
    entered, left = [], []

    @contextlib.contextmanager
    def quiet():
        entered.append(time.perf_counter())
        yield [111, 222]  # what the device's pause returns: the pids it stopped
        left.append(time.perf_counter())

    s = LatencyConfig(warmup=2, min_reps=20, max_reps=200, sessions=3, max_sessions=3, session_gap_s=0.2,
                      min_session_seconds=0.0, contention_cores=100.0, probe=False)
    r = measure_latency(path, (3, 8, 8), s, quiet=quiet)
    assert len(entered) == len(left) == 3 and r.paused_trials == 2
    assert all(entered[i + 1] - left[i] >= 0.5 * 0.2 for i in range(2))  # a jittered gap between sessions
    # what the trials paid: the time within the sessions, not the gaps between them
    within = sum(b - a for a, b in zip(entered, left, strict=True))
    assert within - 0.001 <= r.held_s <= within + 0.05 and r.held_s < left[-1] - entered[0] - 0.5 * 0.2 * 2


def test_a_probe_slow_before_the_session_lets_the_trials_go_at_once(tmp_path):
    """A burst already on when the trials are paused: the session is skipped, not timed and thrown away."""
    model = _small_net()
    path = tmp_path / "small.onnx"
    export_onnx(model, torch.randn(1, 3, 8, 8), path)
    readings = iter([3.0] + [1.0] * 50)  # the probe: 3x its best once (a burst), then at its quiet speed

    class Probe:  # the reference workload's readings under control; the model itself is really timed
        best = 1.0

        def __call__(self) -> float:
            return next(readings)

    entered, left = [], []

    @contextlib.contextmanager
    def quiet():
        entered.append(time.perf_counter())
        yield [111]
        left.append(time.perf_counter())

    s = LatencyConfig(warmup=2, min_reps=20, max_reps=100_000, sessions=3, max_sessions=3, session_gap_s=0.01,
                      min_session_seconds=0.1, contention_cores=100.0)
    r = LatencyMeter(s, probe=Probe()).measure(path, (3, 8, 8), quiet=quiet)
    held = [b - a for a, b in zip(entered, left, strict=True)]
    assert len(held) == 4 and r.slowed_sessions == 1 and len(r.session_medians_ms) == 3
    assert held[0] < 0.05 and all(h >= 0.1 for h in held[1:])  # the skipped one held the trials for a few runs only
    assert r.probe_vs_best == 1.0 and not r.contended


@pytest.mark.parametrize("burst_wait_s", [5.0, 0.0])
def test_a_long_burst_is_waited_out_for_burst_wait_s_beyond_the_quick_retries(tmp_path, burst_wait_s):
    """A burst that outlasts `max_contended` quick retries: with `burst_wait_s` the measurement keeps waiting, with
    growing pauses, until it passes; without, the retries run out and the sessions in the burst are kept, flagged."""
    model = _small_net()
    path = tmp_path / "small.onnx"
    export_onnx(model, torch.randn(1, 3, 8, 8), path)
    readings = iter([3.0] * 5 + [1.0] * 50)  # the probe: a burst over its first five readings, then quiet

    class Probe:
        best = 1.0

        def __call__(self) -> float:
            return next(readings)

    s = LatencyConfig(warmup=2, min_reps=20, max_reps=100_000, sessions=3, max_sessions=3, session_gap_s=0.01,
                      min_session_seconds=0.05, contention_cores=100.0, max_contended=2, burst_wait_s=burst_wait_s)
    r = LatencyMeter(s, probe=Probe()).measure(path, (3, 8, 8))  # a new meter: no earlier long wait in vain
    if burst_wait_s:  # five sessions skipped, after pauses of 0.25 + 0.5 + 0.75 + 1.0 + 1.25 s; the three kept: clean
        assert r.slowed_sessions == 5 and r.burst_wait_s == pytest.approx(3.75)
        assert r.probe_vs_best == 1.0 and not r.contended and len(r.session_medians_ms) == 3
    else:  # two quick retries (0.25 + 0.5 s), then the next two sessions are taken in the burst and kept
        assert r.slowed_sessions == 2 and r.burst_wait_s == pytest.approx(0.75)
        assert len(r.session_medians_ms) == 3 and r.probe_vs_best is not None


def test_after_a_long_wait_that_found_no_calm_the_next_measurements_only_retry_quickly(tmp_path):
    """A slowdown that lasts many minutes: one measurement waits `burst_wait_s` in vain; the next ones, for a few
    minutes, make only the `max_contended` quick retries instead of waiting as long again."""
    model = _small_net()
    path = tmp_path / "small.onnx"
    export_onnx(model, torch.randn(1, 3, 8, 8), path)

    class Probe:  # always 3x its best: the host never calms down
        best = 1.0

        def __call__(self) -> float:
            return 3.0

    s = LatencyConfig(warmup=2, min_reps=20, max_reps=100_000, sessions=2, max_sessions=2, session_gap_s=0.01,
                      min_session_seconds=0.05, contention_cores=100.0, max_contended=1, burst_wait_s=1.0)
    meter = LatencyMeter(s, probe=Probe())  # what the device actor holds for a whole search
    first = meter.measure(path, (3, 8, 8))  # pauses 0.25 + 0.5 + 0.75 s, then kept, flagged
    assert first.contended and first.burst_wait_s == pytest.approx(1.5) and first.slowed_sessions == 3
    assert meter.no_long_wait_until > time.monotonic() + 50
    second = meter.measure(path, (3, 8, 8))  # the same meter right after: one quick retry only
    assert second.contended and second.slowed_sessions == 1 and second.burst_wait_s == pytest.approx(0.25)
    assert LatencyMeter(s, probe=Probe()).measure(path, (3, 8, 8)).slowed_sessions == 3  # the guard is the meter's own
    meter.no_long_wait_until = 0.0  # minutes later: patient again
    assert meter.measure(path, (3, 8, 8)).slowed_sessions == 3


def test_other_load_is_the_machine_busy_time_minus_this_process():
    from autocompress.cpus import machine_busy as _machine_busy
    from autocompress.cpus import other_load

    # over 1 s of wall time a 4-CPU machine was busy for half its capacity; this process used 0.25 s of CPU
    assert other_load((1000, 10_000, 4), (1200, 10_400, 4), own_cpu_s=0.25, wall_s=1.0) == pytest.approx(2 - 0.25)
    assert other_load((0, 100, 2), (10, 200, 2), own_cpu_s=5.0, wall_s=1.0) == 0.0  # never negative
    assert other_load(None, (10, 200, 2), own_cpu_s=0.0, wall_s=1.0) is None  # no /proc/stat: unknown, never guessed
    # 8 ticks on 2 CPUs: too few to tell
    assert other_load((0, 100, 2), (4, 108, 2), own_cpu_s=0.0, wall_s=0.04) is None
    if os.path.exists("/proc/stat"):
        busy, total, ncpu = _machine_busy()
        assert 0 <= busy <= total and ncpu >= 1


@pytest.mark.skipif(not os.path.exists("/proc/stat") or (os.cpu_count() or 1) < 2,
                    reason="reads /proc/stat; needs a core for the load")
def test_a_session_beside_outside_load_is_taken_again_then_reported_as_contended(tmp_path):
    model = _small_net()
    path = tmp_path / "small.onnx"
    export_onnx(model, torch.randn(1, 3, 8, 8), path)
    settings = LatencyConfig(warmup=3, min_reps=50, max_reps=100_000, sessions=2, max_sessions=2, max_seconds=5,
                             max_contended=2, burst_wait_s=0, contention_cores=0.5, min_session_seconds=0.2,
                             probe=False)  # the load check alone: the hog slows the probe too, which skips the session
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # a whole core of load from another process
    try:
        time.sleep(0.5)
        r = measure_latency(path, (3, 8, 8), settings)
    finally:
        hog.kill()
        hog.wait()
    assert r.contended_sessions == 2 and r.contended  # discarded twice, then kept and flagged
    assert r.other_load_cores > 0.5 and len(r.session_medians_ms) == 2


# ============================================================================ space
GROUPS = [PruneGroup("a", 16, ("a",)), PruneGroup("b", 64, ("b", "c"))]
LAYERS = ["a", "b", "c", "fc"]


def test_load_default_space_file():
    spec = load_space_file(DEFAULT_SPACE)
    assert spec.prune.ratios == [0.0, 0.25, 0.375, 0.5, 0.625, 0.75]
    assert (spec.prune.round_to, spec.prune.min_channels) == (8, 8)
    assert spec.quantize.precisions == ["fp32", "int8", "int4"]
    assert spec.rules == []
    assert load_space_file(None) == spec


def test_build_space_dedupes_ratios_by_kept_count():
    space = build_space(load_space_file(DEFAULT_SPACE), GROUPS, LAYERS)
    a, b = space.groups
    # 16 channels, round_to 8: every ratio keeps 16 or 8 channels -> one ratio for each
    assert a.kept == [16, 8] and a.ratios == [0.0, 0.375]
    assert b.kept == [64, 48, 40, 32, 24, 16] and b.ratios == [0.0, 0.25, 0.375, 0.5, 0.625, 0.75]
    assert [l.name for l in space.layers] == LAYERS
    assert all(l.precisions == ["fp32", "int8", "int4"] for l in space.layers)
    params = space.params()
    assert params["prune:a"] == [0.0, 0.375] and params["quant:fc"] == ["fp32", "int8", "int4"]
    ratios, precisions = space.decode({"prune:a": 0.375, "quant:c": "int4"})
    assert ratios == {"a": 0.375, "b": 0.0}
    assert precisions == {"a": "fp32", "b": "fp32", "c": "int4", "fc": "fp32"}
    # the uniform 0.5 configuration is the closest each group allows
    assert space.uniform(0.5, "int8")["prune:a"] == 0.375
    assert space.uniform(0.5, "int8")["prune:b"] == 0.5


def test_build_space_rules_override_in_order():
    spec = SpaceFile.model_validate({
        "rules": [
            {"match": "*", "ratios": [0.0, 0.5]},
            {"match": "a", "ratios": [0.0]},  # later rules win
            {"match": "f*", "precisions": ["fp32", "int8"]},
        ]
    })
    space = build_space(spec, GROUPS, LAYERS)
    a, b = space.groups
    assert a.ratios == [0.0] and a.kept == [16]
    assert b.ratios == [0.0, 0.5] and b.kept == [64, 32]
    prec = {l.name: l.precisions for l in space.layers}
    assert prec["fc"] == ["fp32", "int8"] and prec["a"] == ["fp32", "int8", "int4"]
    params = space.params()
    assert "prune:a" not in params and params["prune:b"] == [0.0, 0.5]


def test_build_space_rule_matching_nothing_raises():
    spec = SpaceFile.model_validate({"rules": [{"match": "layer9.*", "ratios": [0.0]}]})
    with pytest.raises(SpaceError, match=r"rule match 'layer9\.\*' in my\.yaml selects no group or layer"):
        build_space(spec, GROUPS, LAYERS, source="my.yaml")


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("prune:\n  ratios: [0.0, 1.2]\n",
         r"prune\.ratios in .*s\.yaml: every ratio must be in \[0, 0\.95\], but got 1\.2"),
        ("rules:\n  - match: conv1\n    ratios: [-0.1]\n",
         r"rules\.0\.ratios in .*s\.yaml: every ratio must be in \[0, 0\.95\]"),
        ("prune:\n  ratios: []\n", r"must list at least one ratio"),
        ("quantize:\n  precisions: [int2]\n", r"quantize\.precisions\.0 in .*s\.yaml"),
        ("prune:\n  rato: [0.5]\n", r"prune\.rato in .*s\.yaml: unknown key"),
        ("- 1\n- 2\n", r"must be a mapping .* list"),
        ("prune: [1, 2\n", r"s\.yaml is not valid YAML at line 2"),
    ],
)
def test_load_space_file_errors(tmp_path, text, pattern):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError, match=pattern):
        load_space_file(path)


def test_load_space_file_missing(tmp_path):
    with pytest.raises(SpaceError, match="does not exist"):
        load_space_file(tmp_path / "nope.yaml")


# ============================================================================ results
def test_pareto_front_is_exactly_the_non_dominated_complete_rows():
    nan = float("nan")
    table = pd.DataFrame(
        [
            # trial, state, val_accuracy, latency_ms, size_bytes
            (0, "COMPLETE", 90.0, 2.0, 100),  # front: most accurate
            (1, "COMPLETE", 85.0, 1.0, 100),  # front: fastest
            (2, "COMPLETE", 80.0, 1.5, 100),  # dominated by 1
            (3, "COMPLETE", 80.0, 3.0, 50),  # front: smallest
            (4, "FAIL", nan, nan, nan),  # never
            (5, "RUNNING", 99.0, 0.1, 10),  # would dominate all, but is not complete
            (6, "COMPLETE", 90.0, 2.0, 100),  # equal to 0: neither dominates
            (7, "COMPLETE", 90.0, 2.0, 120),  # dominated by 0 (bigger only)
            (8, "COMPLETE", 70.0, 3.0, 60),  # dominated by 3
        ],
        columns=["trial", "state", "val_accuracy", "latency_ms", "size_bytes"],
    )
    front = pareto_front(table)
    assert set(front["trial"]) == {0, 1, 3, 6}
    assert list(front["latency_ms"]) == sorted(front["latency_ms"])  # fastest first
    assert front.iloc[0]["trial"] == 1 and front.iloc[-1]["trial"] == 3
    assert (front["state"] == "COMPLETE").all()


# ============================================================================ config
@pytest.mark.parametrize(
    "text, trials, seconds",
    [("40", 40, None), (40, 40, None), (" 7 ", 7, None), ("10m", None, 600), ("1h30m", None, 5400),
     ("90s", None, 90), ("1.5h", None, 5400), ("1H", None, 3600), ("2m30s", None, 150)],
)
def test_parse_budget(text, trials, seconds):
    b = parse_budget(text)
    assert b.trials == trials
    assert b.seconds == seconds


def test_budget_str():
    assert str(parse_budget("40")) == "40 trials"
    assert str(parse_budget("1h30m")) == "1h30m"
    assert str(parse_budget("10m")) == "10m00s"
    assert str(Budget(seconds=45)) == "45s"


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("abc", r"--budget 'abc' is neither a trial count nor a duration"),
        ("5x", r"--budget '5x' is neither a trial count nor a duration"),
        ("", r"is neither a trial count nor a duration"),
        ("-3", r"is neither a trial count nor a duration"),
        ("1h30", r"is neither a trial count nor a duration"),
        ("0", r"--budget must be at least 1 trial, but got '0'"),
        ("0m", r"--budget '0m' is zero"),
    ],
)
def test_parse_budget_rejects(text, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_budget(text)


def test_run_pipeline_stops_a_hopeless_fine_tune_after_its_first_epoch(trained_resnet20, digits):
    from autocompress.pipeline.trial import StoppedEarly

    groups = find_groups(trained_resnet20, digits.val.images(1))
    spec = dict(ratios={g.name: 0.5 for g in groups}, precisions={}, finetune=TrainConfig(epochs=3, lr=0.02))
    stopped = run_pipeline(trained_resnet20, digits, TrialSpec(**spec, stop_below=101.0), threads=2)
    assert isinstance(stopped, StoppedEarly) and stopped.epochs_done == 1  # halfway of 3
    assert 0 <= stopped.val_accuracy <= 100
    assert stopped.threshold == 101.0 and stopped.epochs_planned == 3 and "finetune" in stopped.stage_seconds
    full = run_pipeline(trained_resnet20, digits, TrialSpec(**spec, stop_below=0.0), threads=2)
    assert not isinstance(full, StoppedEarly) and full.val_accuracy > 0
    # a trial that cleared the bar says where it stood halfway (--multi-fidelity holds later trials to it)
    assert full.halfway_accuracy is not None and 0 < full.halfway_accuracy <= 100


def test_uniform_configuration_keeps_the_channels_the_ratio_itself_would():
    from autocompress.space import GroupChoice, LayerChoice, SearchSpace

    space = SearchSpace([GroupChoice("small", 16, ("small",), [0.0, 0.375], [16, 8]),
                         GroupChoice("big", 64, ("big",), [0.0, 0.25, 0.375, 0.5], [64, 48, 40, 32])],
                        [LayerChoice("small", ["fp32", "int8"])], round_to=8, min_channels=8)
    # 25% of 16 channels rounds to 16 kept (nothing pruned), as the uniform 25% baseline builds it
    assert space.uniform(0.25, "int8") == {"prune:small": 0.0, "prune:big": 0.25, "quant:small": "int8"}
    assert space.uniform(0.5, "fp32") == {"prune:small": 0.375, "prune:big": 0.5, "quant:small": "fp32"}


def test_warm_start_runs_the_baseline_models_the_scan_picks_and_the_fastest_corners_first():
    from autocompress.engine.study import warm_start_configs

    space = build_space(load_space_file(DEFAULT_SPACE), GROUPS, LAYERS)  # a: 16 -> [16, 8] ch, b: 64 -> 64..16 ch
    pick = {"prune:a": 0.0, "prune:b": 0.375, **{f"quant:{l}": "int8" for l in LAYERS}}
    got = warm_start_configs(space, [pick, space.uniform(0.5, "int8")], budget_trials=None)
    assert got[0] == space.uniform(0.5, "int8") and got[1] == space.uniform(0.25, "int8") and got[2] == pick
    assert len(got) == len({json.dumps(p, sort_keys=True) for p in got})  # the scan's repeat of a baseline runs once
    # the most the space allows, in fp32 and in int8: the fast end of the front
    fastest = {"prune:a": 0.375, "prune:b": 0.75}
    assert got[3] == {**fastest, **{f"quant:{l}": "fp32" for l in LAYERS}}
    assert got[4] == {**fastest, **{f"quant:{l}": "int8" for l in LAYERS}}
    # the free two, then at most a third of a trial budget, in that order; never more than the budget
    assert warm_start_configs(space, [pick], budget_trials=9) == got[:5]
    assert warm_start_configs(space, [pick], budget_trials=2) == got[:2]
    assert warm_start_configs(space, [pick], budget_trials=1) == got[:1]
