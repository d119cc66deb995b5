"""Choose the most accurate Pareto model that meets the user's constraints."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from autocompress.results.pareto import pareto_front
from autocompress.results.rundir import RunDir

__all__ = ["Pick", "pick"]

_KEYS = ("accuracy", "val_accuracy", "latency_ms", "latency_p90_ms", "size_bytes", "onnx")


@dataclass
class Pick:
    chosen: dict | None  # trial, accuracy (test %), val_accuracy, latency_ms, size_bytes, onnx, baseline
    nearest: list[dict]  # when nothing meets the constraints: the closest Pareto models
    baseline: dict


def _record(rd: RunDir, r: dict, trial) -> dict:
    return {
        "trial": trial, "accuracy": float(r["test_accuracy"]), "val_accuracy": float(r["val_accuracy"]),
        "latency_ms": float(r["latency_ms"]), "latency_p90_ms": float(r["latency_p90_ms"]),
        "size_bytes": int(r["size_bytes"]), "onnx": str((rd.path / r["onnx"]).resolve()),
    }


def pick(run_dir: str | Path, *, max_latency_ms: float, min_accuracy: float | None = None,
         max_size_mb: float | None = None, export: str | Path | None = None) -> Pick:
    """Among Pareto models with latency <= max_latency_ms (and val accuracy >= min_accuracy, size <= max_size_mb),
    the one with the highest validation accuracy (ties: faster). `accuracy` in the result is the test accuracy."""
    rd = RunDir.open(run_dir)
    baselines = rd.read_json(rd.baselines_json)
    base = _record(rd, baselines["fp32"], "baseline-fp32")
    front = pareto_front(rd.read_table())
    ok = front[front["latency_ms"] <= max_latency_ms]
    if min_accuracy is not None:
        ok = ok[ok["val_accuracy"] >= min_accuracy]
    if max_size_mb is not None:
        ok = ok[ok["size_bytes"] <= max_size_mb * 1e6]
    if ok.empty:
        # nearest: how far each Pareto model is from meeting every constraint, relative to its limit
        def miss(r: pd.Series) -> float:
            m = max(0.0, r["latency_ms"] / max_latency_ms - 1)
            if min_accuracy is not None:
                m += max(0.0, (min_accuracy - r["val_accuracy"]) / 100)
            if max_size_mb is not None:
                m += max(0.0, r["size_bytes"] / (max_size_mb * 1e6) - 1)
            return m

        near = front.assign(_miss=front.apply(miss, axis=1)).sort_values("_miss").head(3) if len(front) else front
        return Pick(None, [_record(rd, r, int(r["trial"])) for _, r in near.iterrows()], base)
    r = ok.sort_values(["val_accuracy", "latency_ms"], ascending=[False, True]).iloc[0]
    chosen = _record(rd, r, int(r["trial"]))
    if export is not None:
        dst = Path(export)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(chosen["onnx"], dst)
        chosen["exported_to"] = str(dst.resolve())
    chosen["baseline"] = base
    return Pick(chosen, [], base)
