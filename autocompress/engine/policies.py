"""The policies the trial loop is given, in the style of Optuna's samplers and pruners: the loop (engine/scheduler.py)
only calls them, and a new policy is a new class here, never a branch in the loop.

- A `ProposalGate` may skip a proposal unbuilt (`verdict`): `LatencyTargetGate` (--target-latency-ms) and
  `ScreenGate` (--screen).
- A `FidelityPolicy` sets the halfway bar a trial's validation accuracy must clear to finish its fine-tune (`bar`):
  `EarlyStop` (--early-stop), `MultiFidelity` (--multi-fidelity) and `HigherBar` (both: the higher bar holds).
- `WarmStart` gives the configurations the sensitivity scan and the latency model propose to run first.

`policies_for` gives the gates and the fidelity policy a search's config asks for.

Policies judge a proposal from what the study has been told of (`Heard`), never from what happens to have
finished: a seed then skips, and stops, the same trials whatever the timing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from autocompress.config import SearchConfig
from autocompress.latency_model.allocate import Allocated, allocate_guarded
from autocompress.latency_model.screen import SCREEN_SLACK, dominator
from autocompress.pipeline.trial import StoppedEarly
from autocompress.results.records import TrialRecord, TrialState
from autocompress.space import SearchSpace
from autocompress.space.sensitivity import warm_configs

__all__ = ["Candidate", "Heard", "ProposalGate", "LatencyTargetGate", "ScreenGate", "TARGET_SLACK", "Rung", "rung",
           "Bar", "FidelityPolicy", "EarlyStop", "MultiFidelity", "HigherBar", "WarmStart",
           "policies_for"]

TARGET_SLACK = 0.15  # a proposal predicted up to this far over --target-latency-ms is still built: the model's error


@dataclass(frozen=True)
class Candidate:
    """A proposal as the policies see it, before anything is built."""

    trial: int
    params: dict
    key: str  # the identity of the model it builds (`space.keys.model_key`)
    predicted: float | None = None  # the latency model's figure (ms), or None without one


@dataclass(frozen=True)
class Heard:
    """What the study has been told of when a proposal is made."""

    records: tuple[TrialRecord, ...] = ()  # the trials it has heard of (earlier sessions' included)
    measured: tuple[tuple[str, int | str, float], ...] = ()  # (model key, trial or baseline name, ms) measured


# ---------------------------------------------------------------------------------------------- proposal gates
class ProposalGate:
    """Decides whether a proposal is built. The base builds everything."""

    def verdict(self, c: Candidate, heard: Heard) -> str | None:
        """Why `c` is skipped unbuilt (the record's error), or None: it is built."""
        return None


@dataclass(frozen=True)
class LatencyTargetGate(ProposalGate):
    """--target-latency-ms: a proposal predicted over the target (beyond the slack for the model's error) is not
    built. The sampler hears of it as pruned and learns where the target lies."""

    target_ms: float
    slack: float = TARGET_SLACK

    def verdict(self, c: Candidate, heard: Heard) -> str | None:
        if c.predicted is None or c.predicted <= self.target_ms * (1 + self.slack):
            return None
        return f"skipped: predicted {c.predicted:.3f} ms, over the target {self.target_ms:g} ms"


@dataclass(frozen=True)
class ScreenGate(ProposalGate):
    """--screen: a proposal predicted slower than a measured model that keeps at least its channels, each layer at
    least as precise, cannot reach the front (`latency_model.screen`). Only the baselines and the trials the study
    has heard of count."""

    slack: float = SCREEN_SLACK

    def verdict(self, c: Candidate, heard: Heard) -> str | None:
        dom = dominator(c.key, c.predicted, heard.measured, self.slack)
        if dom is None:
            return None
        return (f"skipped: predicted {c.predicted:.3f} ms, slower than {dom.text()} ({dom.latency_ms:.3f} ms "
                "measured), which keeps at least its channels, each layer at least as precise")


# ---------------------------------------------------------------------------------------------- fidelity
@dataclass(frozen=True)
class Rung:
    """The bar a trial's halfway validation accuracy must clear to finish its fine-tune, and the finished trial
    that set it."""

    threshold: float  # %: a halfway accuracy below this stops the trial
    trial: int  # the finished trial that set it
    latency_ms: float  # its measured latency: at most the trial's predicted one
    accuracy: float  # its own halfway accuracy (the threshold plus the margin)


def rung(records: Iterable[TrialRecord], predicted: float | None, margin: float) -> Rung | None:
    """The halfway bar of a trial predicted to take `predicted` ms: the best halfway accuracy, less `margin` points,
    of the finished, measured trials at least as fast as that (repeats and reused baselines left out: they did not
    fine-tune). None without a prediction or such a trial: the trial runs in full.

    Why only those: a trial can only leave the accuracy-latency front if something at least as fast is more
    accurate, so a more accurate but slower trial says nothing against it. Why halfway: every trial fine-tunes on
    the same schedule, so accuracies at the same point of it compare fairly (not with the end of another's)."""
    if predicted is None:
        return None
    rivals = [r for r in records
              if r.state is TrialState.COMPLETE and r.measured and r.duplicate_of is None and r.reused is None
              and r.halfway_accuracy is not None and r.latency.median_ms <= predicted]
    if not rivals:
        return None
    best = max(rivals, key=lambda r: (r.halfway_accuracy, -r.trial))  # a tie: the earlier trial
    return Rung(best.halfway_accuracy - margin, best.trial, best.latency.median_ms, best.halfway_accuracy)


@dataclass(frozen=True)
class Bar:
    """A trial's halfway bar: below `threshold` (%) it stops. `rung` names the finished trial that set it; without
    one, the bar is FP32's validation accuracy less `points`."""

    threshold: float
    points: float  # the margin below FP32 (--early-stop) or below the rung's trial (--multi-fidelity)
    rung: Rung | None = None
    predicted: float | None = None  # the trial's predicted latency (ms), which the rung's trial measured within

    def stopped_text(self, out: StoppedEarly) -> str:
        """The error of a trial this bar stopped."""
        if self.rung is None:
            return (f"stopped early: {out.val_accuracy:.2f}% validation accuracy (PyTorch) after {out.epochs_done} "
                    f"fine-tune epoch(s), below {out.threshold:.2f}% (FP32 - {self.points:g} points)")
        r = self.rung
        return (f"stopped halfway: val {out.val_accuracy:.2f}% after {out.epochs_done} of {out.epochs_planned:g} "
                f"fine-tune epochs; trial {r.trial}, measured {r.latency_ms:.3f} ms <= predicted "
                f"{self.predicted:.3f} ms, had {r.accuracy:.2f}% then (more than {self.points:g} points better)")


class FidelityPolicy:
    """Sets each proposal's halfway bar when it is proposed. The base sets none: every trial runs in full."""

    def bar(self, c: Candidate, heard: Heard) -> Bar | None:
        return None


@dataclass(frozen=True)
class EarlyStop(FidelityPolicy):
    """--early-stop POINTS: one bar for every trial, FP32's validation accuracy less POINTS."""

    below: float  # FP32's validation accuracy less `points`
    points: float

    def bar(self, c: Candidate, heard: Heard) -> Bar | None:
        return Bar(self.below, self.points)


@dataclass(frozen=True)
class MultiFidelity(FidelityPolicy):
    """--multi-fidelity POINTS: each proposal is held to its `rung`, from the trials the study has heard of."""

    margin: float

    def bar(self, c: Candidate, heard: Heard) -> Bar | None:
        r = rung(heard.records, c.predicted, self.margin)
        return None if r is None else Bar(r.threshold, self.margin, r, c.predicted)


@dataclass(frozen=True)
class HigherBar(FidelityPolicy):
    """The highest of its policies' bars (on a tie, the first policy's): --early-stop and --multi-fidelity both."""

    policies: tuple[FidelityPolicy, ...] = ()

    def bar(self, c: Candidate, heard: Heard) -> Bar | None:
        bars = [b for b in (p.bar(c, heard) for p in self.policies) if b is not None]
        return max(bars, key=lambda b: b.threshold, default=None)


# ---------------------------------------------------------------------------------------------- warm start
@dataclass(frozen=True)
class WarmStart:
    """The configurations the sensitivity scan proposes to run first: those allocated with the latency model
    (`latency_model.allocate`; none without a `predictor`), then the scan's own picks, each once."""

    predictor: Any = None  # latency_model.predict.Predictor of the space given, or None
    log: Callable[[str], None] = print

    def allocate(self, space: SearchSpace, sens: dict) -> list[Allocated]:
        """The allocated configurations (none when allocating fails: the scan's picks go on without them)."""
        return allocate_guarded(space, sens, self.predictor, self.log)

    def configs(self, space: SearchSpace, sens: dict, allocated: list[Allocated]) -> list[dict]:
        """Optuna params: the `allocated` ones first, then the scan's (`warm_configs`) not among them."""
        picks = [a.params for a in allocated]
        return picks + [w for w in warm_configs(space, sens) if w not in picks]


def policies_for(cfg: SearchConfig, *, fp32_val: float) -> tuple[tuple[ProposalGate, ...], FidelityPolicy]:
    """The proposal gates (in the order they are asked) and the fidelity policy `cfg` asks for; `fp32_val` is the
    FP32 baseline's validation accuracy (%), which --early-stop's bar is set from."""
    gates: list[ProposalGate] = []
    if cfg.target_latency_ms is not None:
        gates.append(LatencyTargetGate(cfg.target_latency_ms))
    if cfg.screen and cfg.sampler != "grid":  # the grid is the uniform reference: every configuration is built
        gates.append(ScreenGate())
    bars: list[FidelityPolicy] = []  # the rung first: on a tie its bar holds, and its message names the trial
    if cfg.multi_fidelity_points > 0:
        bars.append(MultiFidelity(cfg.multi_fidelity_points))
    if cfg.early_stop_points > 0:
        bars.append(EarlyStop(fp32_val - cfg.early_stop_points, cfg.early_stop_points))
    return tuple(gates), HigherBar(tuple(bars))
