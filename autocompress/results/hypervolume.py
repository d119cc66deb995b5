"""Search quality as one number: the hypervolume of the accuracy-latency front, normalised to the FP32 baseline.

Each model becomes a point (s, a): s = 1 - latency / FP32 latency (the fraction of latency removed; 0 for
FP32 itself, 0.5 for a 2x speed-up), a = (accuracy - floor) / (FP32 accuracy - floor) with floor = FP32
accuracy - FLOOR_POINTS (1 at FP32's accuracy, 0 at the floor). The hypervolume is the area of the region
that some point dominates, above (0, 0): larger is better, models slower than FP32 or below the floor add
nothing. Validation accuracy of the ONNX Runtime artifact, as the search itself uses.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["FLOOR_POINTS", "normalise", "hypervolume", "hypervolume_curve", "baseline_hypervolumes"]

FLOOR_POINTS = 10.0


def normalise(latency_ms: float, accuracy: float, fp32_ms: float, fp32_acc: float) -> tuple[float, float]:
    floor = fp32_acc - FLOOR_POINTS
    return 1.0 - latency_ms / fp32_ms, (accuracy - floor) / (fp32_acc - floor)


def hypervolume(points: list[tuple[float, float]]) -> float:
    """Area dominated by `points` (both coordinates maximised) above the reference (0, 0)."""
    pts = sorted(((s, a) for s, a in points if s > 0 and a > 0), key=lambda p: -p[0])
    area, best_a = 0.0, 0.0
    for i, (s, a) in enumerate(pts):
        if a > best_a:
            best_a = a
        nxt = pts[i + 1][0] if i + 1 < len(pts) else 0.0
        area += (s - nxt) * best_a
    return area


def _points(df: pd.DataFrame, fp32: dict) -> list[tuple[float, float]]:
    return [normalise(r.latency_ms, r.val_accuracy, fp32["latency_ms"], fp32["val_accuracy"]) for r in df.itertuples()]


def hypervolume_curve(table: pd.DataFrame, fp32: dict) -> pd.DataFrame:
    """Hypervolume of the completed trials among the first n trials run, for every n (trial-number order)."""
    if not len(table):
        return pd.DataFrame(columns=["trials", "hypervolume"])
    # a repeat reused a result, a skipped proposal was never built: neither is a trial run
    t = table[~table["state"].isin(["DUPLICATE", "SKIPPED"])].sort_values("trial")
    done = t["state"] == "COMPLETE"
    out, pts = [], []
    for n, (ok, row) in enumerate(zip(done, t.itertuples(), strict=True), start=1):
        if ok:
            pts.append(normalise(row.latency_ms, row.val_accuracy, fp32["latency_ms"], fp32["val_accuracy"]))
        out.append({"trials": n, "hypervolume": hypervolume(pts)})
    return pd.DataFrame(out)


def baseline_hypervolumes(baselines: dict) -> dict[str, float]:
    """Each uniform baseline's hypervolume alone, and all of them together ('all uniform')."""
    fp32 = baselines["fp32"]
    ok = {k: b for k, b in baselines.items() if b.get("state", "COMPLETE") == "COMPLETE"}
    pts = {
        k: normalise(b["latency_ms"], b["val_accuracy"], fp32["latency_ms"], fp32["val_accuracy"])
        for k, b in ok.items()
    }
    out = {k: hypervolume([p]) for k, p in pts.items() if k != "fp32"}
    out["all uniform"] = hypervolume(list(pts.values()))
    return out
