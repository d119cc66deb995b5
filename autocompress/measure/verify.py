"""Check what an artifact really runs: which layers land on integer kernels after ORT's optimization."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import onnx

from autocompress.measure.latency import make_session

__all__ = ["INTEGER_OPS", "FLOAT_OPS", "kernel_report"]

INTEGER_OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat",
               "QGemm", "DynamicQuantizeMatMul", "NhwcQLinearConv"}
FLOAT_OPS = {"Conv", "FusedConv", "Gemm", "MatMul", "FusedGemm", "FusedMatMul", "NchwcConv"}


def _weight_layer(name: str) -> str | None:
    """`layer1.0.conv1.weight_quantized` / `layer1.0.conv1.weight` -> `layer1.0.conv1`."""
    stem = name.split(".weight")[0] if ".weight" in name else None
    return stem


def kernel_report(path: str | Path) -> dict:
    """Optimize `path` with ORT (extended level: QDQ fusions, no layout-specific ops) and classify layers.

    Returns {"integer_layers": [...], "float_layers": [...], "op_counts": {...}}: a layer is one whose
    `<layer>.weight` initializer feeds a conv/matmul kernel in the optimized graph.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "optimized.onnx")
        make_session(path, threads=1, optimized_path=out, level="extended")
        graph = onnx.load(out).graph
    inits = {i.name for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    integer, floating = set(), set()
    counts: Counter[str] = Counter()
    for node in graph.node:
        if node.op_type not in INTEGER_OPS | FLOAT_OPS:
            continue
        counts[node.op_type] += 1
        # weight: QLinearConv/QLinearMatMul/QGemm input 3, Conv/ConvInteger/Gemm input 1;
        # follow one DequantizeLinear back
        widx = 3 if node.op_type in ("QLinearConv", "QLinearMatMul", "NhwcQLinearConv", "QGemm") else 1
        if len(node.input) <= widx:
            continue
        w = node.input[widx]
        if w not in inits and w in producers and producers[w].op_type == "DequantizeLinear":
            w = producers[w].input[0]
        layer = _weight_layer(w)
        if layer is None:
            continue
        (integer if node.op_type in INTEGER_OPS else floating).add(layer)
    return {"integer_layers": sorted(integer), "float_layers": sorted(floating), "op_counts": dict(counts)}
