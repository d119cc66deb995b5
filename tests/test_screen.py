"""latency_model/screen.py: which measured model makes a proposal pointless to build."""

from __future__ import annotations

import json

from autocompress.latency_model.screen import SCREEN_SLACK, Dominator, covers, dominator


def _key(kept: dict[str, int], precision: dict[str, str]) -> str:
    return json.dumps({"kept": kept, "precision": precision}, sort_keys=True)


FULL_FP32 = _key({"a": 16, "b": 32}, {"c1": "fp32", "c2": "fp32"})
FULL_INT8 = _key({"a": 16, "b": 32}, {"c1": "int8", "c2": "int8"})
HALF_INT8 = _key({"a": 8, "b": 16}, {"c1": "int8", "c2": "int8"})
HALF_INT4 = _key({"a": 8, "b": 16}, {"c1": "int4", "c2": "int8"})
HALF_MIXED = _key({"a": 8, "b": 32}, {"c1": "fp32", "c2": "int4"})


def test_a_model_covers_another_with_at_least_its_channels_each_layer_at_least_as_precise():
    k = {name: json.loads(v) for name, v in
         dict(fp32=FULL_FP32, int8=FULL_INT8, half8=HALF_INT8, half4=HALF_INT4, mixed=HALF_MIXED).items()}
    assert covers(k["fp32"], k["int8"]) and covers(k["fp32"], k["mixed"]) and covers(k["int8"], k["half4"])
    assert covers(k["half8"], k["half4"]) and covers(k["half8"], k["half8"])
    assert not covers(k["int8"], k["fp32"])  # less precise
    assert not covers(k["half8"], k["int8"])  # fewer channels
    assert not covers(k["int8"], k["mixed"])  # c1 at fp32 beats int8
    assert not covers(k["half4"], k["half8"])  # int4 is less precise than int8


def test_the_fastest_covering_model_measured_beyond_the_slack_dominates():
    measured = [(FULL_FP32, "fp32", 1.0), (FULL_INT8, "int8", 0.5), (HALF_INT8, 3, 0.4)]
    # a half-width int4/int8 model predicted at 0.6 ms: trial 3 (0.4 ms) and int8 (0.5 ms) cover it; the fastest wins
    assert dominator(HALF_INT4, 0.6, measured) == Dominator(3, 0.4)
    # within the slack of every covering model: built (the prediction may be that far off)
    assert dominator(HALF_INT4, 0.4 * (1 + SCREEN_SLACK) - 1e-6, measured) is None
    # only FP32 covers a model with an fp32 layer
    assert dominator(HALF_MIXED, 1.3, measured) == Dominator("fp32", 1.0)
    assert dominator(HALF_MIXED, 0.9, measured) is None
    assert dominator(HALF_INT4, None, measured) is None  # no prediction: built
    assert Dominator(3, 0.4).text() == "trial 3" and Dominator("int8", 0.5).text() == "baseline int8"
