"""What the report says: the run directory's files read once into one record, and the views of it that both the
HTML and the Markdown report share."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from autocompress.config import BASELINES
from autocompress.results.funnel import FunnelBook, Scored
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
    funnel: FunnelData | None = None  # None: a run from before the funnel (its meta.json has no `funnel`)

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
                      failed=failed, finals=rd.final_docs(), funnel=load_funnel(rd, meta, table, pareto))


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


# ---- the funnel (engine/funnel.py): candidates scored cheaply before the trials, the best of each target promoted


class TrialLookup:
    """The first trial that ran a configuration. A trial's columns hold every group and layer (fixed ones too), a
    configuration (the funnel's Optuna params, an allocation's) only the choices the space offers: they are matched
    on its keys. One index per key set, so a thousand candidates cost one pass over the table."""

    def __init__(self, table: pd.DataFrame):
        # the first trial that ran it wins: a later one is a repeat, and a skipped (never built) or interrupted one
        # (run again on resume) fine-tuned nothing, so they come last
        unran = table["state"].isin(["SKIPPED", "INTERRUPTED"]) if len(table) else None
        self._table = (table.assign(_unran=unran).sort_values(["_unran", "trial"], kind="stable").drop(columns="_unran")
                       if len(table) else table)
        self._index: dict[tuple[str, ...], dict[tuple, int]] = {}

    def row_of(self, params: dict) -> pd.Series | None:
        if not params:  # nothing to match on: every trial would
            return None
        keys = tuple(sorted(params))
        if keys not in self._index:
            self._index[keys] = self._build(keys)
        pos = self._index[keys].get(_config_values(params[k] for k in keys))
        return None if pos is None else self._table.iloc[pos]

    def _build(self, keys: tuple[str, ...]) -> dict[tuple, int]:
        if not len(self._table) or any(k not in self._table.columns for k in keys):
            return {}
        index: dict[tuple, int] = {}
        for pos, values in enumerate(self._table[list(keys)].to_numpy(dtype=object)):
            index.setdefault(_config_values(values), pos)
        return index


def _config_values(values) -> tuple:
    """Hashable and comparable across JSON and CSV: a ratio read back from trials.csv may differ in its last bits,
    or be an int where funnel.jsonl has a float."""
    return tuple(round(float(v), 6) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
                 for v in values)


@dataclass(frozen=True)
class TrialOutcome:
    """What the trial that fine-tuned a configuration measured (accuracy and latency are None unless it
    completed)."""

    trial: int
    state: str
    val_accuracy: float | None
    latency_ms: float | None
    on_front: bool

    @classmethod
    def of(cls, row: pd.Series, front: set[int]) -> TrialOutcome:
        return cls(int(row["trial"]), str(row["state"]), _number(row.get("val_accuracy")),
                   _number(row.get("latency_ms")), int(row["trial"]) in front)


def _number(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


@dataclass(frozen=True)
class Rank:
    """A scored model's place within its latency target by the score (1 = best), among the distinct models scored
    there: the order the funnel promoted them in."""

    rank: int
    of: int


@dataclass(frozen=True)
class PromotedCandidate:
    """A candidate the funnel promoted, and what became of it in the trials."""

    candidate: Scored
    rank: Rank | None
    trial: TrialOutcome | None  # None: no trial ran it (the budget ended first)


@dataclass(frozen=True)
class FunnelData:
    """meta.json's `funnel` and funnel.jsonl, as the report shows them."""

    status: str  # "done"; "running": it had not promoted when the report was built; "off"; "failed"
    reason: str = ""  # why it was off or failed
    targets_ms: tuple[float, ...] = ()  # the ladder, slowest first
    asked: int = 0  # candidates it was to score
    seconds: float | None = None
    settings: dict = field(default_factory=dict)
    models: tuple[Scored, ...] = ()  # the first row of each distinct model scored or failed (FunnelBook.by_key)
    over_targets: int = 0  # proposals predicted over the slowest target: never built
    repeats: int = 0  # proposals of a model already scored (or failed): they took its result
    promoted: tuple[PromotedCandidate, ...] = ()
    ranks: dict[str, Rank] = field(default_factory=dict)  # by model key
    trials: dict[int, TrialOutcome] = field(default_factory=dict)  # candidate number -> the trial that ran it

    @property
    def scored(self) -> tuple[Scored, ...]:
        return tuple(s for s in self.models if s.scored)

    @property
    def failed(self) -> int:
        return sum(s.error.startswith("failed") for s in self.models)

    shortened: int = 0  # candidates given a short fine-tune (its accuracy chose the promoted ones)

    def target_ms(self, s: Scored) -> float | None:
        return self.targets_ms[s.target] if s.target is not None and s.target < len(self.targets_ms) else None


def load_funnel(rd: RunDir, meta: dict, table: pd.DataFrame, pareto: pd.DataFrame) -> FunnelData | None:
    """None for a run from before the funnel; else what it did, each candidate's trial matched by its params."""
    fm = meta.get("funnel")
    if not isinstance(fm, dict):
        return None
    if "off" in fm:
        return FunnelData("off", reason=str(fm["off"]))
    # a failed funnel may have left a ladder, a book, even a promotion: the trials ignored them
    if fm.get("error"):
        return FunnelData("failed", reason=fm["error"])
    book = FunnelBook.open(rd.funnel_book)
    models = tuple(book.by_key().values())
    over = sum(s.target is None for s in book.rows.values())
    front = set(pareto["trial"].astype(int)) if len(pareto) else set()
    lookup = TrialLookup(table)
    promoted_rows = [book.rows.get(p["candidate"]) or _scored_from_meta(p) for p in fm.get("promoted", [])]
    trials = {s.number: TrialOutcome.of(row, front)
              for s in (*models, *promoted_rows) if (row := lookup.row_of(s.params)) is not None}
    ranks = _ranks(models)
    promoted = tuple(PromotedCandidate(s, ranks.get(s.key), trials.get(s.number)) for s in promoted_rows)
    return FunnelData("done" if fm.get("done") else "running", targets_ms=tuple(fm.get("targets_ms", ())),
                      asked=int(fm.get("candidates", 0)), seconds=fm.get("seconds"),
                      settings=dict(fm.get("settings") or {}), models=models, over_targets=over,
                      repeats=len(book.rows) - len(models) - over, promoted=promoted, ranks=ranks, trials=trials,
                      shortened=sum(s.short_accuracy is not None for s in book.rows.values()))


def _scored_from_meta(p: dict) -> Scored:
    """A promoted candidate whose line funnel.jsonl no longer holds: meta.json's figures, no params (so no trial)."""
    return Scored(number=int(p["candidate"]), params={}, key=f"candidate {p['candidate']}",
                  predicted_ms=p.get("predicted_ms"), target=p.get("target"), origin=p.get("origin", "sampled"),
                  accuracy=p.get("accuracy"), loss=p.get("loss"))


def _ranks(models: tuple[Scored, ...]) -> dict[str, Rank]:
    """Each scored model's rank within its target by Scored.rank_key (the score's loss, lower first): ties share one."""
    by_target: dict[int, list[Scored]] = {}
    for s in models:
        if s.scored and s.target is not None:
            by_target.setdefault(s.target, []).append(s)
    out: dict[str, Rank] = {}
    for group in by_target.values():
        ascending = sorted(s.rank_key() for s in group)  # rank_key: higher is better
        for s in group:
            out[s.key] = Rank(1 + len(ascending) - bisect.bisect_right(ascending, s.rank_key()), len(group))
    return out


ORIGIN_LABELS = {"uniform": "uniform ladder", "scan": "scan pick", "sampled": "sampled"}
PROMOTED_HEADINGS = ("candidate", "origin", "target ms", "predicted ms", "score %", "loss", "rank in target",
                     "short fine-tune %", "trial", "trial val %", "trial latency ms", "final front")


def funnel_summary(f: FunnelData) -> str:
    """The funnel in one line of plain text (both reports escape or quote it themselves)."""
    if f.status == "off":  # the engine's reasons read "off: ..." / "off (...)"
        return f"The funnel was {f.reason}." if f.reason.startswith("off") else f"The funnel did not run: {f.reason}."
    if f.status == "failed":
        return f"The funnel failed ({f.reason}); the trials started from the warm start instead."
    also = f", {f.repeats} repeat{'s' if f.repeats != 1 else ''} of a model already scored" if f.repeats else ""
    counts = f"{f.failed} failed, {f.over_targets} predicted over the slowest target{also}"
    if f.status == "running":
        return (f"{len(f.scored)} of {f.asked} candidates scored so far ({counts}); the funnel had not finished, so "
                "none was promoted yet.")
    took = f" in {f.seconds:.1f} s" if f.seconds is not None else ""
    short = f"{f.shortened} short fine-tunes → " if f.shortened else ""
    return (f"{len(f.scored)} candidates scored{took} ({counts}) → {short}{len(f.promoted)} promoted, fine-tuned "
            "first.")


def promoted_cells(f: FunnelData, p: PromotedCandidate) -> tuple[str, ...]:
    """One promoted candidate as plain-text cells under PROMOTED_HEADINGS: its funnel figures, then its trial's."""
    s, t = p.candidate, p.trial

    def num(x: float | None, nd: int) -> str:
        return "" if x is None else f"{x:.{nd}f}"

    if t is None:
        trial = "not run"
    else:
        trial = str(t.trial) if t.state == "COMPLETE" else f"{t.trial} ({t.state.lower()})"
    return (str(s.number), ORIGIN_LABELS.get(s.origin, s.origin), num(f.target_ms(s), 3), num(s.predicted_ms, 3),
            num(s.accuracy, 2), num(s.loss, 4), f"{p.rank.rank} of {p.rank.of}" if p.rank else "",
            num(s.short_accuracy, 2), trial,
            num(t.val_accuracy if t else None, 2), num(t.latency_ms if t else None, 3),
            "yes" if t is not None and t.on_front else "")
