"""The cheap score of a candidate: built like a trial (pruned, fake-quantized), its BatchNorm statistics re-estimated
on a few hundred training images (adaptive BatchNorm, EagleEye, ECCV 2020), then scored on a fixed validation
sample, without training.

Scoring takes seconds where a fine-tune takes minutes, so a search can score many candidates and fine-tune only the
best (issue 29). Every candidate is scored on the same images (chosen by `ScoreSettings.seed`), so scores compare.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from autocompress.pipeline.blocks import inside, remove_blocks
from autocompress.pipeline.prune import prune_model
from autocompress.pipeline.quantize import calibrate_activations, fake_quantized
from autocompress.tasks.splitting import Split, Splits, TensorImages

__all__ = ["ScoreSettings", "Score", "ScoreSample", "ScoreSpec", "Scorer", "score_sample", "reference_logits",
           "score_candidate", "recalibrate_batchnorm"]


@dataclass(frozen=True)
class ScoreSettings:
    """How a candidate is scored. Counts larger than a split take the whole split."""

    bn_images: int = 256  # training images whose train-mode passes re-estimate BatchNorm (0: keep the baseline's)
    bn_batch: int = 64  # images per BatchNorm pass
    val_images: int = 512  # validation images scored
    # training images whose min/max set the activation ranges of quantized layers, as ONNX Runtime's MinMax
    # calibration sets the artifact's (the first of the same fixed training images the BatchNorm passes use)
    calib_images: int = 256
    seed: int = 0  # which images: the same for every candidate scored with these settings

    def __post_init__(self) -> None:
        for name, least in (("bn_images", 0), ("bn_batch", 2), ("val_images", 1), ("calib_images", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < least:
                raise ValueError(f"ScoreSettings.{name} must be an integer of at least {least}, but got {value!r}")


@dataclass(frozen=True)
class Score:
    """A candidate's cheap score on the fixed validation sample."""

    accuracy: float  # top-1, % of the sample
    loss: float  # mean cross-entropy on the sample
    agreement: float  # % of the sample where the candidate's top-1 is the FP32 baseline's: finer than accuracy
    seconds: float  # the whole score: copy, prune, fake-quantize, recalibrate, evaluate
    bn_batches: int  # train-mode passes that re-estimated BatchNorm (0: the baseline's statistics kept)
    kept: dict[str, tuple[int, int]]  # group -> (channels before, after), as prune_model reports
    parameters: int  # of the pruned model


@dataclass(frozen=True, eq=False)
class ScoreSample:
    """The fixed images every candidate is scored on, read once: a split of decoded files costs seconds to read."""

    settings: ScoreSettings
    example: torch.Tensor  # the input torch-pruning traces, as run_pipeline's (the first validation image)
    train: Split  # what the taylor criterion takes its gradients from, as in run_pipeline
    train_x: torch.Tensor  # the fixed training images, in a seeded random order (mixed classes per batch)
    val_x: torch.Tensor
    val_y: torch.Tensor

    def bn_batches(self) -> list[torch.Tensor]:
        """The BatchNorm passes' batches; a last batch of one image is left out (train-mode BatchNorm needs two)."""
        batches = list(self.train_x[: self.settings.bn_images].split(self.settings.bn_batch))
        return [b for b in batches if len(b) > 1]

    def calib(self) -> Split:
        x = self.train_x[: self.settings.calib_images]
        labels = np.zeros(len(x), np.int64)  # calibration reads images only
        return Split(TensorImages(x, torch.from_numpy(labels)), labels)


def score_sample(splits: Splits, settings: ScoreSettings) -> ScoreSample:
    """The fixed training and validation images of `settings`, chosen by its seed and read into memory."""
    n_train = min(len(splits.train), max(settings.bn_images, settings.calib_images))
    n_val = min(len(splits.val), settings.val_images)
    train_pos = np.random.default_rng([settings.seed, 0]).permutation(len(splits.train))[:n_train]
    val_pos = np.sort(np.random.default_rng([settings.seed, 1]).permutation(len(splits.val))[:n_val])
    val = splits.val.take(val_pos)
    return ScoreSample(settings=settings, example=splits.val.images(1), train=splits.train,
                       train_x=splits.train.take(train_pos).images(), val_x=val.images(),
                       val_y=torch.from_numpy(val.labels.copy()))


def _sample(data: Splits | ScoreSample, settings: ScoreSettings) -> ScoreSample:
    if isinstance(data, ScoreSample):
        if data.settings != settings:
            raise ValueError(f"the sample was drawn with {data.settings}, not with {settings}; draw it with "
                             "score_sample(splits, settings) for the settings the candidates are scored with")
        return data
    return score_sample(data, settings)


def _eval_batch(x: torch.Tensor) -> int:
    """Images per evaluation batch: 256 of 32 x 32, fewer of larger ones (as finetune.evaluate sizes them)."""
    h, w = x.shape[-2:]
    return max(16, min(256, 256 * 32 * 32 // max(1, h * w)))


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(b) for b in x.split(_eval_batch(x))])


def reference_logits(baseline: nn.Module, data: Splits | ScoreSample, settings: ScoreSettings) -> torch.Tensor:
    """The FP32 baseline's logits on the validation sample: computed once, they give every candidate's `agreement`
    at no cost. The baseline itself is left as it was (a copy is evaluated)."""
    return _logits(copy.deepcopy(baseline), _sample(data, settings).val_x)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Adaptive BatchNorm: every BatchNorm's running statistics replaced by their plain average over train-mode
    passes on `batches` (no gradients); every other layer stays in eval mode, so dropout keeps out of it.

    Pruning changes what each BatchNorm sees, and the baseline's statistics then judge a pruned model by a mismatch
    that a fine-tune removes in its first steps. Returns the number of passes (0: `batches` was empty and the
    statistics are as they were); the model is left in eval mode with its BatchNorm momenta as they were.
    """
    batches = list(batches)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not batches or not norms:
        return 0
    momenta = [m.momentum for m in norms]
    model.eval()
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: every batch counts the same
            m.train()
        for x in batches:
            model(x)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.eval()
    return len(batches)


@contextlib.contextmanager
def _float_activations(qmodel: nn.Module) -> Iterator[None]:
    """Within the block, the activation fake quantizers of a `fake_quantized` model pass activations through in float.

    Their ranges are not known before BatchNorm is recalibrated (its output is what they quantize), so the
    recalibration passes see float activations, as ONNX Runtime calibrates the float model; the ranges are set
    afterwards by `calibrate_activations`, exactly as the trial's artifact gets them."""
    observers = getattr(qmodel, "_autocompress_act_observers", [])
    for o in observers:
        o.calibrating = True
    try:
        yield
    finally:
        for o in observers:
            o.calibrating = False


def _pruned_copy(baseline: nn.Module, sample: ScoreSample, ratios: dict[str, float], *, criterion: str,
                 round_to: int, min_channels: int,
                 drop_blocks: tuple[str, ...] = ()) -> tuple[nn.Module, dict[str, tuple[int, int]]]:
    """A copy of `baseline` with `drop_blocks` removed and pruned, exactly as run_pipeline builds a trial's."""
    model = copy.deepcopy(baseline).eval()
    if drop_blocks:
        remove_blocks(model, drop_blocks)
        ratios = {g: r for g, r in ratios.items() if not inside(g, drop_blocks)}
    with torch.enable_grad():  # torch-pruning traces with autograd (and taylor needs gradients)
        kept = prune_model(model, sample.example, dict(ratios), round_to=round_to, min_channels=min_channels,
                           criterion=criterion, data=sample.train)
    return model, kept


def _agreement(logits: torch.Tensor, reference: torch.Tensor) -> float:
    if reference.shape != logits.shape:
        raise ValueError(f"teacher_logits have shape {tuple(reference.shape)}, but the sample's logits "
                         f"{tuple(logits.shape)}; compute them with reference_logits(baseline, splits, settings) "
                         "for the same settings")
    return 100.0 * float((logits.argmax(1) == reference.argmax(1)).float().mean())


def score_candidate(
    baseline: nn.Module,
    splits: Splits | ScoreSample,
    ratios: dict[str, float],
    precisions: dict[str, str],
    *,
    criterion: str,
    round_to: int,
    min_channels: int,
    reduce_range: bool,
    settings: ScoreSettings,
    teacher_logits: torch.Tensor | None = None,
    drop_blocks: tuple[str, ...] = (),
) -> Score:
    """Score one candidate without fine-tuning it: a copy of `baseline` pruned by `ratios` (as run_pipeline prunes),
    fake-quantized by `precisions`, BatchNorm recalibrated on the sample's training images, activation ranges
    calibrated on them, then evaluated on the fixed validation sample.

    `splits` may be a `ScoreSample` drawn once with `settings` (score_sample), so that many candidates do not read
    the images again. `teacher_logits`: the baseline's logits on the sample (reference_logits); computed here when
    not given, at the cost of one more evaluation. `drop_blocks`: residual blocks removed whole first (their layers'
    ratios and precisions are ignored). `baseline` is not modified.
    """
    t0 = time.perf_counter()
    sample = _sample(splits, settings)
    model, kept = _pruned_copy(baseline, sample, ratios, criterion=criterion, round_to=round_to,
                               min_channels=min_channels, drop_blocks=drop_blocks)
    precisions = {n: p for n, p in precisions.items() if not inside(n, drop_blocks)}
    with fake_quantized(model, precisions, reduce_range=reduce_range) as qmodel:
        with _float_activations(qmodel):
            bn_batches = recalibrate_batchnorm(qmodel, sample.bn_batches())
        calibrate_activations(qmodel, sample.calib(), batch_size=settings.bn_batch)
        logits = _logits(qmodel, sample.val_x)
    reference = teacher_logits if teacher_logits is not None else reference_logits(baseline, sample, settings)
    return Score(accuracy=100.0 * float((logits.argmax(1) == sample.val_y).float().mean()),
                 loss=float(F.cross_entropy(logits, sample.val_y)),
                 agreement=_agreement(logits, reference),
                 seconds=time.perf_counter() - t0,
                 bn_batches=bn_batches,
                 kept=kept,
                 parameters=sum(p.numel() for p in model.parameters()))


@dataclass(frozen=True)
class ScoreSpec:
    """One candidate to score: how it is pruned and quantized, as a trial's TrialSpec says."""

    ratios: dict[str, float]
    precisions: dict[str, str]
    criterion: str = "l2"
    round_to: int = 8
    min_channels: int = 8
    reduce_range: bool = False
    drop_blocks: tuple[str, ...] = ()  # residual blocks removed whole (pipeline/blocks.py)


class Scorer:
    """Scores candidates of one baseline on one fixed sample: the sample is drawn and the baseline's logits on it are
    computed once, when the scorer is made (a search's scoring workers each hold one)."""

    def __init__(self, baseline: nn.Module, splits: Splits, settings: ScoreSettings) -> None:
        self.baseline = baseline.eval()
        self.settings = settings
        self.sample = score_sample(splits, settings)
        self.reference = reference_logits(baseline, self.sample, settings)

    def score(self, spec: ScoreSpec) -> Score:
        return score_candidate(self.baseline, self.sample, spec.ratios, spec.precisions, criterion=spec.criterion,
                               round_to=spec.round_to, min_channels=spec.min_channels,
                               reduce_range=spec.reduce_range, settings=self.settings,
                               teacher_logits=self.reference, drop_blocks=spec.drop_blocks)
