"""Choose the most accurate Pareto model that meets the user's constraints, with the configuration that built it."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from autocompress.errors import ConfigError
from autocompress.fileio import atomic_write_text
from autocompress.results.pareto import pareto_front
from autocompress.results.rundir import RunDir

__all__ = ["ModelConfig", "PickedModel", "Pick", "choose", "pick", "with_finals"]


@dataclass(frozen=True)
class ModelConfig:
    """What built a model: per prunable group its channels before and after pruning and the ratio asked for
    (the plan a Torch-Pruning user can reuse: `pruning_ratio_dict` per group, `round_to` of the space), and the
    precision of every quantizable layer."""

    groups: dict[str, dict]  # group (its first layer's name) -> {"ratio": r, "channels": before, "kept": after}
    precisions: dict[str, str]  # layer -> fp32 / int8 / int4
    criterion: str = "l2"  # how the channels were ranked (pipeline.prune.CRITERIA)
    removed_blocks: tuple[str, ...] = ()  # residual blocks removed whole (their groups and layers are gone)

    @classmethod
    def from_row(cls, row: pd.Series | dict, channels_before: dict[str, int]) -> "ModelConfig":
        groups = {}
        for k, v in row.items():
            if k.startswith("prune:") and pd.notna(v):
                g = k.split(":", 1)[1]
                kept = row.get(f"channels:{g}")
                groups[g] = {"ratio": float(v), "channels": channels_before.get(g),
                             "kept": int(kept) if kept is not None and pd.notna(kept) else channels_before.get(g)}
        precisions = {k.split(":", 1)[1]: str(v) for k, v in row.items() if k.startswith("quant:") and pd.notna(v)}
        criterion = row.get("criterion")
        removed = tuple(k.split(":", 1)[1] for k, v in row.items() if k.startswith("depth:") and v == "drop")
        gone = [n for n in (*groups, *precisions) if any(n == b or n.startswith(b + ".") for b in removed)]
        for n in gone:
            groups.pop(n, None)
            precisions.pop(n, None)
        return cls(groups, precisions, str(criterion) if criterion is not None and pd.notna(criterion) else "l2",
                   removed)


@dataclass(frozen=True)
class PickedModel:
    trial: int | str  # a trial number, `baseline-<name>`, or `final-<name>` (autocompress finalize)
    val_accuracy: float  # %, of the ONNX file on the validation split (what the search optimized)
    test_accuracy: float  # %, of the ONNX file on the test split (reported only)
    latency_ms: float  # median on the device
    latency_p90_ms: float
    size_bytes: int
    onnx: Path
    config: ModelConfig

    def to_dict(self) -> dict:
        d = asdict(self)
        d["onnx"] = str(self.onnx)
        d["accuracy"] = self.test_accuracy  # the CLI's --json has called the test accuracy `accuracy`
        return d


@dataclass(frozen=True)
class Pick:
    chosen: PickedModel | None
    nearest: list[PickedModel]  # when nothing meets the constraints: the closest Pareto models
    baseline: PickedModel  # FP32


def with_finals(table: pd.DataFrame, run_path: Path) -> pd.DataFrame:
    """The trials and the run's finalized models (`autocompress finalize`), which `pick` may choose as well."""
    rows = [doc["row"] for doc in RunDir(Path(run_path)).final_docs()]
    return pd.concat([table, pd.DataFrame(rows)], ignore_index=True) if rows else table


def _label(row: pd.Series | dict):
    """A trial's number, or `final-<name>` for a finalized model."""
    kind = str(row.get("kind", ""))
    return kind if kind.startswith("final-") else int(row["trial"])


def _picked(row: pd.Series | dict, trial, run_path: Path, channels_before: dict[str, int]) -> PickedModel:
    return PickedModel(trial=trial, val_accuracy=float(row["val_accuracy"]), test_accuracy=float(row["test_accuracy"]),
                       latency_ms=float(row["latency_ms"]), latency_p90_ms=float(row["latency_p90_ms"]),
                       size_bytes=int(row["size_bytes"]), onnx=(run_path / str(row["onnx"])).resolve(),
                       config=ModelConfig.from_row(row, channels_before))


def _check(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ConfigError(f"{name} must be positive, but got {value}")


def choose(table: pd.DataFrame, fp32: dict, run_path: Path, channels_before: dict[str, int], *,
           max_latency_ms: float | None = None, min_accuracy: float | None = None,
           max_size_mb: float | None = None) -> Pick:
    """Among the Pareto models within every given constraint (latency <= max_latency_ms, validation accuracy >=
    min_accuracy, size <= max_size_mb), the one with the highest validation accuracy (ties: faster)."""
    _check("max_latency_ms", max_latency_ms)
    _check("max_size_mb", max_size_mb)
    base = _picked(fp32, "baseline-fp32", run_path, channels_before)
    front = pareto_front(table)
    ok = front
    if max_latency_ms is not None:
        ok = ok[ok["latency_ms"] <= max_latency_ms]
    if min_accuracy is not None:
        ok = ok[ok["val_accuracy"] >= min_accuracy]
    if max_size_mb is not None:
        ok = ok[ok["size_bytes"] <= max_size_mb * 1e6]
    if ok.empty:
        def miss(r: pd.Series) -> float:  # how far a model is from meeting every constraint, relative to its limit
            m = max(0.0, r["latency_ms"] / max_latency_ms - 1) if max_latency_ms is not None else 0.0
            if min_accuracy is not None:
                m += max(0.0, (min_accuracy - r["val_accuracy"]) / 100)
            if max_size_mb is not None:
                m += max(0.0, r["size_bytes"] / (max_size_mb * 1e6) - 1)
            return m

        near = front.assign(_miss=front.apply(miss, axis=1)).sort_values("_miss").head(3) if len(front) else front
        return Pick(None, [_picked(r, _label(r), run_path, channels_before) for _, r in near.iterrows()], base)
    r = ok.sort_values(["val_accuracy", "latency_ms"], ascending=[False, True]).iloc[0]
    return Pick(_picked(r, _label(r), run_path, channels_before), [], base)


def channels_before(meta: dict) -> dict[str, int]:
    """Each group's channel count in the FP32 model, from the space a run recorded."""
    return {g["name"]: int(g["channels"]) for g in meta.get("space", []) if g.get("kind") == "group"}


def pick(run_dir: str | Path, *, max_latency_ms: float | None = None, min_accuracy: float | None = None,
         max_size_mb: float | None = None, export: str | Path | None = None) -> Pick:
    """`choose` on a run directory; with `export`, the chosen ONNX file is copied there, and the preprocessing its
    input needs is written beside it (`preprocessing_path`)."""
    rd = RunDir.open(run_dir)
    meta = rd.read_json(rd.meta)
    res = choose(with_finals(rd.read_table(), rd.path), rd.read_json(rd.baselines_json)["fp32"], rd.path,
                 channels_before(meta), max_latency_ms=max_latency_ms,
                 min_accuracy=min_accuracy, max_size_mb=max_size_mb)
    if export is not None and res.chosen is not None:
        dst = Path(export)
        dst.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(preprocessing_path(dst), json.dumps(_deployment(meta), indent=2) + "\n")
        tmp = dst.with_name(dst.name + ".part")
        shutil.copyfile(res.chosen.onnx, tmp)
        tmp.replace(dst)
    return res


def preprocessing_path(onnx: Path) -> Path:
    """Where `pick --export` writes the input preprocessing: model.onnx -> model.preprocessing.json."""
    return onnx.with_name(onnx.stem + ".preprocessing.json")


def _deployment(meta: dict) -> dict:
    """What the exported file's input must be: its shape and the preprocessing that makes it from an image."""
    pre = meta.get("preprocessing")
    return {"input_name": "input", "input_shape": [1, *meta.get("input_shape", [])], "preprocessing": pre,
            **({} if pre else {"note": "the search was given Datasets that did their own preprocessing: apply the "
                                       "same transform as those Datasets"})}
