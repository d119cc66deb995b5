"""The last step of a search: the figures a user compares are re-measured together.

During the search each trial is measured once, when it finishes, and some figures come from the latency cache
(measured in an earlier run). A shared host's speed drifts by a few percent over minutes (benchmarks/drift.md:
one model read 0.516-0.616 ms over seven minutes), so speedups computed from figures taken at different times
compare the host's moods as well as the models. When the budget is spent and no trial runs any more, every
Pareto model and every baseline is measured again in `rounds` rounds (each round measures each model once, in
fresh sessions, the order reversed every other round). A model whose rounds disagree by more than `agree`
(4%, twice a measurement's CI target) gets more rounds, up to `extra` more, so one burst cannot decide its
figure. The reported figure is the median over its rounds that are not flagged `contended` (all of them if
every one is; the mean of the middle two for an even count).
Tried first and measured on reports/example: the median of 3 rounds with no agreement rule (in a bursty hour
it put FP32 at 1.354 ms from rounds of 1.354, 1.093 and 1.430 ms, against 1.069 during the search and 1.044
in a quiet hour); then the fastest of 2 rounds, which sat low: re-measured in new processes, trial 2 read
0.562-0.569 ms against a reported 0.5358 (rounds 0.5358 and 0.5746), 6.2% off.
If a confirmed figure moves a model off the front and an unconfirmed trial onto it, that one is confirmed too.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Callable

import pandas as pd

from autocompress.results.pareto import pareto_front

__all__ = ["confirm_latencies", "summarise", "CONFIRM_FIELDS"]

# what a confirmed figure replaces in a row; the search-time measurement's own fields (source, held time, paused
# trials) stay: they describe what the measurement during the search cost
CONFIRM_FIELDS = {"median_ms": "latency_ms", "p90_ms": "latency_p90_ms", "p99_ms": "latency_p99_ms",
                  "reps": "latency_reps", "other_load_cores": "latency_other_load_cores", "contended": "latency_contended",
                  "probe_vs_best": "latency_probe_vs_best"}


def summarise(figures: list[dict]) -> dict:
    """One figure from a model's rounds: the median of the rounds not flagged contended (of all, if every one is)."""
    use = [f for f in figures if not f.get("contended")] or figures
    med = lambda key: float(statistics.median(f[key] for f in use))  # noqa: E731
    probes = [f["probe_vs_best"] for f in use if f.get("probe_vs_best") is not None]
    loads = [f["other_load_cores"] for f in use if f.get("other_load_cores") is not None]
    return {"median_ms": med("median_ms"), "p90_ms": med("p90_ms"), "p99_ms": med("p99_ms"),
            "reps": sum(int(f.get("reps", 0)) for f in figures), "contended": all(f.get("contended") for f in use),
            "other_load_cores": max(loads) if loads else None,
            "probe_vs_best": round(float(statistics.median(probes)), 3) if probes else None}


def _agree(figures: list[dict], agree: float) -> bool:
    ms = [f["median_ms"] for f in figures if not f.get("contended")]
    return len(ms) >= 2 and max(ms) <= (1 + agree) * min(ms)


def _apply(row: dict, chosen: dict, figures: list[dict]) -> None:
    row.setdefault("search_latency_ms", row["latency_ms"])  # a resumed run confirms again: keep the first figure
    for src, dst in CONFIRM_FIELDS.items():
        value = chosen.get(src)
        row[dst] = round(value, 4) if isinstance(value, float) and src.endswith("_ms") else value
    row["latency_confirm_ms"] = " ".join(f"{f['median_ms']:.4f}" for f in figures)


def confirm_latencies(rows: dict[int, dict], baselines: dict[str, dict], run_path: Path,
                      measure: Callable[[bytes], dict], rounds: int, log: Callable[[str], None] = print, *,
                      agree: float = 0.04, extra: int = 2) -> dict[str, dict]:
    """Re-measure the Pareto models and baselines (their ONNX files under `run_path`) in `rounds` rounds (more for
    a model whose rounds disagree) and write the summary (`summarise`) into every row of those files (in place;
    duplicates share their original's file). Returns each measured file's summary. An exception from `measure`
    leaves every row unchanged: the figures go into copies, written back once every pass is done."""
    if rounds <= 0:
        return {}
    new_rows = {n: dict(r) for n, r in rows.items()}
    new_baselines = {k: dict(b) for k, b in baselines.items()}
    summaries: dict[str, dict] = {}
    for _ in range(3):  # a front changed by the new figures: confirm its newcomers too (at most twice more)
        table = pd.DataFrame(list(new_rows.values()))
        front = pareto_front(table) if len(table) and "state" in table else table
        files = [b["onnx"] for b in baselines.values() if b.get("state", "COMPLETE") == "COMPLETE" and b.get("onnx")]
        files += [str(p) for p in front["onnx"]] if len(front) else []
        todo = list(dict.fromkeys(f for f in files if f not in summaries))  # a reused baseline file is measured once
        if not todo:
            break
        log(f"confirming the latency of {len(todo)} model(s) (Pareto models and baselines), {rounds} round(s)")
        figures: dict[str, list[dict]] = {f: [] for f in todo}
        data = {f: (run_path / f).read_bytes() for f in todo}
        for r in range(rounds + extra):  # one round asked for: nothing to agree with, no extra rounds
            group = todo if r < rounds else [f for f in todo if rounds > 1 and not _agree(figures[f], agree)]
            if not group:
                break
            for f in (group if r % 2 == 0 else group[::-1]):
                figures[f].append(measure(data[f]))
        summaries.update({f: summarise(v) for f, v in figures.items()})
        for row in [*new_rows.values(), *new_baselines.values()]:
            if row.get("onnx") in figures and row.get("latency_ms") is not None:
                _apply(row, summaries[row["onnx"]], figures[row["onnx"]])
    for n, row in new_rows.items():
        rows[n].update(row)
    for k, row in new_baselines.items():
        baselines[k].update(row)
    return summaries
