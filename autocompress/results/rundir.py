"""Layout of one run directory. Every file is written to a temporary name and renamed into place
(autocompress/fileio.py; its atomic writes are re-exported here)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from autocompress.errors import RunError
from autocompress.fileio import atomic_write_bytes, atomic_write_text

__all__ = ["RunDir", "atomic_write_bytes", "atomic_write_text"]


@dataclass(frozen=True)
class RunDir:
    path: Path

    # ---- layout
    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def meta(self) -> Path:
        return self.path / "meta.json"

    @property
    def journal(self) -> Path:
        return self.path / "optuna.log"

    @property
    def funnel_journal(self) -> Path:
        """The funnel's own Optuna study (engine/funnel.py)."""
        return self.path / "funnel.log"

    @property
    def funnel_book(self) -> Path:
        """Every candidate the funnel proposed, with its cheap score: one JSON line each."""
        return self.path / "funnel.jsonl"

    @property
    def trials_csv(self) -> Path:
        return self.path / "trials.csv"

    @property
    def baselines_json(self) -> Path:
        return self.path / "baselines.json"

    @property
    def pareto_json(self) -> Path:
        return self.path / "pareto.json"

    @property
    def report_html(self) -> Path:
        return self.path / "report.html"

    @property
    def report_md(self) -> Path:
        return self.path / "report.md"

    def model_path(self, name: str) -> Path:
        return self.path / "models" / f"{name}.onnx"

    def final_docs(self) -> list[dict]:
        """final.json of every model `autocompress finalize` finished (final/<name>/), by name."""
        return [json.loads(p.read_text()) for p in sorted(self.path.glob("final/*/final.json"))]

    # ---- io
    def write_json(self, path: Path, obj) -> None:
        atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")

    def read_json(self, path: Path):
        if not path.is_file():
            raise RunError(f"{self.path} has no {path.name}; is it a run directory written by `autocompress search`?")
        return json.loads(path.read_text())

    def write_table(self, rows: list[dict]) -> None:
        atomic_write_text(self.trials_csv, pd.DataFrame(rows).to_csv(index=False))

    def read_table(self) -> pd.DataFrame:
        if not self.trials_csv.is_file():
            raise RunError(f"{self.path} has no trials.csv; is it a run directory written by `autocompress search`?")
        try:
            return pd.read_csv(self.trials_csv).copy()  # consolidated: a wide table is read in many blocks
        except pd.errors.EmptyDataError:  # a search that ended before its first trial (its budget spent before)
            return pd.DataFrame(columns=["trial", "state"])

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        p = Path(path)
        if not p.is_dir():
            raise RunError(f"run directory {str(p)!r} does not exist; "
                           "pass the directory that `autocompress search` printed")
        rd = cls(p)
        for needed in (rd.meta, rd.trials_csv, rd.baselines_json):
            if not needed.is_file():
                raise RunError(f"{p} has no {needed.name}; is it a run directory written by `autocompress search`?")
        return rd
