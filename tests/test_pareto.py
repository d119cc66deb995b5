"""The one rule for "the fastest model within 1 point of FP32" (autocompress/results/pareto.py fastest_within),
used by the report, the progress line and benchmarks/device.py."""

from __future__ import annotations

import numpy as np
import pandas as pd

from autocompress.results.pareto import fastest_within


def _table() -> pd.DataFrame:
    return pd.DataFrame([
        {"trial": 0, "state": "COMPLETE", "val_accuracy": 99.0, "latency_ms": 1.00},
        {"trial": 1, "state": "COMPLETE", "val_accuracy": 98.2, "latency_ms": 0.50},  # 0.8 below: within 1 point
        {"trial": 2, "state": "COMPLETE", "val_accuracy": 97.9, "latency_ms": 0.30},  # 1.1 below: too far
        {"trial": 3, "state": "FAIL", "val_accuracy": 99.5, "latency_ms": 0.10},  # not completed
        {"trial": 4, "state": "STOPPED", "val_accuracy": 99.9, "latency_ms": 0.05},
        {"trial": 5, "state": "COMPLETE", "val_accuracy": 98.5, "latency_ms": np.nan},  # no figure: not a candidate
    ])


def test_fastest_within_picks_the_fastest_completed_model_no_more_than_the_given_points_below():
    best = fastest_within(_table(), reference_accuracy=99.0)
    assert int(best["trial"]) == 1
    assert int(fastest_within(_table(), 99.0, points=1.1)["trial"]) == 2  # the boundary itself counts
    assert int(fastest_within(_table(), 99.0, points=0.5)["trial"]) == 0
    ties = pd.concat([_table(), pd.DataFrame([{"trial": 6, "state": "COMPLETE", "val_accuracy": 99.0,
                                               "latency_ms": 0.50}])], ignore_index=True)
    assert int(fastest_within(ties, 99.0)["trial"]) == 1  # equally fast: the earlier row


def test_fastest_within_is_none_when_nothing_qualifies_or_nothing_completed():
    assert fastest_within(_table(), reference_accuracy=100.5) is None  # nothing completed is that accurate
    assert fastest_within(_table()[_table()["state"] != "COMPLETE"], 90.0) is None  # none completed
    assert fastest_within(pd.DataFrame(columns=["trial", "state"]), 90.0) is None  # no trial has finished yet
    assert fastest_within(pd.DataFrame(), 90.0) is None
    # a table without a state column (e.g. pareto.json's rows) counts every row as completed
    no_state = _table().drop(columns="state").iloc[:3]
    assert int(fastest_within(no_state, 99.0)["trial"]) == 1
