"""Per-layer precision: fake quantization for the fine-tune, ONNX Runtime static quantization for the artifact.

Precisions: `fp32` (left in float), `int8` (int8 per-channel symmetric weights, uint8 activations:
the U8S8 QDQ format that fuses into QLinearConv on x86), `int4` (int4 per-channel weights stored
packed as ONNX INT4, uint8 activations; on ORT's CPU provider this runs as DequantizeLinear + float
Conv, so it buys size, not speed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.utils.parametrize as P

__all__ = ["PRECISIONS", "fake_quantized", "calibrate_activations", "quantize_static_onnx"]

PRECISIONS = ("fp32", "int8", "int4")
# ORT's symmetric weight ranges: int8 uses the restricted [-127, 127], int4 the full [-8, 7];
# scale = 2 * absmax / (qmax - qmin), zero point 0 (onnxruntime.quantization.quant_utils).
_WEIGHT_RANGE = {"int8": (-127, 127), "int4": (-8, 7)}


class _WeightFakeQuant(nn.Module):
    """Symmetric per-output-channel fake quantization on ORT's grid, with a straight-through gradient."""

    def __init__(self, qmin: int, qmax: int) -> None:
        super().__init__()
        self.qmin, self.qmax = qmin, qmax

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        # ORT's arithmetic, so ties round the same way: scale computed in float64 and stored as float32,
        # q = round_half_even(w / scale) in float32 (torch.fake_quantize multiplies by 1/scale instead).
        amax = w.detach().abs().flatten(1).amax(1).clamp_min(1e-8)
        scale = (2 * amax.double() / (self.qmax - self.qmin)).float().reshape(-1, *([1] * (w.dim() - 1)))
        q = torch.clamp(torch.round(w.detach() / scale), self.qmin, self.qmax)
        return w + (q * scale - w).detach()  # straight-through gradient


class _ActFakeQuant:
    """uint8 asymmetric per-tensor fake quantization of a layer's input.

    While training the range follows an EMA of batch ranges; `calibrate_activations` then replaces it
    with the min/max over the calibration split, as ORT's MinMax calibration does for the artifact.
    """

    def __init__(self, momentum: float = 0.1) -> None:
        self.lo: float | None = None
        self.hi: float | None = None
        self.momentum = momentum
        self.calibrating = False

    def __call__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = inputs[0]
        if self.calibrating:
            lo, hi = float(x.detach().min()), float(x.detach().max())
            self.lo = lo if self.lo is None else min(self.lo, lo)
            self.hi = hi if self.hi is None else max(self.hi, hi)
            return inputs  # observe only, like ORT's calibration pass on the float model
        if module.training or self.lo is None:
            lo, hi = min(float(x.detach().min()), 0.0), max(float(x.detach().max()), 0.0)
            if self.lo is None:
                self.lo, self.hi = lo, hi
            else:
                self.lo += self.momentum * (lo - self.lo)
                self.hi += self.momentum * (hi - self.hi)
        scale = max((self.hi - self.lo) / 255.0, 1e-8)
        zero = int(min(255, max(0, round(-self.lo / scale))))
        return (torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255),) + tuple(inputs[1:])


@contextlib.contextmanager
def fake_quantized(model: nn.Module, precisions: dict[str, str]) -> Iterator[nn.Module]:
    """Within the block, layers marked int8/int4 see fake-quantized weights and inputs.

    On exit the fake quantization is removed and the (fine-tuned) float weights stay in place.
    """
    modules = dict(model.named_modules())
    hooks = []
    observers: list[_ActFakeQuant] = []
    try:
        for name, prec in precisions.items():
            if prec == "fp32":
                continue
            layer = modules[name]
            P.register_parametrization(layer, "weight", _WeightFakeQuant(*_WEIGHT_RANGE[prec]))
            observers.append(_ActFakeQuant())
            hooks.append(layer.register_forward_pre_hook(observers[-1]))
        model._autocompress_act_observers = observers  # type: ignore[attr-defined]
        yield model
    finally:
        for h in hooks:
            h.remove()
        if hasattr(model, "_autocompress_act_observers"):
            del model._autocompress_act_observers
        for name, prec in precisions.items():
            layer = modules.get(name)
            if layer is not None and P.is_parametrized(layer, "weight"):
                P.remove_parametrizations(layer, "weight", leave_parametrized=False)


def _nodes_to_exclude(proto: onnx.ModelProto, *, quantized_nodes: set[str], layer_nodes: set[str]) -> list[str]:
    """Nodes to leave in float: fp32 layers, and every region of other ops (Add, pooling, ...) that
    touches an fp32 layer.

    Quantizing the ops between quantized layers lets ORT keep tensors in uint8 (QLinearAdd,
    QLinearGlobalAveragePool): on MobileNetV2 that is the difference between int8 being faster than
    fp32 or not. Quantizing them next to a float layer would only add Quantize/Dequantize pairs.
    """
    graph = proto.graph
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        while parent.setdefault(a, a) != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    producer = {o: n.name for n in graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.name)
    others = [n for n in graph.node if n.name not in layer_nodes]
    for n in others:
        find(n.name)
        for i in n.input:
            src = producer.get(i)
            if src is not None and src not in layer_nodes:
                parent[find(n.name)] = find(src)
    region_ok: dict[str, bool] = {}
    for n in others:
        neighbours = [producer[i] for i in n.input if i in producer] + [c for o in n.output for c in consumers.get(o, [])]
        ok = all(m in quantized_nodes for m in neighbours if m in layer_nodes)
        root = find(n.name)
        region_ok[root] = region_ok.get(root, True) and ok
    excluded = [n.name for n in others if not region_ok[find(n.name)]]
    excluded += [n.name for n in graph.node if n.name in layer_nodes and n.name not in quantized_nodes]
    return excluded


@torch.no_grad()
def calibrate_activations(model: nn.Module, x: np.ndarray, batch_size: int = 16) -> None:
    """Inside `fake_quantized`: set every activation range to the min/max over `x` (ORT's MinMax).

    The observers see the float activations (no quantization while calibrating), exactly like
    ORT's calibration pass on the float model, so the PyTorch model then predicts what the artifact will.
    """
    observers: list[_ActFakeQuant] = getattr(model, "_autocompress_act_observers", [])
    if not observers:
        return
    for o in observers:
        o.lo = o.hi = None
        o.calibrating = True
    try:
        model.eval()
        for i in range(0, len(x), batch_size):
            model(torch.from_numpy(x[i : i + batch_size]))
    finally:
        for o in observers:
            o.calibrating = False


class _Reader:
    """CalibrationDataReader over a numpy array, a few images per batch."""

    def __init__(self, x: np.ndarray, batch: int = 16) -> None:
        self._batches = [x[i : i + batch] for i in range(0, len(x), batch)]
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._batches):
            return None
        self._i += 1
        return {"input": self._batches[self._i - 1]}

    def rewind(self) -> None:
        self._i = 0


def quantize_static_onnx(
    float_model: onnx.ModelProto,
    out_path: str | Path,
    *,
    precisions: dict[str, str],
    nodes: dict[str, str],
    calib_x: np.ndarray,
) -> dict[str, str]:
    """Write the deployable artifact to `out_path` and return {layer: precision actually requested}.

    All-fp32 configurations are saved unchanged. Otherwise U8S8 static QDQ (per-channel weights),
    calibrated with MinMax on `calib_x`; fp32 layers are excluded by node name, int4 layers get a
    per-channel QInt4 override on their weight.
    """
    from onnxruntime.quantization import QuantType

    quantized = {l: p for l, p in precisions.items() if p != "fp32" and l in nodes}
    if not quantized:
        onnx.save(float_model, str(out_path))
        return {}
    overrides = {f"{l}.weight": [{"quant_type": QuantType.QInt4, "axis": 0, "symmetric": True}]
                 for l, p in quantized.items() if p == "int4"}
    exclude = _nodes_to_exclude(float_model, quantized_nodes={nodes[l] for l in quantized}, layer_nodes=set(nodes.values()))
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "float.onnx")
        onnx.save(float_model, src)
        _quantize(src, str(out_path), calib_x, exclude, overrides)
    return quantized


def _quantize(src: str, dst: str, calib_x: np.ndarray, exclude: list[str], overrides: dict) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    logging.getLogger().setLevel(logging.ERROR)  # ORT logs a pre-processing hint on the root logger
    quantize_static(
        src, dst, _Reader(calib_x),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        nodes_to_exclude=exclude,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False, "TensorQuantOverrides": overrides},
    )
