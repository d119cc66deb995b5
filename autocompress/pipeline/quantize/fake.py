"""The PyTorch side: a model that computes what the ONNX Runtime artifact will, and its activation calibration."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.utils.parametrize as P

from autocompress.pipeline.quantize.format import FLOAT_PRECISIONS, weight_range
from autocompress.pipeline.quantize.fx_graph import _insert_ort_fake_quant
from autocompress.pipeline.quantize.quantizers import _ActFakeQuant, _HalfWeight, _WeightFakeQuant
from autocompress.tasks.splitting import Split


@contextlib.contextmanager
def fake_quantized(model: nn.Module, precisions: dict[str, str], *, reduce_range: bool = False) -> Iterator[nn.Module]:
    """Within the block, train and evaluate the yielded module: it computes what the ONNX Runtime
    artifact will. Layers marked int8/int4 see weights on ORT's grid, and every activation ORT will
    quantize is fake-quantized (uint8) where it will be, so the fine-tune learns to live with it.

    The yielded module shares `model`'s layers (a torch.fx trace of it); if the model cannot be traced,
    it is `model` itself with only the quantized layers' inputs fake-quantized, and the report's parity
    check shows what that misses. On exit the fine-tuned float weights stay in `model`.
    """
    modules = dict(model.named_modules())
    hooks = []
    observers: list[_ActFakeQuant] = []
    quantized = {n: p for n, p in precisions.items() if p not in FLOAT_PRECISIONS}
    halves = [n for n, p in precisions.items() if p == "fp16"]
    target: nn.Module = model
    try:
        if quantized:
            try:
                target, observers = _insert_ort_fake_quant(model, quantized)
            except Exception:  # noqa: BLE001 - untraceable model: fake-quantize the layers' inputs only
                target, observers = model, []
                for name in quantized:
                    observers.append(_ActFakeQuant())
                    hooks.append(modules[name].register_forward_pre_hook(observers[-1].pre_hook))
        for name, prec in quantized.items():
            P.register_parametrization(modules[name], "weight", _WeightFakeQuant(*weight_range(prec, reduce_range)))
        for name in halves:
            P.register_parametrization(modules[name], "weight", _HalfWeight())
        target._autocompress_act_observers = observers  # type: ignore[attr-defined]
        target.train(model.training)
        yield target
    finally:
        for h in hooks:
            h.remove()
        if hasattr(target, "_autocompress_act_observers"):
            del target._autocompress_act_observers
        for name in precisions:
            layer = modules.get(name)
            if layer is not None and P.is_parametrized(layer, "weight"):
                P.remove_parametrizations(layer, "weight", leave_parametrized=False)


@torch.no_grad()
def calibrate_activations(model: nn.Module, data: Split, batch_size: int = 16) -> None:
    """Inside `fake_quantized`: set every activation range to the min/max over the images of `data` (ORT's MinMax).

    The observers see the float activations (no quantization while calibrating), exactly like
    ORT's calibration pass on the float model, so the PyTorch model then predicts what the artifact will.
    """
    observers: list[_ActFakeQuant] = getattr(model, "_autocompress_act_observers", [])
    if not observers:
        return
    weight_fq = [m for m in model.modules() if isinstance(m, (_WeightFakeQuant, _HalfWeight))]
    for o in observers:
        o.lo = o.hi = None
        o.calibrating = True
    for w in weight_fq:  # ORT calibrates the float model: float weights too
        w.enabled = False
    try:
        model.eval()
        for x, _ in data.batches(batch_size):
            model(x)
    finally:
        for o in observers:
            o.calibrating = False
        for w in weight_fq:
            w.enabled = True
