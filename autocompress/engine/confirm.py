"""The last step of a search: the figures a user compares are re-measured together.

During the search each trial is measured once, when it finishes, and some figures come from the latency cache
(measured in an earlier run). A shared host's speed drifts by a few percent over minutes (docs/latency.md), so
speedups computed from figures taken at different times compare the host's moods as well as the models. When the
budget is spent and no trial runs any more, every Pareto model and every baseline is measured again in `rounds`
rounds (each round measures each model once, in fresh sessions, the order reversed every other round). A model
whose rounds disagree by more than `agree` (4%, twice a measurement's CI target) gets more rounds, up to `extra`
more, so one burst cannot decide its figure. The reported figure is the median over its rounds that are not
flagged `contended` (all of them if every one is; the mean of the middle two for an even count).
Why this rule and not the median or fastest of a fixed number of rounds: docs/latency.md.
If a confirmed figure moves a model off the front and an unconfirmed trial onto it, that one is confirmed too.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from autocompress.results.pareto import pareto_front
from autocompress.results.records import TrialRecord, TrialState

__all__ = ["Confirmed", "confirm_latencies", "apply_confirmed", "summarise"]


@dataclass(frozen=True)
class Confirmed:
    """A model's re-measured figure (`summarise` of its rounds) and the rounds' medians."""

    summary: dict
    rounds_ms: list[float]


def summarise(figures: list[dict]) -> dict:
    """One figure from a model's rounds: the median of the rounds not flagged contended (of all, if every one is)."""
    use = [f for f in figures if not f.get("contended")] or figures
    probes = [f["probe_vs_best"] for f in use if f.get("probe_vs_best") is not None]
    loads = [f["other_load_cores"] for f in use if f.get("other_load_cores") is not None]

    def med(key: str) -> float:
        return float(statistics.median(f[key] for f in use))

    return {"median_ms": med("median_ms"), "p90_ms": med("p90_ms"), "p99_ms": med("p99_ms"),
            "reps": sum(int(f.get("reps", 0)) for f in figures), "contended": all(f.get("contended") for f in use),
            "other_load_cores": max(loads) if loads else None,
            "probe_vs_best": round(float(statistics.median(probes)), 3) if probes else None}


def _agree(figures: list[dict], agree: float) -> bool:
    ms = [f["median_ms"] for f in figures if not f.get("contended")]
    return len(ms) >= 2 and max(ms) <= (1 + agree) * min(ms)


def apply_confirmed(rec: TrialRecord, confirmed: dict[str, Confirmed]) -> TrialRecord:
    """`rec` with its file's confirmed figure (a duplicate shares its original's file), or `rec` itself."""
    if not rec.measured or rec.artifact.onnx not in confirmed:  # type: ignore[union-attr]
        return rec
    c = confirmed[rec.artifact.onnx]  # type: ignore[union-attr]
    return rec.with_latency(rec.latency.confirmed(c.summary, c.rounds_ms))  # type: ignore[union-attr]


def _to_measure(records: dict[int, TrialRecord], baselines: dict[str, TrialRecord],
                done: dict[str, Confirmed]) -> list[str]:
    """Files of the baselines and of the front (with the figures confirmed so far) not yet confirmed."""
    table = pd.DataFrame([apply_confirmed(r, done).to_row() for r in records.values()])
    front = pareto_front(table) if len(table) else table
    files = [b.artifact.onnx for b in baselines.values() if b.state is TrialState.COMPLETE and b.artifact]
    files += [str(p) for p in front["onnx"]] if len(front) else []
    return list(dict.fromkeys(f for f in files if f not in done))  # a reused baseline file is measured once


def confirm_latencies(records: dict[int, TrialRecord], baselines: dict[str, TrialRecord], run_path: Path,
                      measure: Callable[[bytes], dict], rounds: int, log: Callable[[str], None] = print, *,
                      agree: float = 0.04, extra: int = 2) -> dict[str, Confirmed]:
    """Re-measure the Pareto models and baselines (their ONNX files under `run_path`) in `rounds` rounds (more for
    a model whose rounds disagree). Returns each measured file's new figure, to apply with `apply_confirmed`; the
    records are not touched. An exception from `measure` propagates: no figure is half-confirmed."""
    confirmed: dict[str, Confirmed] = {}
    for _ in range(3 if rounds > 0 else 0):  # a front changed by the new figures: confirm its newcomers too
        todo = _to_measure(records, baselines, confirmed)
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
        confirmed.update({f: Confirmed(summarise(v), [x["median_ms"] for x in v]) for f, v in figures.items()})
    return confirmed
