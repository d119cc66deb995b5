"""What the report says: the run directory's files read once into one record, and the views of it that both the
HTML and the Markdown report share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from autocompress.config import BASELINES
from autocompress.results.pareto import pareto_front
from autocompress.results.rundir import RunDir

BASELINE_LABELS = {b.name: b.label for b in BASELINES}
PARITY_LIMIT = 0.5  # points of accuracy between the artifact and its PyTorch model that the report flags


@dataclass(frozen=True)
class ReportData:
    """One run as the report sees it; the sections only read it."""

    path: Path  # the run directory, named in the `autocompress pick` hint
    meta: dict
    baselines: dict[str, dict]  # name -> row, as baselines.json holds them (failed ones included)
    table: pd.DataFrame  # every trial; empty (columns trial, state) while the search has written none
    pareto: pd.DataFrame
    done: pd.DataFrame  # completed trials
    failed: pd.DataFrame  # neither completed nor a duplicate: failed or stopped early
    finals: list[dict] = field(default_factory=list)  # final.json of each model `autocompress finalize` wrote

    @property
    def fp32(self) -> dict:
        return self.baselines["fp32"]

    @property
    def device(self) -> dict:
        return self.meta.get("device", {})

    def speed(self, r) -> str:
        """Speed-up of a trial or baseline row over the FP32 baseline."""
        return f"{self.fp32['latency_ms'] / r['latency_ms']:.2f}x"


def load_report_data(rd: RunDir) -> ReportData:
    meta = rd.read_json(rd.meta)
    baselines = rd.read_json(rd.baselines_json)
    table = rd.read_table() if rd.trials_csv.is_file() else pd.DataFrame(columns=["trial", "state"])
    pareto = pareto_front(table) if len(table) else table
    done = table[table["state"] == "COMPLETE"] if len(table) else table
    # skipped proposals (over --target-latency-ms, or screened) were never built: not failures, counted apart
    failed = table[~table["state"].isin(["COMPLETE", "DUPLICATE", "SKIPPED"])] if len(table) else table
    return ReportData(path=rd.path, meta=meta, baselines=baselines, table=table, pareto=pareto, done=done,
                      failed=failed, finals=rd.final_docs())


def confirm_rounds(rd: RunDir) -> int:
    """Rounds of the end-of-run latency confirmation; a run directory without config.json says 0."""
    return (rd.read_json(rd.config) if rd.config.is_file() else {}).get("confirm_rounds", 0)


def completed(b: dict) -> bool:
    """Whether a baseline row was measured (a failed baseline has only its error)."""
    return b.get("state", "COMPLETE") == "COMPLETE"


def pareto_config(row: pd.Series, space: list[dict]) -> dict[str, dict]:
    """Per-layer view of one trial: kept channels per group, precision per layer."""
    groups = {s["name"]: s for s in space if s["kind"] == "group"}
    layer_prec = {}
    for s in space:
        if s["kind"] == "layer":
            v = row.get(f"quant:{s['name']}")
            layer_prec[s["name"]] = v if isinstance(v, str) else s["choices"][0]
    kept = {}
    for g, s in groups.items():
        v = row.get(f"channels:{g}")
        kept[g] = (int(v) if pd.notna(v) else s["channels"], s["channels"])
    return {"precision": layer_prec, "kept": kept}


def dominated_by_baselines(pareto: pd.DataFrame, baselines: dict) -> list[tuple[int, str]]:
    """(trial, baseline) pairs where the baseline is at least as good on validation accuracy, latency and
    size and better on one: the search then failed to beat a configuration a user could make by hand."""
    out = []
    for _, r in pareto.iterrows():
        for k, b in baselines.items():
            if not completed(b):
                continue
            ge = (b["val_accuracy"] >= r["val_accuracy"] and b["latency_ms"] <= r["latency_ms"]
                  and b["size_bytes"] <= r["size_bytes"])
            gt = (b["val_accuracy"] > r["val_accuracy"] or b["latency_ms"] < r["latency_ms"]
                  or b["size_bytes"] < r["size_bytes"])
            if ge and gt:
                out.append((int(r["trial"]), k))
    return out
