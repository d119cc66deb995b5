"""BatchNorm folding and ONNX export, with an exact map from PyTorch layers to ONNX nodes.

BatchNorm is folded into the preceding conv *before* fine-tuning, so the weights that are fake-quantized
during fine-tuning are exactly the weights that ONNX Runtime quantizes. Since nothing is folded at
export time, each Conv/Gemm node's weight initializer keeps its PyTorch name (`layer1.0.conv1.weight`),
which is how a per-layer precision reaches the right node.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from autocompress.pipeline.hooks import run_hooked

__all__ = ["fold_batchnorm", "export_onnx", "layer_nodes", "QUANTIZABLE_OPS"]

QUANTIZABLE_OPS = ("Conv", "Gemm", "MatMul")


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """Fold every BatchNorm2d that directly consumes a Conv2d's output into that conv (in place).

    Returns the (conv, bn) pairs folded. The model must be in eval mode semantics afterwards: the
    BatchNorm becomes Identity and the conv gains the bias.
    """
    produced: dict[int, str] = {}
    keep_alive: list[torch.Tensor] = []
    pairs: list[tuple[str, str]] = []
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            def conv_hook(mod, inp, out, name=name):
                produced[id(out)] = name
                keep_alive.append(out)
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.BatchNorm2d):
            def bn_hook(mod, inp, name=name):
                if id(inp[0]) in produced:
                    pairs.append((produced[id(inp[0])], name))
            hooks.append(m.register_forward_pre_hook(bn_hook))
    run_hooked(model, example, hooks)
    modules = dict(model.named_modules())
    for conv_name, bn_name in pairs:
        fused = fuse_conv_bn_eval(modules[conv_name], modules[bn_name])
        model.set_submodule(conv_name, fused)
        model.set_submodule(bn_name, nn.Identity())
    return pairs


def export_onnx(
    model: nn.Module, example: torch.Tensor, path: str | Path | None = None, *, opset: int = 17
) -> onnx.ModelProto:
    """Export with a dynamic batch axis (input `input`, output `logits`); optionally save to `path`."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), (example,), buf, dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, do_constant_folding=True,
        )
    proto = onnx.load_from_string(buf.getvalue())
    _inline_identity_initializers(proto)
    onnx.checker.check_model(proto)
    if path is not None:
        onnx.save(proto, str(path))
    return proto


def _inline_identity_initializers(proto: onnx.ModelProto) -> None:
    """Replace `Identity(initializer)` nodes by the initializer itself.

    The exporter deduplicates equal constants (e.g. the all-zero biases of freshly folded BatchNorms)
    behind Identity nodes. A Conv whose bias comes from a node instead of an initializer is left
    unquantized by the QDQ quantizer and then never fuses into QLinearConv.
    """
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias: dict[str, str] = {}
    for node in list(graph.node):
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            alias[node.output[0]] = node.input[0]
            graph.node.remove(node)
    if not alias:
        return
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]


def layer_nodes(proto: onnx.ModelProto, layers: list[str]) -> dict[str, str]:
    """Map each PyTorch layer name to the ONNX node that consumes `<layer>.weight`."""
    by_weight = {}
    for node in proto.graph.node:
        if node.op_type in QUANTIZABLE_OPS and len(node.input) > 1:
            by_weight[node.input[1]] = node.name
    return {layer: by_weight[f"{layer}.weight"] for layer in layers if f"{layer}.weight" in by_weight}
