"""Per-layer precision: fake quantization for the fine-tune, ONNX Runtime static quantization for the artifact.

Precisions: `fp32` (left in float), `int8` (int8 per-channel symmetric weights, uint8 activations:
the U8S8 QDQ format that fuses into QLinearConv on x86), `int4` (int4 per-channel weights stored
packed as ONNX INT4, uint8 activations; on ORT's CPU provider this runs as DequantizeLinear + float
Conv, so it buys size, not speed).
"""

from __future__ import annotations

import contextlib
import logging
import operator
import os
import tempfile
from pathlib import Path
from typing import Hashable, Iterator, TypeVar

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.parametrize as P

__all__ = ["PRECISIONS", "fake_quantized", "calibrate_activations", "quantize_static_onnx", "quant_format_for",
           "quiet_ort_quantization", "weight_range"]

PRECISIONS = ("fp32", "int8", "int4")
_T = TypeVar("_T", bound=Hashable)
# ORT's symmetric weight ranges: int8 uses the restricted [-127, 127], int4 the full [-8, 7];
# scale = 2 * absmax / (qmax - qmin), zero point 0 (onnxruntime.quantization.quant_utils).
_WEIGHT_RANGE = {"int8": (-127, 127), "int4": (-8, 7)}
_WEIGHT_RANGE_REDUCED = {"int8": (-64, 64), "int4": (-8, 7)}  # reduce_range: 7-bit int8 weights (int4 keeps 4 bits)


def weight_range(precision: str, reduce_range: bool) -> tuple[int, int]:
    return (_WEIGHT_RANGE_REDUCED if reduce_range else _WEIGHT_RANGE)[precision]


def quant_format_for(device: dict) -> dict:
    """The integer format for the target device (recorded in every run's meta.json and report).

    ONNX Runtime's CPU provider runs U8S8 QDQ (uint8 activations, int8 weights) on integer kernels
    (QLinearConv/QGemm) on x86. Without VNNI those kernels multiply-add pairs of u8*s8 products into
    int16 (VPMADDUBSW), which saturates: with full 8-bit weights, a trial on this 2-core AVX2 machine
    lost 3-7 points of accuracy against the very same arithmetic unfused. ORT's documented remedy is
    7-bit weights (reduce_range) on CPUs without VNNI; VNNI and ARM kernels accumulate in int32.
    S8S8 QDQ is not used: on AVX2 it leaves convolutions partly in float and is slower than fp32.
    """
    isa = set(device.get("isa", []))
    machine = str(device.get("machine", "")).lower()
    x86 = machine in ("x86_64", "amd64", "i686", "x86")
    vnni = bool(isa & {"avx512_vnni", "avx_vnni", "amx_int8"})
    reduce_range = x86 and not vnni
    why = ("x86 without VNNI: 7-bit weights avoid int16 saturation in U8S8 kernels" if reduce_range
           else "x86 with VNNI: 8-bit weights" if x86 else "non-x86: 8-bit weights")
    return {"format": "QDQ", "activations": "uint8 asymmetric per-tensor (MinMax)",
            "weights": "int8 symmetric per-channel", "int8_weight_range": list(weight_range("int8", reduce_range)),
            "reduce_range": reduce_range, "why": why}


class _WeightFakeQuant(nn.Module):
    """Symmetric per-output-channel fake quantization on ORT's grid, with a straight-through gradient."""

    def __init__(self, qmin: int, qmax: int) -> None:
        super().__init__()
        self.qmin, self.qmax = qmin, qmax
        self.enabled = True

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return w
        # ORT's arithmetic, so ties round the same way: scale computed in float64 and stored as float32,
        # q = round_half_even(w / scale) in float32 (torch.fake_quantize multiplies by 1/scale instead).
        amax = w.detach().abs().flatten(1).amax(1).clamp_min(1e-8)
        scale = (2 * amax.double() / (self.qmax - self.qmin)).float().reshape(-1, *([1] * (w.dim() - 1)))
        q = torch.clamp(torch.round(w.detach() / scale), self.qmin, self.qmax)
        return w + (q * scale - w).detach()  # straight-through gradient


class _ActFakeQuant(nn.Module):
    """uint8 asymmetric per-tensor fake quantization of one activation tensor (ORT's QuantizeLinear).

    While training the range follows an EMA of batch ranges; `calibrate_activations` then replaces it
    with the min/max over the calibration split, as ORT's MinMax calibration does for the artifact.
    Used as a module inserted in the traced graph, or as a forward pre-hook on a layer.
    """

    def __init__(self, momentum: float = 0.1) -> None:
        super().__init__()
        self.lo: float | None = None
        self.hi: float | None = None
        self.momentum = momentum
        self.calibrating = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            lo, hi = (float(v) for v in torch.aminmax(x.detach()))
            self.lo = lo if self.lo is None else min(self.lo, lo)
            self.hi = hi if self.hi is None else max(self.hi, hi)
            return x  # observe only, like ORT's calibration pass on the float model
        if self.training or self.lo is None:
            mn, mx = torch.aminmax(x.detach())
            lo, hi = min(float(mn), 0.0), max(float(mx), 0.0)
            if self.lo is None:
                self.lo, self.hi = lo, hi
            else:
                self.lo += self.momentum * (lo - self.lo)
                self.hi += self.momentum * (hi - self.hi)
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)  # ORT's range always contains 0
        scale = max((hi - lo) / 255.0, 1e-8)
        zero = int(min(255, max(0, round(-lo / scale))))
        # QuantizeLinear then DequantizeLinear (round half to even, saturate to uint8), with a straight-through
        # gradient; in-place on a detached copy: 5x faster on CPU than torch.fake_quantize_per_tensor_affine
        with torch.no_grad():
            delta = torch.div(x, scale).round_().add_(zero).clamp_(0, 255).sub_(zero).mul_(scale).sub_(x)
        return x + delta

    def pre_hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        self.train(module.training)
        return (self(inputs[0]),) + tuple(inputs[1:])


# ---- which tensors ONNX Runtime quantizes, mirrored on the torch.fx graph of the model
# Ops that vanish from the exported graph: BatchNorm after a conv is folded into it, Dropout and Identity go.
_TRANSPARENT_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, nn.Identity)
# Relu/Clip: ORT removes them and quantizes their output in place of their input's (when they are
# their input's only consumer).
_RELU_MODULES = (nn.ReLU, nn.ReLU6)
_RELU_FUNCS = {F.relu, torch.relu, F.relu6, F.hardtanh}
_RELU_METHODS = {"relu", "relu_"}
# Ops that ORT's QDQ quantizer quantizes (inputs and outputs) when they sit between quantized layers.
_REGION_MODULES = (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.Flatten, *_RELU_MODULES)
_REGION_FUNCS = {operator.add, operator.iadd, torch.add, torch.cat, torch.flatten, F.adaptive_avg_pool2d, F.avg_pool2d,
                 F.max_pool2d} | _RELU_FUNCS
_REGION_METHODS = {"add", "add_", "flatten", "view", "reshape"} | _RELU_METHODS
_LAYER_MODULES = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _is_relu(n, mods) -> bool:
    return ((n.op == "call_module" and isinstance(mods[n.target], _RELU_MODULES))
            or (n.op == "call_function" and n.target in _RELU_FUNCS)
            or (n.op == "call_method" and n.target in _RELU_METHODS))


def _tensor_args(n) -> list:
    """The activation inputs of a node (not shapes or sizes)."""
    import torch.fx as fx

    if n.target in (operator.add, operator.iadd, torch.add, "add", "add_"):
        return [a for a in n.args[:2] if isinstance(a, fx.Node)]
    if n.target is torch.cat:
        return [a for a in n.args[0] if isinstance(a, fx.Node)]
    return [n.args[0]] if n.args and isinstance(n.args[0], fx.Node) else []


def _regions(links: list[tuple[_T, list[_T]]]) -> dict[_T, _T]:
    """Union-find over (item, the items it takes inputs from) pairs: each item -> the representative of its region,
    the items connected to it through inputs (inputs that are not items themselves are ignored). Both halves of the
    quantization use it for the regions of non-layer ops (Add, pooling, ...) between layers: `_insert_ort_fake_quant`
    on the torch.fx graph, `_nodes_to_exclude` on the ONNX graph, so the fine-tune fake-quantizes what ORT quantizes."""
    parent: dict[_T, _T] = {}

    def find(a: _T) -> _T:
        while parent.setdefault(a, a) != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    members = {n for n, _ in links}
    for n, inputs in links:
        find(n)
        for a in inputs:
            if a in members:
                parent[find(n)] = find(a)
    return {n: find(n) for n in members}


def _insert_ort_fake_quant(model: nn.Module, precisions: dict[str, str]) -> tuple[nn.Module, list[_ActFakeQuant]]:
    """A traced copy of `model` (sharing its modules) with fake quantization on every activation that
    ONNX Runtime's QDQ quantization of the exported model quantizes: inputs and outputs of quantized
    layers (Gemm outputs excepted, see _quantize), and of the ops between quantized layers (the
    regions `_nodes_to_exclude` leaves quantized). Raises if the model cannot be traced."""
    import torch.fx as fx

    gm = fx.symbolic_trace(model)
    mods = dict(gm.named_modules())
    nodes = [n for n in gm.graph.nodes if n.op not in ("get_attr", "output")]

    def is_layer(n) -> bool:
        return n.op == "call_module" and isinstance(mods[n.target], _LAYER_MODULES)

    alias: dict = {}  # transparent node -> the node whose tensor it passes on

    def rep(n):
        while n in alias:
            n = alias[n]
        return n

    for n in nodes:
        if (n.op == "call_module" and isinstance(mods[n.target], _TRANSPARENT_MODULES) and n.args
                and isinstance(n.args[0], fx.Node)):
            if not isinstance(mods[n.target], (nn.BatchNorm1d, nn.BatchNorm2d)) or is_layer(rep(n.args[0])):
                alias[n] = n.args[0]
    tail: dict = {}  # node -> the end of the chain of transparent nodes that are its only consumers (conv -> BN)
    for n in nodes:
        if n in alias and len(alias[n].users) == 1 and tail.get(rep(n), rep(n)) is alias[n]:
            tail[rep(n)] = n
    users: dict = {}  # real consumers (through transparent nodes)
    for n in nodes:
        if n in alias or n.op == "placeholder":
            continue
        for a in n.all_input_nodes:
            users.setdefault(rep(a), []).append(n)
    others = [n for n in nodes if n not in alias and n.op != "placeholder" and not is_layer(n)]
    quant_layer = {n: is_layer(n) and precisions.get(n.target, "fp32") != "fp32" for n in nodes}

    other_set = set(others)
    region = _regions([(n, [rep(a) for a in n.all_input_nodes]) for n in others])
    region_ok: dict = {}
    for n in others:
        neighbours = [rep(a) for a in n.all_input_nodes] + users.get(n, [])
        ok = all(quant_layer.get(m, False) for m in neighbours if is_layer(m))
        region_ok[region[n]] = region_ok.get(region[n], True) and ok

    def supported(n) -> bool:
        return ((n.op == "call_module" and isinstance(mods[n.target], _REGION_MODULES))
                or (n.op == "call_function" and n.target in _REGION_FUNCS)
                or (n.op == "call_method" and n.target in _REGION_METHODS))

    quantized = [n for n in nodes
                 if quant_layer.get(n) or (n in other_set and region_ok[region[n]] and supported(n))]
    qset = set(quantized)
    out_points, in_points = [], {}  # tensors quantized for every consumer; tensors quantized for some consumers
    for q in quantized:
        if not (is_layer(q) and isinstance(mods[q.target], nn.Linear)):  # Gemm outputs stay float (_quantize)
            us = users.get(q, [])
            if not (len(us) == 1 and us[0] in qset and _is_relu(us[0], mods)):  # fused into the Relu's output
                out_points.append(q)
        for a in _tensor_args(q):
            if _is_relu(q, mods) and rep(a) in qset:
                continue  # fused: the producer's output is quantized at the Relu's output
            in_points.setdefault(rep(a), []).append(q)
    out_set = set(out_points)
    observers: list[_ActFakeQuant] = []

    def add_fq(after):
        name = f"_ac_fq{len(observers)}"
        observers.append(_ActFakeQuant())
        gm.add_submodule(name, observers[-1])
        with gm.graph.inserting_after(after):
            return gm.graph.call_module(name, (after,))

    for q in out_points:
        t = tail.get(q, q)
        old_users = list(t.users)
        fq = add_fq(t)
        for u in old_users:
            u.replace_input_with(t, fq)
    for src, consumers in in_points.items():
        if src in out_set:
            continue
        t = tail.get(src, src)
        fq = add_fq(t)
        for c in consumers:
            for a in list(c.all_input_nodes):
                if a is not fq and rep(a) is src:
                    c.replace_input_with(a, fq)
    gm.graph.lint()
    gm.recompile()
    return gm, observers


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
    quantized = {n: p for n, p in precisions.items() if p != "fp32"}
    target: nn.Module = model
    try:
        if quantized:
            try:
                target, observers = _insert_ort_fake_quant(model, precisions)
            except Exception:  # noqa: BLE001 - untraceable model: fake-quantize the layers' inputs only
                target, observers = model, []
                for name in quantized:
                    observers.append(_ActFakeQuant())
                    hooks.append(modules[name].register_forward_pre_hook(observers[-1].pre_hook))
        for name, prec in quantized.items():
            P.register_parametrization(modules[name], "weight", _WeightFakeQuant(*weight_range(prec, reduce_range)))
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


def _nodes_to_exclude(proto: onnx.ModelProto, *, quantized_nodes: set[str], layer_nodes: set[str]) -> list[str]:
    """Nodes to leave in float: fp32 layers, and every region of other ops (Add, pooling, ...) that
    touches an fp32 layer.

    Quantizing the ops between quantized layers lets ORT keep tensors in uint8 (QLinearAdd,
    QLinearGlobalAveragePool): on MobileNetV2 that is the difference between int8 being faster than
    fp32 or not. Quantizing them next to a float layer would only add Quantize/Dequantize pairs.
    """
    graph = proto.graph
    producer = {o: n.name for n in graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.name)
    others = [n for n in graph.node if n.name not in layer_nodes]
    region = _regions([(n.name, [producer[i] for i in n.input if i in producer]) for n in others])
    region_ok: dict[str, bool] = {}
    for n in others:
        neighbours = ([producer[i] for i in n.input if i in producer]
                      + [c for o in n.output for c in consumers.get(o, [])])
        ok = all(m in quantized_nodes for m in neighbours if m in layer_nodes)
        root = region[n.name]
        region_ok[root] = region_ok.get(root, True) and ok
    excluded = [n.name for n in others if not region_ok[region[n.name]]]
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
    weight_fq = [m for m in model.modules() if isinstance(m, _WeightFakeQuant)]
    for o in observers:
        o.lo = o.hi = None
        o.calibrating = True
    for w in weight_fq:  # ORT calibrates the float model: float weights too
        w.enabled = False
    try:
        model.eval()
        for i in range(0, len(x), batch_size):
            model(torch.from_numpy(x[i : i + batch_size]))
    finally:
        for o in observers:
            o.calibrating = False
        for w in weight_fq:
            w.enabled = True


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
    reduce_range: bool = False,
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
    overrides = {f"{l}.weight": [{"quant_type": QuantType.QInt4, "axis": 0, "symmetric": True, "reduce_range": False}]
                 for l, p in quantized.items() if p == "int4"}
    exclude = _nodes_to_exclude(float_model, quantized_nodes={nodes[l] for l in quantized},
                                layer_nodes=set(nodes.values()))
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "float.onnx")
        onnx.save(float_model, src)
        _quantize(src, str(out_path), calib_x, exclude, overrides, reduce_range)
    return quantized


def _quantize(src: str, dst: str, calib_x: np.ndarray, exclude: list[str], overrides: dict, reduce_range: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with quiet_ort_quantization():
        quantize_static(
            src, dst, _Reader(calib_x),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=reduce_range,
            nodes_to_exclude=exclude,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False, "TensorQuantOverrides": overrides,
                           "OpTypesToExcludeOutputQuantization": ["Gemm", "MatMul"]},
        )


# What onnxruntime.quantization logs on every call that says nothing to a user of autocompress: the hint to run its
# pre-processing (quantize.py, in two wordings: before and after quantizing; autocompress folds BN itself and exports
# shape-inferred graphs) and the notice that int4 QDQ nodes go to the com.microsoft domain below opset 21
# (qdq_quantizer.py; that is how int4 layers are meant to run here).
_ORT_NOTICES = (
    "Please consider to run pre-processing before quantization",
    "Please consider pre-processing before quantization",
    "ONNX QuantizeLinear and DequantizeLinear operators do not support 16-bit/4-bit integer quantization types",
)


class _DropOrtNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_ORT_NOTICES)


@contextlib.contextmanager
def quiet_ort_quantization() -> Iterator[None]:
    """Within the block, the root logger drops ONNX Runtime's quantization notices (_ORT_NOTICES) and nothing else.

    onnxruntime.quantization logs them with `logging.warning(...)`, i.e. on the root logger itself, not on a named
    logger that could be silenced alone; so a filter that drops exactly those messages is attached to the root logger
    for the duration of the call and removed after it. Every other record, ORT's or anyone's, passes unchanged."""
    root, drop = logging.getLogger(), _DropOrtNotices()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
