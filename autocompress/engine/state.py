"""The state of one search on disk and in memory: its records, baselines and meta, written as they change."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field, replace
from typing import Iterator

from autocompress.errors import RunError
from autocompress.measure.cache import LatencyCache, graph_hash
from autocompress.pipeline.trial import TrialOutput
from autocompress.results.records import ArtifactFigures, LatencyFigures, TrialRecord, TrialState
from autocompress.results.rundir import RunDir, atomic_write_bytes

__all__ = ["RunState", "LatencyBook", "record_of", "run_lock"]


@dataclass
class RunState:
    """Every finished trial is on disk (trials/NNNN.json) before anyone else hears of it: a kill in between is
    repaired on resume from these files."""

    rd: RunDir
    meta: dict
    records: dict[int, TrialRecord] = field(default_factory=dict)
    baselines: dict[str, TrialRecord] = field(default_factory=dict)
    spent_before: float = 0.0  # seconds of search spent by earlier sessions of a resumed run
    t_search: float = field(default_factory=time.perf_counter)

    @classmethod
    def load_records(cls, rd: RunDir) -> dict[int, TrialRecord]:
        records = {}
        for path in sorted((rd.path / "trials").glob("*.json")):
            rec = TrialRecord.from_row(rd.read_json(path))
            records[rec.trial] = rec
        return records

    @property
    def elapsed(self) -> float:
        """Search seconds over every session of the run."""
        return self.spent_before + time.perf_counter() - self.t_search

    @property
    def study_made(self) -> bool:
        """Whether the run's Optuna study exists (its journal): its choices are then fixed, and a resumed run keeps
        the narrowing that made them."""
        return self.rd.journal.is_file()

    def count(self, state: TrialState) -> int:
        return sum(r.state is state for r in self.records.values())

    def put(self, rec: TrialRecord) -> None:
        self.rd.write_json(self.rd.path / "trials" / f"{rec.trial:04d}.json", rec.to_row())
        self.records[rec.trial] = rec

    def write_model(self, name: str, onnx_bytes: bytes) -> str:
        """The shipped file, written before its record; returns its path relative to the run directory."""
        path = self.rd.model_path(name)
        atomic_write_bytes(path, onnx_bytes)
        return str(path.relative_to(self.rd.path))

    def save(self) -> None:
        """trials.csv and meta.json as they stand."""
        self.rd.write_table([self.records[k].to_row() for k in sorted(self.records)])
        self.meta["spent_seconds"] = round(self.elapsed, 1)
        self.rd.write_json(self.rd.meta, self.meta)

    def save_baselines(self) -> None:
        self.rd.write_json(self.rd.baselines_json, {k: b.to_row() for k, b in self.baselines.items()})


def record_of(number: int, out: TrialOutput, latency: LatencyFigures, onnx: str, seconds: float, *,
              choices: dict, kind: str = "search") -> TrialRecord:
    """The record of a pipeline run whose file is at `onnx` (relative to the run directory), with its latency."""
    artifact = ArtifactFigures(
        val_accuracy=round(out.val_accuracy, 4), test_accuracy=round(out.test_accuracy, 4),
        torch_test_accuracy=round(out.torch_test_accuracy, 4), size_bytes=out.size_bytes, sha256=out.sha256,
        onnx=onnx, int8_requested=len(out.requested_int8),
        int8_on_integer_kernel=len(set(out.requested_int8) & set(out.integer_layers)),
        kernels=" ".join(f"{k}={v}" for k, v in sorted(out.op_counts.items())))
    latency = replace(latency, median_ms=round(latency.median_ms, 4), p90_ms=round(latency.p90_ms, 4),
                      p99_ms=round(latency.p99_ms, 4))
    return TrialRecord(trial=number, state=TrialState.COMPLETE, choices=choices, kind=kind, duration_s=seconds,
                       artifact=artifact, latency=latency, stage_seconds=dict(out.stage_seconds),
                       channels={g: after for g, (_, after) in out.kept.items()},
                       halfway_accuracy=None if out.halfway_accuracy is None else round(out.halfway_accuracy, 4))


@dataclass(frozen=True)
class LatencyBook:
    """Figures of graphs this device measured before with the same settings (the cross-run cache), and the
    recording of new ones. A figure spoilt by outside load is not made permanent."""

    cache: LatencyCache | None

    def cached(self, onnx_bytes: bytes) -> LatencyFigures | None:
        if self.cache is None:
            return None
        ghash = graph_hash(onnx_bytes)
        hit = self.cache.get(ghash)
        return None if hit is None else LatencyFigures.from_measurement(hit, source=f"cache:{ghash[:12]}")

    def measured(self, onnx_bytes: bytes, measurement: dict) -> LatencyFigures:
        self.store(onnx_bytes, measurement)
        return LatencyFigures.from_measurement(measurement)

    def store(self, onnx_bytes: bytes, measurement: dict) -> None:
        if self.cache is not None and not measurement.get("contended"):
            self.cache.put(graph_hash(onnx_bytes), measurement)


@contextlib.contextmanager
def run_lock(rd: RunDir) -> Iterator[None]:
    """An exclusive lock on the run directory for the life of the block: one search per run directory."""
    with open(rd.path / ".lock", "a+") as f:
        _lock(rd, f)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        yield


def refuse_if_locked(rd: RunDir) -> None:
    """Raise RunError at once when another search holds the run directory: said before Ray starts (seconds), not
    after it. (`run_lock` still decides: this is only the early answer.)"""
    if (rd.path / ".lock").is_file():
        with open(rd.path / ".lock", "a+") as f:
            _lock(rd, f)


def _lock(rd: RunDir, f) -> None:
    import fcntl

    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        raise RunError(f"run directory {str(rd.path)!r} is in use by another search ({holder}); wait for it to "
                       "finish or choose another --out") from None
