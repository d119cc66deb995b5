"""Typed trial records: one row of the trial table, built in one place and written as the same flat columns.

A record is immutable: a repeat of a model, a reused baseline or a confirmed latency is a new record made with
`dataclasses.replace`, never a row edited in place. `to_row` / `from_row` are the only code that knows the
column names of trials.csv, trials/NNNN.json and baselines.json.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["TrialState", "LatencyFigures", "ArtifactFigures", "TrialRecord", "choice_columns", "SlowChoice",
           "Allocated"]


class TrialState(str, enum.Enum):
    COMPLETE = "COMPLETE"  # measured; counts in the budget
    FAIL = "FAIL"  # the pipeline or its measurement raised; counts in the budget
    STOPPED = "STOPPED"  # early-stopped fine-tune (or a repeat of such a model)
    DUPLICATE = "DUPLICATE"  # a repeat of a measured model: its figures at no cost, not counted in the budget
    INTERRUPTED = "INTERRUPTED"  # running when the search was killed; its configuration runs again on resume
    SKIPPED = "SKIPPED"  # predicted over --target-latency-ms: never built, not counted in the budget

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class LatencyFigures:
    """A latency figure of one ONNX file on the device, and what taking it cost the search."""

    median_ms: float
    p90_ms: float
    p99_ms: float
    reps: int
    source: str = "measured"  # `measured` in this run, or `cache:<graph hash>` (measured earlier on this device)
    paused_trials: int = 0
    other_load_cores: float | None = None
    contended: bool = False
    held_s: float = 0.0  # seconds the measurement held trials still (0 for a cached figure)
    probe_vs_best: float | None = None
    burst_wait_s: float = 0.0
    search_ms: float | None = None  # after an end-of-run confirmation: the figure the search used
    confirm_rounds_ms: str = ""  # the confirmation's rounds, space-separated

    @classmethod
    def from_measurement(cls, m: dict, source: str = "measured") -> "LatencyFigures":
        """From the device's result dict (`LatencyResult.as_dict()`); a cached figure cost this trial nothing."""
        measured = source == "measured"
        return cls(median_ms=float(m["median_ms"]), p90_ms=float(m["p90_ms"]), p99_ms=float(m["p99_ms"]),
                   reps=int(m["reps"]), source=source, paused_trials=int(m.get("paused_trials", 0) or 0),
                   other_load_cores=m.get("other_load_cores"), contended=bool(m.get("contended", False)),
                   held_s=float(m.get("held_s", 0.0) or 0.0) if measured else 0.0,
                   probe_vs_best=m.get("probe_vs_best"),
                   burst_wait_s=float(m.get("burst_wait_s", 0.0) or 0.0) if measured else 0.0)

    def confirmed(self, summary: dict, rounds_ms: list[float]) -> "LatencyFigures":
        """The same figure re-measured at the end of the run; the search-time cost fields stay."""
        return replace(self, median_ms=round(summary["median_ms"], 4), p90_ms=round(summary["p90_ms"], 4),
                       p99_ms=round(summary["p99_ms"], 4), reps=int(summary["reps"]),
                       other_load_cores=summary.get("other_load_cores"), contended=bool(summary.get("contended")),
                       probe_vs_best=summary.get("probe_vs_best"),
                       search_ms=self.search_ms if self.search_ms is not None else self.median_ms,
                       confirm_rounds_ms=" ".join(f"{ms:.4f}" for ms in rounds_ms))


@dataclass(frozen=True)
class ArtifactFigures:
    """What the pipeline measured on the exported, quantized ONNX file."""

    val_accuracy: float
    test_accuracy: float
    torch_test_accuracy: float  # the PyTorch counterpart on test: the parity check
    size_bytes: int
    sha256: str
    onnx: str  # path relative to the run directory
    int8_requested: int
    int8_on_integer_kernel: int
    kernels: str  # `op=count` pairs of the optimized graph


# the row columns of each part, in table order
_LATENCY_COLUMNS = (("median_ms", "latency_ms"), ("p90_ms", "latency_p90_ms"), ("p99_ms", "latency_p99_ms"),
                    ("reps", "latency_reps"), ("source", "latency_source"),
                    ("paused_trials", "latency_paused_trials"), ("other_load_cores", "latency_other_load_cores"),
                    ("contended", "latency_contended"), ("held_s", "latency_held_s"),
                    ("probe_vs_best", "latency_probe_vs_best"), ("burst_wait_s", "latency_burst_wait_s"))
_CONFIRM_COLUMNS = (("search_ms", "search_latency_ms"), ("confirm_rounds_ms", "latency_confirm_ms"))
_ARTIFACT_BEFORE_LATENCY = ("val_accuracy", "test_accuracy")
_ARTIFACT_AFTER_LATENCY = ("size_bytes", "torch_test_accuracy", "sha256", "onnx", "int8_requested",
                           "int8_on_integer_kernel", "kernels")


def choice_columns(row: dict) -> dict:
    """The configuration columns of a row: `prune:<group>` ratios, `quant:<layer>` precisions, `depth:<block>` (keep
    or drop) when the space offers removing blocks and, when it offers a choice of pruning criteria, `criterion`."""
    return {k: v for k, v in row.items() if k.startswith(("prune:", "quant:", "depth:")) or k == "criterion"}


@dataclass(frozen=True)
class TrialRecord:
    trial: int  # -1 for a baseline
    state: TrialState
    # `prune:<group>` -> ratio, `quant:<layer>` -> precision (every one, fixed ones too), `depth:<block>` -> keep/drop
    choices: dict[str, Any]
    kind: str = "search"  # or `baseline-<name>`
    duration_s: float = 0.0
    error: str = ""
    artifact: ArtifactFigures | None = None
    latency: LatencyFigures | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)  # kept channels per group
    duplicate_of: int | None = None
    reused: str | None = None  # `baseline-<name>`: this trial's model is that baseline's
    model_key: str | None = None  # baselines: the identity of the model they built
    predicted_ms: float | None = None  # the latency model's figure, made before the trial trained
    # validation accuracy (%, PyTorch) halfway through the fine-tune, when checked (--early-stop, --multi-fidelity)
    halfway_accuracy: float | None = None

    @property
    def measured(self) -> bool:
        return self.artifact is not None and self.latency is not None

    @property
    def objectives(self) -> tuple[float, float, float]:
        """(val accuracy, latency ms, size bytes): what the study optimizes."""
        assert self.artifact is not None and self.latency is not None
        return self.artifact.val_accuracy, self.latency.median_ms, float(self.artifact.size_bytes)

    def repeat_of(self, trial: int, state: TrialState, error: str = "") -> "TrialRecord":
        """This model's outcome for a later proposal of it (trial `trial`), at no cost."""
        return replace(self, trial=trial, state=state, duration_s=0.0, duplicate_of=self.trial, error=error,
                       stage_seconds={k: 0.0 for k in self.stage_seconds})

    def with_latency(self, latency: LatencyFigures) -> "TrialRecord":
        return replace(self, latency=latency)

    def to_row(self) -> dict:
        row: dict[str, Any] = {"trial": self.trial, "kind": self.kind, "state": self.state.value,
                               "duration_s": round(self.duration_s, 2)}
        if self.artifact is not None and self.latency is not None:
            row.update({k: getattr(self.artifact, k) for k in _ARTIFACT_BEFORE_LATENCY})
            row.update({col: getattr(self.latency, f) for f, col in _LATENCY_COLUMNS})
            row.update({k: getattr(self.artifact, k) for k in _ARTIFACT_AFTER_LATENCY})
            row.update({f"t_{k}": v for k, v in self.stage_seconds.items()})
            row.update({f"channels:{g}": n for g, n in self.channels.items()})
        elif self.stage_seconds:
            row.update({f"t_{k}": v for k, v in self.stage_seconds.items()})
        row["error"] = self.error
        row.update(self.choices)
        if self.latency is not None and self.latency.search_ms is not None:
            row.update({col: getattr(self.latency, f) for f, col in _CONFIRM_COLUMNS})
        if self.predicted_ms is not None:
            row["latency_predicted_ms"] = self.predicted_ms
        if self.halfway_accuracy is not None:
            row["halfway_accuracy"] = self.halfway_accuracy
        for key in ("duplicate_of", "reused", "model_key"):
            if getattr(self, key) is not None:
                row[key] = getattr(self, key)
        return row

    @classmethod
    def from_row(cls, row: dict) -> "TrialRecord":
        artifact = latency = None
        if row.get("latency_ms") is not None and row.get("val_accuracy") is not None:
            artifact = ArtifactFigures(**{k: row[k] for k in (*_ARTIFACT_BEFORE_LATENCY, *_ARTIFACT_AFTER_LATENCY)})
            lat = {f: row[col] for f, col in (*_LATENCY_COLUMNS, *_CONFIRM_COLUMNS) if col in row}
            latency = LatencyFigures(**lat)
        return cls(
            trial=int(row["trial"]), state=TrialState(row["state"]), choices=choice_columns(row),
            kind=row.get("kind", "search"), duration_s=float(row.get("duration_s", 0.0)), error=row.get("error", ""),
            artifact=artifact, latency=latency,
            stage_seconds={k[2:]: v for k, v in row.items() if k.startswith("t_")},
            channels={k.split(":", 1)[1]: v for k, v in row.items() if k.startswith("channels:")},
            duplicate_of=row.get("duplicate_of"), reused=row.get("reused"), model_key=row.get("model_key"),
            predicted_ms=row.get("latency_predicted_ms"), halfway_accuracy=row.get("halfway_accuracy"),
        )


@dataclass(frozen=True)
class SlowChoice:
    """A group's channel count that a larger one of the same group beats on this device: fewer channels (so no
    more accurate) and no faster, in every context tried; the search does not offer it."""

    group: str
    ratio: float
    kept: int
    instead_ratio: float  # the larger channel count that is at least as fast
    instead_kept: int
    ms: float  # the group's layers at `kept`, summed over the contexts (table figures)
    instead_ms: float

    def text(self) -> str:
        return (f"{self.group}: {self.kept} channels ({self.ms:.4f} ms in the table) are no faster than "
                f"{self.instead_kept} ({self.instead_ms:.4f} ms)")


@dataclass(frozen=True)
class Allocated:
    """A configuration of the allocation and why it was proposed."""

    params: dict
    predicted_ms: float
    like_ratio: float  # the uniform int8 configuration (prune ratio) it is predicted at least as fast as
    like_ms: float  # that uniform configuration's predicted latency

    def text(self) -> str:
        return (f"as fast as uniform {self.like_ratio:g}-pruned int8 ({self.predicted_ms:.3f} ms predicted "
                f"vs {self.like_ms:.3f} ms)")
