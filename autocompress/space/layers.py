"""Which layers of a model can be quantized: those whose weights reach a Conv/Gemm/MatMul node of its ONNX graph."""

from __future__ import annotations

import copy

import torch

from autocompress.pipeline.export import export_onnx, fold_batchnorm, layer_nodes
from autocompress.pipeline.prune import channel_counts

__all__ = ["quantizable_layers"]


def quantizable_layers(model: torch.nn.Module, example: torch.Tensor) -> tuple[list[str], dict[str, str]]:
    """Layers whose weights reach a Conv/Gemm/MatMul node of the exported graph, and the ones excluded (why)."""
    m = copy.deepcopy(model).eval()
    fold_batchnorm(m, example)
    proto = export_onnx(m, example)
    names = list(channel_counts(m))
    nodes = layer_nodes(proto, names)
    excluded = {n: "no Conv/Gemm node of the exported graph reads its weight" for n in names if n not in nodes}
    return [n for n in names if n in nodes], excluded
