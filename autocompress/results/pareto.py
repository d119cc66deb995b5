"""Pareto set over (validation accuracy up, latency down, size down) of completed trials."""

from __future__ import annotations

import pandas as pd

__all__ = ["OBJECTIVES", "pareto_front", "dominates", "fastest_within"]

OBJECTIVES = (("val_accuracy", "max"), ("latency_ms", "min"), ("size_bytes", "min"))


def dominates(a: pd.Series | dict, b: pd.Series | dict, objectives=OBJECTIVES) -> bool:
    better_or_equal = all((a[k] >= b[k]) if d == "max" else (a[k] <= b[k]) for k, d in objectives)
    strictly = any((a[k] > b[k]) if d == "max" else (a[k] < b[k]) for k, d in objectives)
    return better_or_equal and strictly


def pareto_front(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of completed trials that no other completed trial dominates, fastest first."""
    done = table[table["state"] == "COMPLETE"] if "state" in table else table
    if any(k not in done.columns for k, _ in OBJECTIVES):  # no trial has completed yet
        return done.iloc[0:0]
    done = done.dropna(subset=[k for k, _ in OBJECTIVES])
    rows = [r for _, r in done.iterrows()]
    keep = [i for i, r in zip(done.index, rows, strict=True) if not any(dominates(o, r) for o in rows if o is not r)]
    return done.loc[keep].sort_values("latency_ms")


def fastest_within(table: pd.DataFrame, reference_accuracy: float, points: float = 1.0) -> pd.Series | None:
    """The fastest completed model whose validation accuracy is at most `points` below `reference_accuracy`
    (FP32's): the speed-up a user gets for (nearly) free. None if no model is that accurate (or none completed).
    The report, the progress line and benchmarks/device.py all pick "the best model within 1 point" with this."""
    done = table[table["state"] == "COMPLETE"] if "state" in table else table
    if "val_accuracy" not in done or "latency_ms" not in done:  # no trial has completed yet
        return None
    near = done[done["val_accuracy"] >= reference_accuracy - points].dropna(subset=["latency_ms"])
    return None if near.empty else near.sort_values("latency_ms", kind="stable").iloc[0]
