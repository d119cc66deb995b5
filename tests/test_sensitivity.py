"""The sensitivity scan: real measurements of the demo network, and the rules that use them."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from autocompress.space import GroupChoice, LayerChoice, SearchSpace
from autocompress.space.sensitivity import QUANT_HOPELESS, narrow, scan, warm_configs
from tests.conftest import FAST_FLAGS, run_cli


def _space() -> SearchSpace:
    return SearchSpace(
        groups=[GroupChoice("a", 32, ("a",), [0.0, 0.25, 0.5, 0.75], [32, 24, 16, 8]),
                GroupChoice("b", 32, ("b",), [0.0, 0.25, 0.5, 0.75], [32, 24, 16, 8])],
        layers=[LayerChoice("a", ["fp32", "int8", "int4"]), LayerChoice("b", ["fp32", "int8", "int4"])],
        round_to=8, min_channels=8)


SENS = {"base": 98.0, "chance": 10.0,
        "prune": {"a": {"0.25": 97.5, "0.5": 95.0, "0.75": 12.0}, "b": {"0.25": 90.0, "0.5": 60.0, "0.75": 30.0}},
        "quant": {"a": {"int8": 97.8, "int4": 98.0 - QUANT_HOPELESS - 1}, "b": {"int8": 96.0, "int4": 95.0}}}


def test_narrow_removes_only_hopeless_precisions_never_pruning_ratios():
    before = _space()
    space, removed = narrow(before, SENS)
    # int4 of layer a alone costs more than QUANT_HOPELESS points; pruning is recovered by the fine-tune: kept
    assert removed == {"quant:a": ["int4"]}
    assert before == _space()  # a new space: the one given is left as it was
    assert [g.ratios for g in space.groups] == [[0.0, 0.25, 0.5, 0.75]] * 2
    assert space.layers[0].precisions == ["fp32", "int8"] and space.layers[1].precisions == ["fp32", "int8", "int4"]


def test_warm_configs_prune_the_tolerant_groups_and_int8_the_tolerant_layers():
    configs = warm_configs(_space(), SENS, tolerances=(1.0, 5.0))
    assert configs[0] == {"prune:a": 0.25, "prune:b": 0.0, "quant:a": "int8", "quant:b": "fp32"}
    assert configs[1] == {"prune:a": 0.5, "prune:b": 0.0, "quant:a": "int8", "quant:b": "fp32"}


def test_scan_measures_every_choice_of_the_demo_network(trained_resnet20, digits):

    from autocompress.pipeline.export import layer_nodes  # noqa: F401  (the space comes from the real model)
    from autocompress.pipeline.prune import find_groups
    from autocompress.space import SpaceFile, build_space

    example = digits.val.images(1)
    layers = ["conv1", "layer1.0.conv1", "fc"]
    space = build_space(SpaceFile.model_validate({"prune": {"ratios": [0.0, 0.5, 0.75]},
                                                  "quantize": {"precisions": ["fp32", "int8", "int4"]}}),
                        find_groups(trained_resnet20, example)[:2], layers)
    sens = scan(trained_resnet20, digits, space, reduce_range=True)
    assert set(sens["prune"]) == {g.name for g in space.groups} and set(sens["quant"]) == set(layers)
    for g in space.groups:
        assert set(sens["prune"][g.name]) == {str(r) for r in g.ratios if r > 0}
    assert all(set(v) == {"int8", "int4"} for v in sens["quant"].values())
    # real effects: pruning 75% of a group alone costs more than 50% does; int4 costs at least as much as int8
    for g in space.groups:
        accs = sens["prune"][g.name]
        if "0.75" in accs and "0.5" in accs:
            assert accs["0.75"] <= accs["0.5"] + 1.0
    assert sum(v["int4"] for v in sens["quant"].values()) <= sum(v["int8"] for v in sens["quant"].values()) + 1.0


@pytest.mark.slow
def test_search_runs_the_scan_once_and_reuses_it(tmp_path):
    flags = [f for f in FAST_FLAGS if f != "--no-sensitivity"]
    first = tmp_path / "a"
    # without the funnel: its trials start from the scan's allocated configurations (with it, they compete there)
    res = run_cli("search", "--budget", "3", "--out", str(first), "--latency-model", "--funnel", "0", *flags)
    assert res.returncode == 0, res.stderr[-3000:]
    meta = json.loads((first / "meta.json").read_text())
    assert meta["sensitivity"]["cached"] is False and meta["sensitivity"]["warm_configs"] >= 1
    # with the latency model, the third trial (after the uniform 50%- and 25%-pruned int8 ones) is the first
    # configuration allocated from the real scan and layer table: as fast as a uniform int8 one by the table
    allocated = meta["sensitivity"]["allocated"]
    assert allocated and allocated[0]["predicted_ms"] <= allocated[0]["like_ms"]
    trial2 = pd.read_csv(first / "trials.csv").set_index("trial").loc[2]
    assert all(trial2[k] == v for k, v in allocated[0]["params"].items()), (trial2, allocated[0])
    # (its prediction is not the allocation's: the latency model has learned from the trials measured before it)
    assert trial2["latency_predicted_ms"] > 0
    assert "trial 2: as fast as uniform" in (first / "report.html").read_text()
    second = tmp_path / "b"
    # one trial is enough to show the reuse; the latency model on as in the first (it narrows the space the scan
    # is keyed by: int4 where it is no faster than int8)
    res = run_cli("search", "--budget", "1", "--out", str(second), "--latency-model", "--funnel", "0", *flags)
    assert res.returncode == 0, res.stderr[-3000:]
    meta2 = json.loads((second / "meta.json").read_text())
    assert meta2["sensitivity"]["cached"] is True
    assert meta2["sensitivity"]["cache_key"] == meta["sensitivity"]["cache_key"]
    assert len(pd.read_csv(second / "trials.csv")) == 1
