"""Where a trial's time went: the stage columns (`t_<stage>`) of the trial table and the cost outside the fine-tune."""

from __future__ import annotations

import pandas as pd

__all__ = ["own_stage_columns", "outside_finetune_seconds"]


def own_stage_columns(table: pd.DataFrame) -> list[str]:
    """The stages a trial spends outside its fine-tune (prune, evaluations, export, quantize, kernel check). The
    latency measurement is not one of them: it runs beside the next trial, which pays only `latency_held_s`."""
    return [c for c in table.columns if c.startswith("t_") and c not in ("t_finetune", "t_measure")]


def outside_finetune_seconds(table: pd.DataFrame) -> pd.Series:
    """Per trial: its own stages outside the fine-tune plus the time its latency measurement held trials still."""
    held = table["latency_held_s"].fillna(0) if "latency_held_s" in table.columns else 0.0
    return table[own_stage_columns(table)].sum(axis=1) + held
