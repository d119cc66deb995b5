"""The configuration of a whole run: what flags and config files resolve to, validated in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autocompress.errors import ConfigError, location

__all__ = ["Baseline", "BASELINES", "BASELINE_NAMES", "DEFAULT_BUDGET_TRIALS", "DEFAULT_MAX_IMAGES", "Budget",
           "parse_budget", "TrainConfig", "LatencyConfig", "FunnelConfig", "SearchConfig", "config_error",
           "load_config_file"]

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Budget(_Strict):
    """Either a number of trials or a wall-clock limit in seconds (new trials start only before it)."""

    trials: int | None = Field(default=None, ge=1)
    seconds: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one(self) -> "Budget":
        if (self.trials is None) == (self.seconds is None):
            raise ValueError("a budget is either trials or seconds")
        return self

    def __str__(self) -> str:
        if self.trials is not None:
            return f"{self.trials} trials"
        s = int(self.seconds or 0)
        return (f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600
                else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"))


def parse_budget(text: str | int) -> Budget:
    """`40` -> 40 trials; `90s`, `10m`, `1h`, `1h30m` -> a wall-clock limit."""
    s = str(text).strip().lower()
    if s.isascii() and s.isdigit():
        if len(s) > 9:
            raise ConfigError(f"--budget {s[:20]}{'...' if len(s) > 20 else ''} trials is more than a search can run; "
                              "give at most 999999999 trials or a duration")
        n = int(s)
        if n < 1:
            raise ConfigError(f"--budget must be at least 1 trial, but got {text!r}; e.g. --budget 40 or --budget 30m")
        return Budget(trials=n)
    m = _DURATION.match(s) if s.isascii() else None
    if not s or not m or not any(m.groups()):
        raise ConfigError(f"--budget {text!r} is neither a trial count nor a duration; "
                          "use e.g. --budget 40, --budget 10m or --budget 1h30m")
    h, mi, se = (float(g) if g else 0.0 for g in m.groups())
    seconds = h * 3600 + mi * 60 + se
    if seconds <= 0:
        raise ConfigError(f"--budget {text!r} is zero; give a positive duration such as 10m")
    if not seconds < 366 * 24 * 3600:
        raise ConfigError(f"--budget {s[:20]}{'...' if len(s) > 20 else ''} is longer than a year; "
                          "give a duration such as 10m, 8h or 48h")
    return Budget(seconds=seconds)


class TrainConfig(_Strict):
    epochs: float = Field(ge=0, le=1000)
    lr: float = Field(gt=0, le=10)
    batch_size: int = Field(default=64, ge=1, le=4096)
    kd_alpha: float = Field(default=0.7, ge=0, le=1)
    temperature: float = Field(default=4.0, gt=0, le=100)


class LatencyConfig(_Strict):
    batch: int = Field(default=1, ge=1, le=1024)
    threads: int = Field(default=1, ge=1, le=256)
    warmup: int = Field(default=20, ge=0)
    min_reps: int = Field(default=50, ge=5)
    max_reps: int = Field(default=1000, ge=5)
    ci_target: float = Field(default=0.02, gt=0, lt=1)
    sessions: int = Field(default=3, ge=1, le=20)
    max_sessions: int = Field(default=9, ge=1, le=50)  # extra sessions while the session medians disagree
    max_seconds: float = Field(default=20.0, gt=0)
    max_contended: int = Field(default=6, ge=0, le=50)  # sessions taken again because other load shared the machine
    burst_wait_s: float = Field(default=30.0, ge=0, le=600)  # ... or for this long, if that is longer (a long burst)
    contention_cores: float | None = Field(default=None, gt=0)  # other load that spoils a session (None: automatic)
    min_session_seconds: float = Field(default=0.1, ge=0, le=60)
    session_gap_s: float = Field(default=0.3, ge=0, le=60)  # mean pause between sessions, trials running meanwhile
    probe: bool = True  # a reference workload timed beside each session: a session in a burst is taken again
    probe_factor: float = Field(default=1.25, gt=1, le=10)


class FunnelConfig(_Strict):
    """The funnel before the trials (engine/funnel.py): many candidates scored cheaply (pruned, fake-quantized,
    BatchNorm recalibrated, no training) over a ladder of predicted-latency targets; the best of each target are
    fine-tuned to the end first."""

    # candidates scored (0: no funnel); None: 20 per trial of a trial budget (at most 400), or up to 1000 within
    # half of `time_share` of a time budget
    candidates: int | None = Field(default=None, ge=0, le=100_000)
    targets: int = Field(default=4, ge=1, le=20)  # latency targets, from int8 PTQ's predicted latency to the fastest
    # candidates per target fine-tuned to the end; None: 2, or fewer so that they take at most half a trial budget
    promote: int | None = Field(default=None, ge=1, le=100)
    # candidates per target given a short fine-tune, whose accuracy then chooses the promoted ones (successive
    # halving); None: two more than are promoted (fewer in a small trial budget: n_shortlisted); at most the
    # promoted number: no short fine-tunes
    shortlist: int | None = Field(default=None, ge=0, le=100)
    # epochs of the short fine-tune; None: a third of the fine-tune's
    short_epochs: float | None = Field(default=None, gt=0, le=1000)
    # what proposes the candidates: evolution within each latency target (engine/evolution.py), or an Optuna
    # sampler on (score, predicted latency)
    sampler: Literal["evolution", "nsga2", "tpe", "random"] = "evolution"
    bn_images: int = Field(default=256, ge=0)  # training images whose passes re-estimate BatchNorm
    val_images: int = Field(default=512, ge=1)  # validation images every candidate is scored on
    # of a time budget, at most: scoring stops at half of it, short fine-tunes start only within it
    time_share: float = Field(default=0.3, gt=0, le=1)

    def n_candidates(self, trials: int | None) -> int:
        if self.candidates is not None:
            return self.candidates
        return min(400, 20 * trials) if trials is not None else 1000

    def n_promoted(self, trials: int | None) -> int:
        """Per target."""
        if self.promote is not None:
            return self.promote
        return 2 if trials is None else max(1, min(2, trials // (2 * self.targets)))

    def n_shortlisted(self, trials: int | None) -> int:
        """Per target (no more than are promoted: no short fine-tunes). By default two more than are promoted, and
        with a trial budget no more than the short fine-tunes of a third of the epochs fit in half of it: a 3-trial
        search has none, a 12-trial one 3 per target."""
        promoted = self.n_promoted(trials)
        if self.shortlist is not None:
            return max(promoted, self.shortlist)
        fit = promoted + 2
        if trials is not None:
            fit = min(fit, int(1.5 * trials) // self.targets)
        return max(promoted, fit)

    def short_finetune(self, finetune: TrainConfig) -> TrainConfig | None:
        """The short fine-tune's settings (the fine-tune's, fewer epochs), or None when there is none to shorten."""
        if finetune.epochs <= 0:
            return None
        return finetune.model_copy(update={"epochs": self.short_epochs or round(finetune.epochs / 3, 3)})


# Images kept per split; None = no cap. Every image is used unless the user caps a split for speed
# (--max-images): the calibration sample alone is capped, since ONNX Runtime's MinMax ranges settle within a few
# hundred images and calibrating a layer costs a pass over the whole sample.
DEFAULT_MAX_IMAGES: dict[str, int | None] = {"train": None, "calib": 500, "val": None, "test": None}

# Trials a search runs when no budget is given: the library, the CLI and config files all take it from here.
DEFAULT_BUDGET_TRIALS = 12

@dataclass(frozen=True)
class Baseline:
    """A uniform reference every run can measure exactly like a trial: what a user would do by hand."""

    name: str
    ratio: float  # pruned from every group
    precision: str  # of every layer
    fine_tuned: bool  # with the trials' own fine-tune
    label: str  # in the report


BASELINES = (
    Baseline("fp32", 0.0, "fp32", False, "FP32 baseline"),  # the model as trained; always measured
    Baseline("int8", 0.0, "int8", False, "uniform int8 (PTQ)"),  # post-training int8
    Baseline("prune25-int8", 0.25, "int8", True, "uniform 25% pruned + int8"),
    Baseline("prune50-int8", 0.5, "int8", True, "uniform 50% pruned + int8"),
)
BASELINE_NAMES = tuple(b.name for b in BASELINES)


class SearchConfig(_Strict):
    model: str = "resnet20"
    weights: Path | None = None  # the trained baseline (state_dict or whole model); None: train it on the data
    num_classes: int | None = Field(default=None, ge=2)  # checked against the data when given
    dataset: str = "digits"
    data_dir: Path | None = None  # where a file-based dataset (cifar10, mnist, imagefolder, ...) lives
    download: bool = False  # let torchvision download a named dataset into data_dir
    input_size: int = Field(default=32, ge=8, le=1024)  # the model's input side: the center crop (--crop)
    resize: int | None = Field(default=None, ge=8, le=4096)  # short side before the crop (None: input_size)
    normalize: Literal["dataset", "imagenet", "none"] = "dataset"  # per-channel mean/std, unless mean/std are given
    mean: list[float] | None = None
    std: list[float] | None = None
    augment: Literal["auto", "shift", "crop-flip", "none"] = "auto"  # of fine-tuning batches (pipeline/augment.py)
    data_workers: int = Field(default=2, ge=0, le=64)  # DataLoader processes decoding images for each reader
    max_images: dict[str, int | None] = Field(default_factory=lambda: dict(DEFAULT_MAX_IMAGES))  # per split; None: all

    @field_validator("max_images")
    @classmethod
    def _caps(cls, v: dict[str, int | None]) -> dict[str, int | None]:
        unknown = [k for k in v if k not in DEFAULT_MAX_IMAGES]
        if unknown:
            raise ValueError(f"unknown split {unknown[0]!r}; use keys {', '.join(DEFAULT_MAX_IMAGES)}")
        bad = [k for k, n in v.items() if n is not None and n < 1]
        if bad:
            raise ValueError(f"the cap of {bad[0]!r} must be a positive number of images or null (no cap)")
        return {**DEFAULT_MAX_IMAGES, **v}
    space: Path | None = None  # None: the packaged autocompress/search_spaces/default.yaml
    budget: Budget = Budget(trials=DEFAULT_BUDGET_TRIALS)  # also 40, '30m' or '1h30m' (parse_budget)

    @field_validator("budget", mode="before")
    @classmethod
    def _budget(cls, v):
        if isinstance(v, (int, str)) and not isinstance(v, bool):
            try:
                return parse_budget(v)
            except ConfigError as e:
                raise ValueError(str(e)) from None
        return v
    out: Path | None = None  # the run directory; default reports/<run-name>
    run_name: str | None = None
    seed: int = 0
    # the seed that draws the data splits (None: `seed`): searches of several seeds on one baseline then share its
    # splits, and none carves its test images from the images the baseline was trained on
    split_seed: int | None = None
    ray_address: str | None = None
    concurrency: int = Field(default=1, ge=1, le=256)
    device: str = "local"  # `local` or a Ray custom resource naming the device
    train_device: Literal["auto", "cpu", "cuda"] = "auto"  # where trials fine-tune (auto: CUDA when there is one)
    gpus_per_trial: float = Field(default=1.0, gt=0, le=64)  # a fraction lets trials share a GPU

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.:\-]{1,64}", v):
            raise ValueError(f"{v!r} is not a Ray resource name; "
                             "use up to 64 letters, digits, '_', '.', ':' or '-', e.g. rpi4 (or local)")
        return v
    sampler: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    baselines: list[str] = list(BASELINE_NAMES)  # the uniform references measured in this run (fp32 always)

    @field_validator("baselines")
    @classmethod
    def _baselines(cls, v: list[str]) -> list[str]:
        unknown = [b for b in v if b not in BASELINE_NAMES]
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not a baseline; choose from {', '.join(BASELINE_NAMES)}")
        if "fp32" not in v:
            raise ValueError("fp32 must be one of the baselines: "
                             "speedups and hypervolume are relative to it (e.g. fp32,int8)")
        return [b for b in BASELINE_NAMES if b in v]
    warm_start: bool = True  # enqueue uniform configurations first
    # stop a fine-tune this far below FP32 halfway through (0: never)
    early_stop_points: float = Field(default=0.0, ge=0, le=100)
    # stop a fine-tune halfway when a finished trial measured at least as fast as it is predicted was more than
    # this many points better at the same point (0: never; needs the latency model)
    multi_fidelity_points: float = Field(default=0.0, ge=0, le=100)
    # scan each group / layer alone first (cached): narrows the space and warm-starts the sampler
    sensitivity: bool = True
    baseline: TrainConfig = TrainConfig(epochs=15, lr=0.1)
    finetune: TrainConfig = TrainConfig(epochs=6, lr=0.02, kd_alpha=0.9)
    latency: LatencyConfig = LatencyConfig()

    @field_validator("baseline", "finetune", "latency", mode="before")
    @classmethod
    def _partial(cls, v, info):  # finetune={"epochs": 3} keeps the other defaults of the section
        if isinstance(v, dict):
            return {**cls.model_fields[info.field_name].default.model_dump(), **v}
        return v
    # a trial still running after this is stopped and recorded as failed
    trial_timeout_s: float = Field(default=1800, gt=0)
    latency_cache: bool = True  # reuse a measurement for an artifact whose graph this device has measured
    # predict each trial's latency from a table of its layers timed on the device (latency_model/model.py)
    latency_model: bool = True
    # skip proposals the latency model predicts slower than a measured model with at least their channels and
    # precisions (latency_model/screen.py; not with the grid sampler, whose every configuration is the reference)
    screen: bool = True
    # a search for size too: precisions whose only gain over int8 is a smaller file (int4 weights, no faster than
    # int8 in the device's table) are offered; without it the latency model drops them
    size: bool = False
    # build only configurations the latency model predicts within this (ms, with a margin for its error)
    target_latency_ms: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _target_needs_the_model(self) -> "SearchConfig":
        if self.target_latency_ms is not None and not self.latency_model:
            raise ValueError("target_latency_ms needs the latency model to predict each configuration before it "
                             "is built; drop --no-latency-model (latency_model: false)")
        if self.multi_fidelity_points > 0 and not self.latency_model:
            raise ValueError("multi_fidelity_points needs the latency model to predict each trial's latency before it "
                             "trains; drop --no-latency-model (latency_model: false)")
        if self.multi_fidelity_points > 0 and self.sampler == "grid":
            raise ValueError("multi_fidelity_points does not apply to the grid sampler (every uniform configuration "
                             "finished, the reference); drop one of them")
        if self.target_latency_ms is not None and self.sampler == "grid":
            raise ValueError("target_latency_ms does not apply to the grid sampler (every uniform configuration, "
                             "the reference); drop one of them")
        return self
    funnel: FunnelConfig = FunnelConfig()

    @field_validator("funnel", mode="before")
    @classmethod
    def _funnel(cls, v):  # funnel={"candidates": 100} keeps the other defaults
        return {**FunnelConfig().model_dump(), **v} if isinstance(v, dict) else v
    # at the end, re-measure Pareto models and baselines together (0: off)
    confirm_rounds: int = Field(default=2, ge=0, le=20)

    @property
    def data_seed(self) -> int:
        """The seed of the data splits."""
        return self.seed if self.split_seed is None else self.split_seed

    def dump(self) -> dict:
        return self.model_dump(mode="json")


def config_error(e: ValidationError, source: str) -> ConfigError:
    err = e.errors()[0]
    where = location(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    if not err["loc"] and isinstance(err.get("input"), dict):  # a rule across keys: its message names them
        return ConfigError(f"in {source}: {msg}")
    return ConfigError(f"{where} in {source}: {msg} (got {err.get('input')!r})")


def load_config_file(path: str | Path) -> dict:
    """Read a run config YAML (the keys of SearchConfig); `budget` may be `40`, `"10m"` or a mapping."""
    from autocompress.yamlio import read_yaml

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--config {path} is a directory; pass a run config YAML file")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass --config with a YAML file")
    raw = read_yaml(path, ConfigError, "config")
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping of config keys (model, dataset, budget, ...), "
                          f"but it holds a {type(raw).__name__}")
    if "budget" in raw and isinstance(raw["budget"], (str, int)) and not isinstance(raw["budget"], bool):
        try:
            raw["budget"] = parse_budget(raw["budget"]).model_dump()
        except ConfigError as e:
            raise ConfigError(f"budget in {path}: {e}") from None
    return raw
