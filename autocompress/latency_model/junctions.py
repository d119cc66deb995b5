"""Pools between two layers ("junctions"), timed in context.

A layer timed alone cannot show what a pooling node between two convolutions costs: ONNX Runtime runs it on
integers, in its blocked float layout, or in plain NCHW floats depending on the precisions of the layers around it,
and the last is several times slower (docs/latency.md gives the figures). So each junction is timed as the graph
producer -> pool -> consumer at every precision pair, less the two layers alone, all three timed together in
interleaved passes (a difference of quick timings is only as good as the worst of them).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn as nn

from autocompress.latency_model.layers import (
    LayerKey,
    LayerSite,
    as_pair,
    layer_graph,
    layer_module,
    quantized_graph,
    site_keys,
)

__all__ = ["Junction", "JunctionKey", "find_junctions", "junction_keys", "all_junction_keys", "junction_graph",
           "junction_costs", "JUNCTION_PASSES"]


@dataclass(frozen=True)
class Junction:
    """A pooling node between a producer layer and the first layer that reads it."""

    producer: str
    consumer: str
    op: str  # "MaxPool" or "AveragePool"
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    ceil_mode: bool = False
    relu: bool = False  # a Relu between the producer and the pool
    count_include_pad: bool = False  # AveragePool only

    def pool(self) -> nn.Module:
        if self.op == "MaxPool":
            return nn.MaxPool2d(self.kernel, self.stride, self.padding, ceil_mode=self.ceil_mode)
        return nn.AvgPool2d(self.kernel, self.stride, self.padding, ceil_mode=self.ceil_mode,
                            count_include_pad=self.count_include_pad)


@dataclass(frozen=True)
class JunctionKey:
    """A junction at one configuration: the producer and the consumer as they are then (the consumer at its full
    output width: the pool's cost does not depend on it). Its table entry is what the pool adds (`junction_cost`)."""

    junction: Junction
    producer: LayerKey
    consumer: LayerKey

    def text(self) -> str:
        j = self.junction
        pool = (f"{j.op} k{'x'.join(map(str, j.kernel))} s{'x'.join(map(str, j.stride))} "
                f"p{'x'.join(map(str, j.padding))} c{int(j.ceil_mode)} r{int(j.relu)} i{int(j.count_include_pad)}")
        return f"junction cost {pool} | {self.producer.text()} | {self.consumer.text()}"


# ops a junction's path may pass through: they change neither channels nor layout
_PASS = {"Relu", "BatchNormalization", "Identity"}


def find_junctions(model: nn.Module, example: torch.Tensor, sites: list[LayerSite]) -> list[Junction]:
    """The pooling nodes (not global ones) of the model's ONNX graph that sit between two of its layers."""
    from autocompress.pipeline.export import export_onnx, fold_batchnorm, layer_nodes

    folded = copy.deepcopy(model).eval()
    fold_batchnorm(folded, example)  # as a trial's artifact: its layers keep their weight names
    proto = export_onnx(folded, example)
    layer_of = {node: name for name, node in layer_nodes(proto, [s.name for s in sites]).items()}
    made_by = {out: n for n in proto.graph.node for out in n.output}
    read_by: dict[str, list] = {}
    for n in proto.graph.node:
        for i in n.input:
            read_by.setdefault(i, []).append(n)
    out = []
    for n in proto.graph.node:
        if n.op_type not in ("MaxPool", "AveragePool"):
            continue
        producer, relu = _upstream_layer(n, made_by, layer_of)
        consumer = _downstream_layer(n, read_by, layer_of)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if producer is None or consumer is None or len(pads) != 4 or pads[:2] != pads[2:] \
                or attrs.get("auto_pad", b"NOTSET") != b"NOTSET" \
                or any(d != 1 for d in attrs.get("dilations", [1, 1])):
            continue
        out.append(Junction(producer, consumer, n.op_type, as_pair(list(attrs["kernel_shape"])),
                            as_pair(list(attrs.get("strides", [1, 1]))), as_pair(pads[:2]),
                            bool(attrs.get("ceil_mode", 0)), relu, bool(attrs.get("count_include_pad", 0))))
    return out


def _upstream_layer(node, made_by: dict, layer_of: dict) -> tuple[str | None, bool]:
    relu = False
    n = made_by.get(node.input[0])
    while n is not None and n.name not in layer_of:
        if n.op_type not in _PASS:
            return None, relu
        relu = relu or n.op_type == "Relu"
        n = made_by.get(n.input[0])
    return (layer_of[n.name] if n is not None else None), relu


def _downstream_layer(node, read_by: dict, layer_of: dict) -> str | None:
    """The first layer reading the pool's output (through pass-through ops only)."""
    todo = list(read_by.get(node.output[0], []))
    while todo:
        n = todo.pop(0)
        if n.name in layer_of:
            return layer_of[n.name]
        if n.op_type in _PASS:
            todo += read_by.get(n.output[0], [])
    return None


def junction_keys(sites: list[LayerSite], junctions: list[Junction], keys: list[LayerKey]) -> list[JunctionKey]:
    """The junction entries of the configuration whose layer entries are `keys` (one per site, in order)."""
    by_name = {s.name: (s, k) for s, k in zip(sites, keys, strict=True)}
    out = []
    for j in junctions:
        producer = by_name[j.producer][1]
        consumer_site, consumer = by_name[j.consumer]
        out.append(JunctionKey(j, producer, _consumer_key(consumer_site, producer.cout, consumer.precision)))
    return out


def all_junction_keys(sites: list[LayerSite], junctions: list[Junction], space) -> list[JunctionKey]:
    """Each junction at each width and precision its producer may take and each precision of its consumer."""
    by_name = {s.name: s for s in sites}
    precisions = {layer.name: layer.precisions for layer in space.layers}
    return [JunctionKey(j, pk, _consumer_key(by_name[j.consumer], pk.cout, p))
            for j in junctions for pk in site_keys(by_name[j.producer], space)
            for p in precisions.get(j.consumer, ["fp32"])]


def _consumer_key(s: LayerSite, cin: int, precision: str) -> LayerKey:
    cout = cin if s.depthwise else s.cout
    return LayerKey(s.kind, cin, cout, s.kernel, s.stride, s.padding, s.dilation, cin if s.depthwise else s.groups,
                    s.hw, precision)


class _Junction(nn.Module):
    def __init__(self, a: nn.Module, pool: nn.Module, b: nn.Module, relu: bool) -> None:
        super().__init__()
        self.a, self.pool, self.b, self.relu = a, pool, b, relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.b(self.pool(torch.relu(y) if self.relu else y))


def junction_graph(key: JunctionKey, *, reduce_range: bool = False) -> tuple[bytes, tuple[int, ...]]:
    """The graph producer -> pool -> consumer of `key`, quantized as a trial would quantize the two layers."""
    a, shape = layer_module(key.producer)
    b, _ = layer_module(key.consumer)
    model = _Junction(a, key.junction.pool(), b, key.junction.relu)
    precisions = {"a": key.producer.precision, "b": key.consumer.precision}
    return quantized_graph(model, shape, precisions, reduce_range), shape


JUNCTION_PASSES = 3  # interleaved passes over a chunk's graphs; each graph's fastest pass counts


def junction_costs(keys: list[JunctionKey], time_graphs, *, reduce_range: bool = False) -> list[float]:
    """What each junction's pool adds (ms): its pair graph's time less its producer's and consumer's alone, the
    three timed in the same passes (`time_graphs`: a list of (graph, input shape) -> ms each)."""
    graphs = [g for k in keys for g in (junction_graph(k, reduce_range=reduce_range),
                                        layer_graph(k.producer, reduce_range=reduce_range),
                                        layer_graph(k.consumer, reduce_range=reduce_range))]
    best = np.min([time_graphs(graphs) for _ in range(JUNCTION_PASSES)], axis=0)
    return [float(best[3 * i] - best[3 * i + 1] - best[3 * i + 2]) for i in range(len(keys))]
