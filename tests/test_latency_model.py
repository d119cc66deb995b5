"""The measured latency model (latency_model/model.py): its wiring of layers to groups, its one-layer graphs, its
table and its fit. Its accuracy on whole models is measured in benchmarks/latency_model.py and checked loosely in
tests/test_search_e2e.py."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn

from autocompress.latency_model.junctions import (
    Junction,
    JunctionKey,
    find_junctions,
    junction_costs,
    junction_graph,
    junction_keys,
)
from autocompress.latency_model.layers import LayerKey, layer_graph, layer_keys, time_graph, wire_layers
from autocompress.latency_model.model import FEATURES, Fit, LatencyTable, all_keys
from autocompress.latency_model.predict import random_configs
from autocompress.pipeline.prune import find_groups, prune_model
from autocompress.space import SpaceFile, build_space
from autocompress.tasks.models import build_model


def _space(model: nn.Module, example: torch.Tensor):
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    spec = SpaceFile.model_validate({"prune": {"ratios": [0.0, 0.25, 0.5, 0.75]},
                                     "quantize": {"precisions": ["fp32", "int8", "int4"]}})
    return build_space(spec, find_groups(model, example), layers)


def _io(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {n: ((m.in_channels, m.out_channels) if isinstance(m, nn.Conv2d) else (m.in_features, m.out_features))
            for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


@pytest.mark.parametrize("name,shape", [("resnet20", (1, 32, 32)), ("mobilenet_v2", (3, 64, 64))])
def test_wiring_gives_every_layer_the_channels_it_has_in_the_pruned_model(name, shape):
    """Found by pruning each group alone, the wiring must reproduce the channel counts torch-pruning leaves in any
    configuration: residual stages, downsampling shortcuts, depthwise convolutions and the classifier."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=shape[0]).eval()
    example = torch.randn(1, *shape)
    space = _space(model, example)
    sites = wire_layers(model, example, space)
    assert {s.name for s in sites} == set(_io(model))
    changed = 0
    for ratios, precisions in random_configs(space, 3, seed=1):
        pruned = copy.deepcopy(model)
        prune_model(pruned, example, ratios, round_to=space.round_to, min_channels=space.min_channels)
        actual = _io(pruned)
        keys = layer_keys(sites, space, ratios, precisions)
        for s, k in zip(sites, keys, strict=True):
            assert (k.cin, k.cout) == actual[s.name], s.name
            assert k.precision == precisions.get(s.name, "fp32")
            changed += actual[s.name] != _io(model)[s.name]
    assert changed > 10  # the configurations did prune
    if name == "mobilenet_v2":  # a depthwise conv's groups follow its channels
        dw = [k for k in keys if k.groups > 1]
        assert dw and all(k.groups == k.cin == k.cout for k in dw)
    # the table covers every configuration: each one's keys are among the keys the space can reach
    reachable = set(all_keys(sites, space))
    assert set(keys) <= reachable


def test_a_layer_graph_runs_on_the_kernel_its_precision_asks_for(tmp_path):
    from autocompress.measure.verify import kernel_report

    key = dict(kind="conv", cin=16, cout=24, kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1,
               hw=(16, 16))
    seen = {}
    for precision in ("fp32", "fp16", "int8", "int4"):
        data, shape = layer_graph(LayerKey(**key, precision=precision))
        assert shape == (16, 16, 16)
        path = tmp_path / f"{precision}.onnx"
        path.write_bytes(data)
        seen[precision] = kernel_report(path)
        assert time_graph(data, shape, threads=1) > 0
    assert seen["fp32"]["float_layers"] == ["layer"] and "QLinearConv" not in seen["fp32"]["op_counts"]
    assert seen["int8"]["integer_layers"] == ["layer"] and seen["int8"]["op_counts"].get("QLinearConv") == 1
    assert seen["int4"]["float_layers"] == ["layer"]  # 4-bit weights are dequantized to a float conv on this EP
    assert seen["fp16"]["float_layers"] == ["layer"]  # half-precision weights are cast to float32 on this EP


def test_the_table_keeps_what_it_timed_across_instances(tmp_path):
    path = tmp_path / "table.json"
    keys = [LayerKey("conv", c, 8, (1, 1), (1, 1), (0, 0), (1, 1), 1, (4, 4), "fp32") for c in (8, 16)]
    table = LatencyTable(path)
    assert table.missing(keys) == keys
    table.record(keys[:1], [0.25])
    again = LatencyTable(path)
    assert again.missing(keys) == keys[1:] and again.total(keys[:1]) == 0.25


def test_the_fit_recovers_a_linear_cost_and_starts_from_the_plain_sum():
    rng = np.random.default_rng(0)
    weights = np.array([0.05, 0.9, 1.1, 0.6, 1.3, 0.4, 1.2])
    feats = [np.concatenate([[1.0], rng.uniform(0.1, 2.0, size=len(FEATURES) - 1)]) for _ in range(80)]
    fit = Fit.of([(f, float(weights @ f)) for f in feats])
    for f in feats:
        assert fit(f) == pytest.approx(float(weights @ f), rel=0.02)
    # no measurement yet: the prediction is the table's own sum
    f = np.array([1.0, 0.3, 0.1, 0.2, 0.1, 0.05, 0.4])
    assert Fit.of([])(f) == pytest.approx(1.1)


def test_a_channel_count_no_faster_than_a_larger_one_is_not_offered():
    """On a device where 24-channel layers run slower than 32-channel ones, a group's 24-channel choice can only
    lose accuracy: it is dropped, for the smallest larger count that beats it, and nothing else is."""
    from autocompress.latency_model.model import LatencyModel
    from autocompress.latency_model.predict import drop_slow, slow_choices

    model = build_model("resnet20", num_classes=10, in_channels=1).eval()
    example = torch.randn(1, 1, 32, 32)
    space = _space(model, example)
    sites = wire_layers(model, example, space)
    table = LatencyTable()
    keys = all_keys(sites, space)
    # time grows with the work, and a layer pays a penalty for each side (in, out) with 24 channels, as a kernel
    # working on blocks of 16 might
    table.record(keys, [1e-8 * k.cin * k.cout * k.hw[0] * k.hw[1] * k.kernel[0] ** 2
                        + 0.5 * ((k.cin == 24) + (k.cout == 24)) for k in keys])
    slow = slow_choices(LatencyModel(sites, space, table), space)
    with24 = {g.name for g in space.groups if 24 in g.kept}
    assert with24 and {c.group for c in slow} == with24
    assert all(c.kept == 24 and c.instead_kept == 32 and c.ms > c.instead_ms for c in slow)
    before = {g.name: list(g.kept) for g in space.groups}
    dropped = drop_slow(space, slow)
    assert {g.name: g.kept for g in space.groups} == before  # a new space: the one given is left as it was
    for g in dropped.groups:
        assert g.kept == [k for k in before[g.name] if not (k == 24 and g.name in with24)]
        assert len(g.ratios) == len(g.kept)


def test_int4_slower_than_int8_is_not_offered_in_a_search_for_latency():
    """int4 only shrinks the file; where the device's table shows it no faster than int8 (at every channel count), a
    latency search drops it for that layer, and keeps it where it is faster."""
    from autocompress.latency_model.layers import site_keys
    from autocompress.latency_model.model import LatencyModel
    from autocompress.latency_model.predict import drop_precisions, slow_precisions

    model = build_model("resnet20", num_classes=10, in_channels=1).eval()
    example = torch.randn(1, 1, 32, 32)
    space = _space(model, example)
    sites = wire_layers(model, example, space)
    table = LatencyTable()
    keys = [k for k in all_keys(sites, space) if isinstance(k, LayerKey)]
    # int4 runs 5x slower than int8, as on ONNX Runtime's CPU provider, except on 8 x 8 maps, where it is faster
    speed = {"fp32": 1.0, "int8": 0.5}
    table.record(keys, [1e-8 * k.cin * k.cout * k.hw[0] * k.hw[1]
                        * speed.get(k.precision, 0.25 if k.hw == (8, 8) else 2.5) for k in keys])
    gone = slow_precisions(LatencyModel(sites, space, table), space)
    small = {s.name for s in sites if all(k.hw == (8, 8) for k in site_keys(s, space))}
    with_int4 = {layer.name for layer in space.layers if "int4" in layer.precisions}
    assert small and with_int4 - small  # both kinds of layer are there
    assert set(gone) == with_int4 - small and all(v == ["int4"] for v in gone.values())
    narrowed = drop_precisions(space, gone)
    assert {layer.name: layer.precisions for layer in narrowed.layers} == {
        layer.name: ["fp32", "int8"] if layer.name in gone else layer.precisions for layer in space.layers}
    assert all("int4" in layer.precisions for layer in space.layers)  # the space given is left as it was


def test_a_resumed_search_drops_the_same_slow_choices_even_without_its_latency_model(tmp_path):
    """The first session's study was made on the narrowed space: a resumed one must offer exactly the same choices
    (Optuna refuses a changed categorical), whether or not its latency model is built again."""
    from dataclasses import asdict

    from autocompress.config import SearchConfig
    from autocompress.engine.latency import setup_predictor
    from autocompress.engine.prepare import Prepared
    from autocompress.engine.state import RunState
    from autocompress.results.records import SlowChoice
    from autocompress.results.rundir import RunDir

    model = build_model("resnet20", num_classes=10, in_channels=1).eval()
    space = _space(model, torch.randn(1, 1, 32, 32))
    g = next(g for g in space.groups if 24 in g.kept)
    r24 = g.ratios[g.kept.index(24)]
    slow = SlowChoice(g.name, r24, 24, g.ratios[g.kept.index(32)], 32, 0.2, 0.1)
    state = RunState(RunDir(tmp_path), meta={"slow_choices": [asdict(slow)]})
    prep = Prepared(SearchConfig(latency_model=False), None, space, model, True, tmp_path, "run", resume=True)
    lines: list[str] = []
    dropped, predictor = setup_predictor(prep, state, None, model, False, lines.append)
    assert predictor is None
    g = next(d for d in dropped.groups if d.name == g.name)
    assert 24 not in g.kept and r24 not in g.ratios and len(g.kept) == len(g.ratios)
    assert any("not offered, slow on this device" in x for x in lines)


@pytest.mark.parametrize("name,shape,expected", [
    ("resnet18", (3, 64, 64), [Junction("conv1", "layer1.0.conv1", "MaxPool", (3, 3), (2, 2), (1, 1), relu=True)]),
    ("resnet20", (1, 32, 32), []),
])
def test_junctions_are_the_pools_between_two_layers(name, shape, expected):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=shape[0]).eval()
    example = torch.randn(1, *shape)
    sites = wire_layers(model, example, _space(model, example))
    assert find_junctions(model, example, sites) == expected


def test_a_junction_follows_the_configuration_and_its_graph_keeps_both_precisions(tmp_path):
    """The junction's producer has the configuration's channels, its consumer reads them at its own precision (and
    keeps its full output width), and the pair graph runs each layer on the kernel its precision asks for."""
    from autocompress.measure.verify import kernel_report

    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, in_channels=3).eval()
    example = torch.randn(1, 3, 64, 64)
    space = _space(model, example)
    sites = wire_layers(model, example, space)
    junctions = find_junctions(model, example, sites)
    stem = next(g for g in space.groups if any(s.name == "conv1" and g.name in dict(s.out_per) for s in sites))
    ratios = {stem.name: 0.5}
    keys = layer_keys(sites, space, ratios, {"conv1": "fp32", "layer1.0.conv1": "int8"})
    (jk,) = junction_keys(sites, junctions, keys)
    assert jk.producer == keys[0] and jk.producer.cout == jk.consumer.cin < 64
    assert jk.consumer.precision == "int8" and jk.consumer.cout == 64
    assert jk in all_keys(sites, space, junctions)
    data, shape = junction_graph(jk)
    path = tmp_path / "junction.onnx"
    path.write_bytes(data)
    report = kernel_report(path)
    assert report["float_layers"] == ["a"] and report["integer_layers"] == ["b"]
    import onnx

    assert [n.op_type for n in onnx.load_from_string(data).graph.node].count("MaxPool") == 1
    assert shape == (3, 64, 64)


def test_a_pool_between_a_float_stem_and_an_int8_block_costs_what_the_pair_graph_shows():
    """ONNX Runtime runs ResNet's stem pool in plain NCHW floats when the stem is float and the first block int8
    (several times the stem convolution's own time here), and on integers between two int8 layers. The junction
    entry shows it; a layer table alone would not (the cost would read about 0)."""
    conv1 = LayerKey("conv", 3, 64, (7, 7), (2, 2), (3, 3), (1, 1), 1, (96, 96), "fp32")
    junction = Junction("conv1", "block", "MaxPool", (3, 3), (2, 2), (1, 1), relu=True)
    keys = [JunctionKey(junction, replace(conv1, precision=producer),
                        LayerKey("conv", 64, 64, (3, 3), (1, 1), (1, 1), (1, 1), 1, (24, 24), consumer))
            for producer, consumer in (("fp32", "int8"), ("int8", "int8"))]
    table = LatencyTable()
    table.record(keys, junction_costs(keys, lambda graphs: [time_graph(d, s, threads=1) for d, s in graphs]))
    table.record([conv1], [time_graph(*layer_graph(conv1), threads=1)])
    assert table.junction_cost(keys[0]) > 0.5 * table.entries[conv1.text()] > table.junction_cost(keys[1])
