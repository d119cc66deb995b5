"""The hypervolume used to compare searches: exact areas on hand-made fronts."""

import pandas as pd
import pytest

from autocompress.results.hypervolume import baseline_hypervolumes, hypervolume, hypervolume_curve, normalise


def test_normalise_against_fp32():
    assert normalise(1.0, 99.0, 1.0, 99.0) == (0.0, 1.0)
    assert normalise(0.5, 94.0, 1.0, 99.0) == pytest.approx((0.5, 0.5))


def test_hypervolume_exact_areas():
    assert hypervolume([]) == 0
    assert hypervolume([(0.5, 1.0)]) == pytest.approx(0.5)
    # two points: the union of two rectangles
    assert hypervolume([(0.5, 1.0), (0.8, 0.5)]) == pytest.approx(0.5 * 1.0 + 0.3 * 0.5)
    # a dominated point adds nothing; points below the reference add nothing
    assert hypervolume([(0.5, 1.0), (0.4, 0.9), (-0.2, 1.2), (0.9, -0.1)]) == pytest.approx(0.5)


def test_curve_grows_with_trials_and_ignores_failures():
    fp32 = {"latency_ms": 1.0, "val_accuracy": 99.0}
    table = pd.DataFrame([
        {"trial": 0, "state": "COMPLETE", "latency_ms": 0.5, "val_accuracy": 99.0},
        {"trial": 1, "state": "FAIL", "latency_ms": None, "val_accuracy": None},
        {"trial": 2, "state": "COMPLETE", "latency_ms": 0.2, "val_accuracy": 94.0},
    ])
    curve = hypervolume_curve(table, fp32)
    assert curve["hypervolume"].round(6).tolist() == [0.5, 0.5, round(0.5 + 0.3 * 0.5, 6)]
    hv = baseline_hypervolumes({"fp32": {**fp32, "size_bytes": 1}, "int8": {"latency_ms": 0.6, "val_accuracy": 99.0},
                                "prune50-int8": {"state": "FAIL"}})
    assert hv == pytest.approx({"int8": 0.4, "all uniform": 0.4})
