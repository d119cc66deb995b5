"""The funnel's candidates on disk (engine/funnel.py writes them, the report reads them): one JSON line each in
funnel.jsonl."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

__all__ = ["Scored", "FunnelBook"]


@dataclass(frozen=True)
class Scored:
    """One candidate of the funnel: a row of funnel.jsonl."""

    number: int  # its trial in the funnel's study
    params: dict
    key: str  # the model it builds (space.keys.model_key)
    predicted_ms: float | None
    target: int | None  # its bin in the ladder; None: over every target (not scored)
    origin: str = "sampled"  # "uniform" (the uniform ladder), "scan" (the sensitivity scan's picks) or "sampled"
    accuracy: float | None = None  # the cheap score (%), None when not scored
    agreement: float | None = None
    loss: float | None = None
    seconds: float = 0.0
    error: str = ""  # why it has no score
    # the shortlist's short fine-tune (a later line of the same candidate): validation accuracy (%) of the fake-quant
    # PyTorch model, or why it has none
    short_accuracy: float | None = None
    short_seconds: float = 0.0
    short_error: str = ""

    @property
    def scored(self) -> bool:
        return self.accuracy is not None

    def rank_key(self) -> tuple[float, float]:
        """Higher is better: the sample's cross-entropy, negated (it ranked fine-tuned accuracy at least as well as
        accuracy or agreement did in benchmarks/score_rank_demo.md, and it has no ties), then accuracy."""
        return (-(self.loss if self.loss is not None else math.inf), self.accuracy or 0.0)

    def short_key(self) -> tuple[float, float, float]:
        """Higher is better: the short fine-tune's accuracy (a candidate without one last), then the score."""
        return (self.short_accuracy if self.short_accuracy is not None else -math.inf, *self.rank_key())

    @property
    def shortened(self) -> bool:
        """Whether its short fine-tune is done (or failed): a resumed run does not run it again."""
        return self.short_accuracy is not None or bool(self.short_error)

    def to_row(self) -> dict:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict) -> Scored:
        return cls(**row)


@dataclass
class FunnelBook:
    """funnel.jsonl: one line per candidate, appended and synced before the study hears of it; a candidate's short
    fine-tune appends a later line of it, which wins. A line cut short by a kill is ignored."""

    path: os.PathLike
    rows: dict[int, Scored] = field(default_factory=dict)

    @classmethod
    def open(cls, path: os.PathLike) -> FunnelBook:
        book = cls(path)
        if os.path.isfile(path):
            with open(path) as f:
                for line in f:
                    try:
                        s = Scored.from_row(json.loads(line))
                    except (ValueError, TypeError):
                        continue
                    book.rows[s.number] = s
        return book

    def add(self, rows: list[Scored]) -> None:
        with open(self.path, "a") as f:
            for s in rows:
                f.write(json.dumps(s.to_row(), sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rows.update({s.number: s for s in rows})

    def by_key(self) -> dict[str, Scored]:
        """The first scored (or failed) candidate of each model."""
        out: dict[str, Scored] = {}
        for n in sorted(self.rows):
            s = self.rows[n]
            if s.scored or s.error.startswith("failed"):
                out.setdefault(s.key, s)
        return out

    def built(self) -> int:
        """Candidates built and scored (or failed while being built): what counts toward the funnel's size."""
        return len(self.by_key())
