"""One trial: prune -> fine-tune with fake quantization and distillation -> fold BN -> export -> ORT
static quantization -> verify -> accuracy of the artifact. Latency is measured elsewhere (the device).

Baselines go through the same function (no pruning, no fine-tune), so they are measured the same way.
"""

from __future__ import annotations

import copy
import hashlib
import os
import tempfile
import time
from dataclasses import dataclass, field, replace

import torch

from autocompress.config import TrainConfig
from autocompress.measure.accuracy import onnx_accuracy
from autocompress.measure.verify import kernel_report
from autocompress.pipeline.blocks import inside, remove_blocks
from autocompress.pipeline.export import export_onnx, fold_batchnorm, layer_nodes
from autocompress.pipeline.finetune import evaluate, train
from autocompress.pipeline.prune import channel_counts, prune_model
from autocompress.pipeline.quantize import calibrate_activations, fake_quantized, quantize_static_onnx
from autocompress.tasks.data import Splits

__all__ = ["TrialSpec", "TrialOutput", "StoppedEarly", "ShortOutput", "Laps", "run_pipeline", "run_short",
           "pruned_copy", "build_artifact"]


@dataclass
class TrialSpec:
    ratios: dict[str, float]  # group name -> fraction of channels to remove
    precisions: dict[str, str]  # layer name -> fp32 / int8 / int4
    finetune: TrainConfig | None
    round_to: int = 8
    min_channels: int = 8
    seed: int = 0
    reduce_range: bool = False  # 7-bit int8 weights (quant_format_for the device)
    stop_below: float | None = None  # early stop: validation accuracy (%) halfway through the fine-tune below this
    # evaluate validation accuracy halfway even with no stop_below (--multi-fidelity: later trials are held to it)
    check_halfway: bool = False
    # also evaluate the PyTorch counterpart on val (benchmarks/parity.py); a search checks test only
    parity_val: bool = False
    train_device: str = "cpu"  # where the fine-tune runs (pipeline/devices.py); everything else stays on the CPU
    criterion: str = "l2"  # how channels are ranked for pruning (pipeline.prune.CRITERIA)
    drop_blocks: tuple[str, ...] = ()  # residual blocks removed whole (pipeline/blocks.py) before pruning


@dataclass
class StoppedEarly:
    """A trial whose fine-tune was stopped halfway: clearly worse than worth finishing."""

    val_accuracy: float  # of the PyTorch (fake-quant) model halfway through the fine-tune
    epochs_done: int
    threshold: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    epochs_planned: float = 0.0  # the fine-tune's full length (TrainConfig.epochs)


@dataclass
class TrialOutput:
    onnx_bytes: bytes
    sha256: str
    size_bytes: int
    val_accuracy: float  # of the ONNX Runtime artifact
    test_accuracy: float
    torch_test_accuracy: float  # of the PyTorch (fake-quant) model the artifact came from: the parity check
    torch_val_accuracy: float | None  # the same on val, only when TrialSpec.parity_val
    channels: dict[str, int]
    kept: dict[str, tuple[int, int]]
    integer_layers: list[str]
    float_layers: list[str]
    requested_int8: list[str]
    op_counts: dict[str, int]
    stage_seconds: dict[str, float] = field(default_factory=dict)
    # validation accuracy (%) of the PyTorch (fake-quant) model halfway through its fine-tune, when it was checked
    halfway_accuracy: float | None = None


class _Stop(Exception):
    pass


class Laps:
    """Seconds per stage, each stage timed from the end of the one before: `lap("export")`, then `.times`."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._t = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.times[stage] = round(now - self._t, 3)
        self._t = now


def run_pipeline(baseline: torch.nn.Module, splits: Splits, spec: TrialSpec, *,
                 threads: int | None = None) -> TrialOutput | StoppedEarly:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(spec.seed)
    lap = Laps()

    model, kept, spec = pruned_copy(baseline, splits, spec)
    lap("prune")

    # qmodel computes what the ORT artifact will
    halfway: list[float] = []  # the halfway validation accuracy, when checked
    with fake_quantized(model, spec.precisions, reduce_range=spec.reduce_range) as qmodel:
        if spec.finetune is not None and spec.finetune.epochs > 0:
            check_after = max(1, int(spec.finetune.epochs // 2))  # halfway: the one-cycle schedule's peak is past
            checked = spec.stop_below is not None or spec.check_halfway

            def check(epoch: int, loss: float) -> None:
                # the cheap check: halfway through, a model this far below the bar is not worth the rest
                if epoch + 1 == check_after and checked and spec.finetune.epochs > check_after:
                    halfway.append(evaluate(qmodel, splits.val))
                    qmodel.train()
                    if spec.stop_below is not None and halfway[0] < spec.stop_below:
                        raise _Stop

            try:
                train(qmodel, splits.train, settings=spec.finetune, seed=spec.seed, teacher=baseline,
                      on_epoch=check, device=spec.train_device, augment=splits.augment)
            except _Stop:
                lap("finetune")
                return StoppedEarly(halfway[0], check_after, float(spec.stop_below), lap.times,
                                    epochs_planned=float(spec.finetune.epochs))
        lap("finetune")

    out = build_artifact(model, splits, spec, kept, lap=lap, threads=threads)
    out.halfway_accuracy = halfway[0] if halfway else None
    return out


@dataclass
class ShortOutput:
    """A short fine-tune's result: the funnel's middle stage."""

    val_accuracy: float  # of the PyTorch (fake-quant) model on the validation split
    stage_seconds: dict[str, float] = field(default_factory=dict)


def run_short(baseline: torch.nn.Module, splits: Splits, spec: TrialSpec, *, threads: int | None = None) -> ShortOutput:
    """`spec`'s candidate pruned and fine-tuned as a trial is (with spec's, shorter, fine-tune), then its fake-quant
    model evaluated on validation: what ranks the funnel's shortlist. No export and no test pass: test accuracy is
    computed for the models that are fine-tuned to the end only."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(spec.seed)
    lap = Laps()
    model, _, spec = pruned_copy(baseline, splits, spec)
    lap("prune")
    with fake_quantized(model, spec.precisions, reduce_range=spec.reduce_range) as qmodel:
        if spec.finetune is not None and spec.finetune.epochs > 0:
            train(qmodel, splits.train, settings=spec.finetune, seed=spec.seed, teacher=baseline,
                  device=spec.train_device, augment=splits.augment)
        lap("finetune")
        acc = evaluate(qmodel, splits.val)
        lap("evaluate_torch")
    return ShortOutput(acc, lap.times)


def pruned_copy(baseline: torch.nn.Module, splits: Splits,
                spec: TrialSpec) -> tuple[torch.nn.Module, dict[str, tuple[int, int]], TrialSpec]:
    """A copy of the baseline with spec's blocks removed and its groups pruned; and the spec of what is left (the
    removed blocks' groups and layers taken out of its ratios and precisions)."""
    model = copy.deepcopy(baseline).eval()
    if spec.drop_blocks:
        remove_blocks(model, spec.drop_blocks)
        spec = replace(spec, ratios={g: r for g, r in spec.ratios.items() if not inside(g, spec.drop_blocks)},
                       precisions={n: p for n, p in spec.precisions.items() if not inside(n, spec.drop_blocks)})
    kept = prune_model(model, splits.val.images(1), dict(spec.ratios),  # ratio 0 groups are recorded, not pruned
                       round_to=spec.round_to, min_channels=spec.min_channels, criterion=spec.criterion,
                       data=splits.train)
    return model, kept, spec


def build_artifact(model: torch.nn.Module, splits: Splits, spec: TrialSpec, kept: dict[str, tuple[int, int]], *,
                   lap: Laps | None = None, threads: int | None = None) -> TrialOutput:
    """The fine-tuned (pruned) float `model` -> its ONNX Runtime artifact with spec's precisions, verified and
    evaluated: the second half of every trial, and of `autocompress finalize`."""
    lap = lap if lap is not None else Laps()
    example = splits.val.images(1)
    present = dict(model.named_modules())  # a removed block's layers have no precision to take
    spec = replace(spec, precisions={n: p for n, p in spec.precisions.items() if n in present})
    # The PyTorch counterpart of the artifact is the fine-tuned model with BatchNorm folded into its convs, as
    # exported, fake-quantized and calibrated on the folded float model, as ONNX Runtime calibrates it: evaluated
    # before folding, float rounding at quantization-step boundaries makes it differ (docs/pipeline.md, parity).
    model.eval()
    fold_batchnorm(model, example)
    with fake_quantized(model, spec.precisions, reduce_range=spec.reduce_range) as qmodel:
        calibrate_activations(qmodel, splits.calib)
        # parity is checked on the test split only: the search ranks on the artifact's val accuracy and never needs
        # PyTorch's, and one more evaluation of the fake-quant model is a large share of this stage
        torch_val = evaluate(qmodel, splits.val) if spec.parity_val else None
        torch_test = evaluate(qmodel, splits.test)
        lap("evaluate_torch")
    proto = export_onnx(model, example)
    layers = list(channel_counts(model))
    nodes = layer_nodes(proto, layers)
    lap("export")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        quantize_static_onnx(proto, path, precisions=spec.precisions, nodes=nodes, calib=splits.calib,
                             reduce_range=spec.reduce_range)
        lap("quantize")
        data = open(path, "rb").read()
        kernels = kernel_report(path)
        lap("verify")
    acc = onnx_accuracy(data, {"val": splits.val, "test": splits.test}, threads=threads or 1)
    lap("evaluate_onnx")
    return TrialOutput(
        onnx_bytes=data,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        val_accuracy=acc["val"],
        test_accuracy=acc["test"],
        torch_test_accuracy=torch_test,
        torch_val_accuracy=torch_val,
        channels=channel_counts(model),
        kept=kept,
        integer_layers=kernels["integer_layers"],
        float_layers=kernels["float_layers"],
        requested_int8=sorted(l for l, p in spec.precisions.items() if p == "int8"),
        op_counts=kernels["op_counts"],
        stage_seconds=lap.times,
    )
