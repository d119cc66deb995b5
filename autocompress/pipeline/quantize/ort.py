"""The ONNX Runtime side: static QDQ quantization of the exported model, and quieting ORT's quantization notices."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx

from autocompress.pipeline.quantize.format import FLOAT_PRECISIONS
from autocompress.pipeline.quantize.regions import _regions
from autocompress.tasks.splitting import Split


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


class _Reader:
    """CalibrationDataReader over a split's images, a few per batch, read as ORT asks for them."""

    def __init__(self, data: Split, batch: int = 16) -> None:
        self._data, self._batch = data, batch
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._batches, None)
        return None if x is None else {"input": x[0].numpy()}

    def rewind(self) -> None:
        self._batches = iter(self._data.batches(self._batch))


def quantize_static_onnx(
    float_model: onnx.ModelProto,
    out_path: str | Path,
    *,
    precisions: dict[str, str],
    nodes: dict[str, str],
    calib: Split,
    reduce_range: bool = False,
) -> dict[str, str]:
    """Write the deployable artifact to `out_path` and return {layer: precision actually requested}.

    All-fp32 configurations are saved unchanged. Otherwise U8S8 static QDQ (per-channel weights),
    calibrated with MinMax on the images of `calib`; fp32 layers are excluded by node name, int4 layers get a
    per-channel QInt4 override on their weight.
    """
    from onnxruntime.quantization import QuantType

    quantized = {l: p for l, p in precisions.items() if p not in FLOAT_PRECISIONS and l in nodes}
    halves = [l for l, p in precisions.items() if p == "fp16" and l in nodes]
    if not quantized:
        onnx.save(_with_half_weights(float_model, halves), str(out_path))
        return {l: "fp16" for l in halves}
    overrides = {f"{l}.weight": [{"quant_type": QuantType.QInt4, "axis": 0, "symmetric": True, "reduce_range": False}]
                 for l, p in quantized.items() if p == "int4"}
    exclude = _nodes_to_exclude(float_model, quantized_nodes={nodes[l] for l in quantized},
                                layer_nodes=set(nodes.values()))
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "float.onnx")
        onnx.save(float_model, src)
        _quantize(src, str(out_path), calib, exclude, overrides, reduce_range)
    if halves:  # calibrated on the float weights, as the PyTorch side is (fake.calibrate_activations)
        onnx.save(_with_half_weights(onnx.load(str(out_path)), halves), str(out_path))
    return {**quantized, **{l: "fp16" for l in halves}}


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


def _with_half_weights(proto: onnx.ModelProto, layers: list[str]) -> onnx.ModelProto:
    """`<layer>.weight` of each layer stored as float16, cast back to float32 where the layer reads it."""
    if not layers:
        return proto
    from onnx import helper, numpy_helper

    proto = _copy(proto)  # the caller's float model stays as it was
    graph = proto.graph
    names = {f"{l}.weight" for l in layers}
    casts = []
    for init in list(graph.initializer):
        if init.name in names and init.data_type == onnx.TensorProto.FLOAT:
            half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), f"{init.name}.fp16")
            graph.initializer.remove(init)
            graph.initializer.append(half)
            casts.append(helper.make_node("Cast", [half.name], [init.name], name=f"{init.name}.cast",
                                          to=onnx.TensorProto.FLOAT))
    for node in reversed(casts):  # first in the graph: the nodes stay in topological order
        graph.node.insert(0, node)
    return proto


def _quantize(src: str, dst: str, calib: Split, exclude: list[str], overrides: dict, reduce_range: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with quiet_ort_quantization():
        quantize_static(
            src, dst, _Reader(calib),
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
