"""The last step of a search: the figures a user compares are re-measured together.

During the search each trial is measured once, when it finishes, and some figures come from the latency cache
(measured in an earlier run). A shared host's speed drifts by a few percent over minutes (benchmarks/drift.md:
one model read 0.516-0.616 ms over seven minutes), so speedups computed from figures taken at different times
compare the host's moods as well as the models. When the budget is spent and no trial runs any more, every
Pareto model and every baseline is measured again in `rounds` rounds (each round measures each model once, in
fresh sessions, the order reversed every other round), and the report shows the fastest round: interference
from outside only ever adds time, so the fastest is the machine's quiet speed, the same rule a measurement
applies to its own sessions. (The median round was tried first: in a bursty hour it reported FP32 at 1.354 ms
from rounds of 1.354, 1.093 and 1.430 ms, against 1.069 measured during the search and 1.044 in a quiet hour.)
If a confirmed figure moves a model off the front and an unconfirmed trial onto it, that one is confirmed too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from autocompress.results.pareto import pareto_front

__all__ = ["confirm_latencies", "CONFIRM_FIELDS"]

# what a confirmed figure replaces in a row; the search-time measurement's own fields (source, held time, paused
# trials) stay: they describe what the measurement during the search cost
CONFIRM_FIELDS = {"median_ms": "latency_ms", "p90_ms": "latency_p90_ms", "p99_ms": "latency_p99_ms",
                  "reps": "latency_reps", "other_load_cores": "latency_other_load_cores", "contended": "latency_contended",
                  "probe_vs_best": "latency_probe_vs_best"}


def _fastest_round(figures: list[dict]) -> dict:
    return min(figures, key=lambda f: f["median_ms"])


def _apply(row: dict, chosen: dict, figures: list[dict]) -> None:
    row.setdefault("search_latency_ms", row["latency_ms"])  # a resumed run confirms again: keep the first figure
    for src, dst in CONFIRM_FIELDS.items():
        value = chosen.get(src)
        row[dst] = round(value, 4) if isinstance(value, float) and src.endswith("_ms") else value
    row["latency_confirm_ms"] = " ".join(f"{f['median_ms']:.4f}" for f in figures)


def confirm_latencies(rows: dict[int, dict], baselines: dict[str, dict], run_path: Path,
                      measure: Callable[[bytes], dict], rounds: int, log: Callable[[str], None] = print) -> dict[str, dict]:
    """Re-measure the Pareto models and baselines (their ONNX files under `run_path`) in `rounds` rounds and write
    the fastest round into every row of those files (in place; duplicates share their original's file). Returns
    each measured file's fastest round. An exception from `measure` leaves every row of that pass unchanged."""
    if rounds <= 0:
        return {}
    confirmed: dict[str, list[dict]] = {}
    for _ in range(3):  # a front changed by the new figures: confirm its newcomers too (at most twice more)
        table = pd.DataFrame(list(rows.values()))
        front = pareto_front(table) if len(table) and "state" in table else table
        files = [b["onnx"] for b in baselines.values() if b.get("state", "COMPLETE") == "COMPLETE" and b.get("onnx")]
        files += [str(p) for p in front["onnx"]] if len(front) else []
        todo = list(dict.fromkeys(f for f in files if f not in confirmed))  # a reused baseline file is measured once
        if not todo:
            break
        log(f"confirming the latency of {len(todo)} model(s) (Pareto models and baselines), {rounds} round(s)")
        figures: dict[str, list[dict]] = {f: [] for f in todo}
        data = {f: (run_path / f).read_bytes() for f in todo}
        for r in range(rounds):
            for f in (todo if r % 2 == 0 else todo[::-1]):
                figures[f].append(measure(data[f]))
        confirmed.update(figures)
        for row in [*rows.values(), *baselines.values()]:
            if row.get("onnx") in figures and row.get("latency_ms") is not None:
                _apply(row, _fastest_round(figures[row["onnx"]]), figures[row["onnx"]])
    return {f: _fastest_round(v) for f, v in confirmed.items()}
