"""latency_model/allocate.py: configurations as fast as a uniform int8 one, their pruning placed by the sensitivity
scan.

The layer table here is written by the test (time grows with each layer's work), so what the allocation must do is
known; the real table and scan drive it in tests/test_sensitivity.py's search."""

from __future__ import annotations

import torch
import torch.nn as nn

from autocompress.latency_model.allocate import allocated_configs, allocation_path, start_params
from autocompress.latency_model.layers import wire_layers
from autocompress.latency_model.model import LatencyModel, LatencyTable, all_keys
from autocompress.pipeline.prune import find_groups
from autocompress.space import SpaceFile, build_space
from autocompress.tasks.models import build_model


def _setup():
    model = build_model("resnet20", num_classes=10, in_channels=1).eval()
    example = torch.randn(1, 1, 32, 32)
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    spec = SpaceFile.model_validate({"prune": {"ratios": [0.0, 0.25, 0.5, 0.75]},
                                     "quantize": {"precisions": ["fp32", "int8"]}})
    space = build_space(spec, find_groups(model, example), layers)
    sites = wire_layers(model, example, space)
    table = LatencyTable()
    keys = all_keys(sites, space)
    table.record(keys, [1e-8 * k.cin * k.cout * k.hw[0] * k.hw[1] * k.kernel[0] ** 2 * (0.3 if k.precision == "int8"
                                                                                         else 1.0) for k in keys])
    model_ = LatencyModel(sites, space, table)

    def predict(params: dict) -> float:
        return model_.predict(*space.decode(params))
    return space, predict


def _most_saving(space, predict) -> str:
    """The group whose first step of pruning saves the most predicted time: the one a time-only rule prunes first."""
    start = start_params(space)
    groups = [g for g in space.groups if len(g.ratios) > 1]
    return min(groups, key=lambda g: predict({**start, f"prune:{g.name}": g.ratios[1]})).name


def _sens(space, fragile: str) -> dict:
    """Every group loses a point per 25% pruned alone, except `fragile`, which loses 40."""
    prune = {g.name: {str(r): 90.0 - (40.0 if g.name == fragile else 4 * r) for r in g.ratios if r > 0}
             for g in space.groups}
    return {"base": 90.0, "chance": 10.0, "prune": prune, "quant": {}}


def test_the_path_prunes_the_fragile_group_last_and_always_gets_faster():
    space, predict = _setup()
    groups = [g for g in space.groups if len(g.ratios) > 1]
    fragile = _most_saving(space, predict)  # pruning it saves the most time, yet costs the most points
    path = allocation_path(space, _sens(space, fragile), predict)
    assert path[0][0] == start_params(space) and all(v == "int8" for k, v in path[0][0].items() if k[:6] == "quant:")
    assert all(b[1] < a[1] for a, b in zip(path, path[1:], strict=False))  # every step saves predicted time
    assert all(len(set(a[0].items()) ^ set(b[0].items())) == 2 for a, b in zip(path, path[1:], strict=False))
    first_fragile = next(i for i, (p, _) in enumerate(path) if p[f"prune:{fragile}"] > 0)
    before = path[first_fragile - 1][0]
    assert all(before[f"prune:{g.name}"] == max(g.ratios) for g in groups if g.name != fragile), before


def test_each_allocated_configuration_is_as_fast_as_its_uniform_one_and_spares_the_fragile_group():
    space, predict = _setup()
    fragile = _most_saving(space, predict)
    allocated = allocated_configs(space, _sens(space, fragile), predict)
    assert [a.like_ratio for a in allocated][:2] == [0.5, 0.25]  # the middle of the range first
    for a in allocated:
        uniform = space.uniform(a.like_ratio, "int8")
        assert a.params != uniform
        assert a.predicted_ms <= a.like_ms + 1e-9 and abs(a.like_ms - predict(uniform)) < 1e-3
        assert abs(a.predicted_ms - predict(a.params)) < 1e-3
        assert a.params[f"prune:{fragile}"] <= uniform[f"prune:{fragile}"]  # fewer of its channels removed
    assert any(a.params[f"prune:{fragile}"] < space.uniform(a.like_ratio, "int8")[f"prune:{fragile}"]
               for a in allocated)
    assert len({tuple(sorted(a.params.items())) for a in allocated}) == len(allocated)


def test_a_ratio_the_scan_has_no_figure_for_is_not_a_step():
    space, predict = _setup()
    sens = _sens(space, "")
    g = next(g for g in space.groups if len(g.ratios) > 1)
    del sens["prune"][g.name][str(g.ratios[1])]
    path = allocation_path(space, sens, predict)
    assert all(p[f"prune:{g.name}"] == g.ratios[0] for p, _ in path)
    assert len(path) > 1
