"""A measured latency model of the device: every layer timed alone at every channel count and precision the
search space offers, summed per configuration and calibrated on whole models measured the usual way.

Why per layer: a configuration's latency is mostly the sum of its convolutions', and a convolution's time
depends only on its operator, the input it sees, its channel counts and its precision, so a table of a few
hundred one-layer graphs predicts millions of configurations before anything is trained. What the table
misses (residual Adds, pooling, the Quantize/Dequantize pairs a lone int8 layer has at its edges but a chain of
int8 layers shares) is absorbed by a straight-line fit on whole models the search measures anyway (its uniform
baselines, random proxies, then every trial).

One thing a layer timed alone cannot show is a pooling layer between two convolutions: ONNX Runtime runs it on
integers, in its blocked float layout, or in plain NCHW floats depending on the precisions of the layers around it,
and the last is several times slower (ResNet-18's stem max-pool costs about as much as three stem convolutions
between a float stem and an int8 first block). So each such junction is timed as the graph producer -> pool ->
consumer at every precision pair, less the two layers alone, all three timed together in interleaved passes (a
difference of quick timings is only as good as the worst of them).
"""

from __future__ import annotations

import copy
import hashlib
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
import torch
import torch.nn as nn

from autocompress.fileio import atomic_write_text

__all__ = ["LayerSite", "LayerKey", "Junction", "JunctionKey", "wire_layers", "find_junctions", "layer_keys",
           "junction_keys", "layer_graph", "junction_graph", "junction_costs", "time_graph", "LatencyTable",
           "LatencyModel", "Fit", "all_keys", "config_graph"]


@dataclass(frozen=True)
class LayerSite:
    """One conv / linear layer of the unpruned model and how the space's groups change its channel counts."""

    name: str
    kind: str  # "conv" or "linear"
    cin: int
    cout: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    depthwise: bool = False  # groups follows the channel count (groups == cin == cout)
    hw: tuple[int, int] = (1, 1)  # the input's height and width
    # channels removed from cin / cout per channel a group removes: {group: per-channel delta} (a conv after a
    # concatenation loses channels from several groups; a linear layer after a flatten loses H*W per channel)
    in_per: tuple[tuple[str, float], ...] = ()
    out_per: tuple[tuple[str, float], ...] = ()

    def channels(self, removed: dict[str, int]) -> tuple[int, int]:
        """(cin, cout) when each group has lost `removed[group]` channels."""
        cin = self.cin - sum(d * removed.get(g, 0) for g, d in self.in_per)
        cout = self.cout - sum(d * removed.get(g, 0) for g, d in self.out_per)
        return max(1, round(cin)), max(1, round(cout))


@dataclass(frozen=True)
class LayerKey:
    """What a one-layer graph's time depends on: the table's key."""

    kind: str
    cin: int
    cout: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    hw: tuple[int, int]
    precision: str

    def text(self) -> str:
        k, s, p, d = ("x".join(map(str, v)) for v in (self.kernel, self.stride, self.padding, self.dilation))
        return (f"{self.kind} k{k} s{s} p{p} d{d} g{self.groups} {self.hw[0]}x{self.hw[1]} "
                f"{self.cin}->{self.cout} {self.precision}")


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


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _sites_of(model: nn.Module, example: torch.Tensor) -> dict[str, LayerSite]:
    """Every conv / linear layer with the input size it sees, unpruned."""
    seen: dict[str, tuple[int, ...]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp, name=name: seen.__setitem__(name, tuple(inp[0].shape)))
             for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    sites = {}
    for name, m in model.named_modules():
        if name not in seen:
            continue
        if isinstance(m, nn.Conv2d):
            shape = seen[name]
            sites[name] = LayerSite(name, "conv", m.in_channels, m.out_channels, _pair(m.kernel_size),
                                    _pair(m.stride), _pair(m.padding), _pair(m.dilation), m.groups,
                                    m.groups > 1 and m.groups == m.in_channels == m.out_channels,
                                    (int(shape[2]), int(shape[3])))
        elif len(seen[name]) == 2:  # a linear layer on a flat vector (a classifier); others are left out
            sites[name] = LayerSite(name, "linear", m.in_features, m.out_features)
    return sites


def _io_channels(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {n: ((m.in_channels, m.out_channels) if isinstance(m, nn.Conv2d) else (m.in_features, m.out_features))
            for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def wire_layers(model: nn.Module, example: torch.Tensor, space) -> list[LayerSite]:
    """The model's layers, each with the groups that change its channel counts: found by pruning each group alone
    to its smallest choice and seeing which layers' channel counts move (so no structure is assumed)."""
    from autocompress.pipeline.prune import prune_model

    sites = _sites_of(model, example)
    before = _io_channels(model)
    in_per: dict[str, list] = {n: [] for n in sites}
    out_per: dict[str, list] = {n: [] for n in sites}
    for g in space.groups:
        # its smallest choice; a group the space does not prune, by half (a uniform baseline may prune it)
        ratio = g.ratios[-1] if g.kept[-1] < g.channels else 0.5
        pruned = copy.deepcopy(model)
        try:
            before_after = prune_model(pruned, example, {g.name: ratio}, round_to=space.round_to,
                                       min_channels=space.min_channels)
        except Exception:  # noqa: BLE001 - a group that cannot be cut at all changes no layer's channels
            continue
        removed = before_after[g.name][0] - before_after[g.name][1]
        if removed <= 0:
            continue
        for name, (cin, cout) in _io_channels(pruned).items():
            if name not in sites:
                continue
            if cin != before[name][0]:
                in_per[name].append((g.name, (before[name][0] - cin) / removed))
            if cout != before[name][1]:
                out_per[name].append((g.name, (before[name][1] - cout) / removed))
    return [LayerSite(**{**asdict(s), "in_per": tuple(in_per[n]), "out_per": tuple(out_per[n])})
            for n, s in sites.items()]


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
        out.append(Junction(producer, consumer, n.op_type, _pair(list(attrs["kernel_shape"])),
                            _pair(list(attrs.get("strides", [1, 1]))), _pair(pads[:2]),
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


def _removed(space, ratios: dict[str, float]) -> dict[str, int]:
    """Channels each group loses at `ratios` (any ratio, not only the space's choices: the uniform baselines)."""
    from autocompress.pipeline.prune import kept_channels

    return {g.name: g.channels - kept_channels(g.channels, ratios.get(g.name, 0.0), round_to=space.round_to,
                                               min_channels=space.min_channels, channel_groups=g.channel_groups)
            for g in space.groups}


def layer_keys(sites: list[LayerSite], space, ratios: dict[str, float], precisions: dict[str, str]) -> list[LayerKey]:
    """The table entries one configuration is made of."""
    removed = _removed(space, ratios)
    keys = []
    for s in sites:
        cin, cout = s.channels(removed)
        groups = cin if s.depthwise else s.groups
        keys.append(LayerKey(s.kind, cin, cout, s.kernel, s.stride, s.padding, s.dilation, groups, s.hw,
                             precisions.get(s.name, "fp32")))
    return keys


def junction_keys(sites: list[LayerSite], junctions: list[Junction], keys: list[LayerKey]) -> list[JunctionKey]:
    """The junction entries of the configuration whose layer entries are `keys` (one per site, in order)."""
    by_name = {s.name: (s, k) for s, k in zip(sites, keys, strict=True)}
    out = []
    for j in junctions:
        producer = by_name[j.producer][1]
        consumer_site, consumer = by_name[j.consumer]
        out.append(JunctionKey(j, producer, _consumer_key(consumer_site, producer.cout, consumer.precision)))
    return out


def _consumer_key(s: LayerSite, cin: int, precision: str) -> LayerKey:
    cout = cin if s.depthwise else s.cout
    return LayerKey(s.kind, cin, cout, s.kernel, s.stride, s.padding, s.dilation, cin if s.depthwise else s.groups,
                    s.hw, precision)


def all_keys(sites: list[LayerSite], space, junctions: list[Junction] = ()) -> list[LayerKey | JunctionKey]:
    """Every table entry the space can reach: each layer at each channel count its groups offer, at each precision
    it may take (layers the space does not quantize stay fp32), and each junction at each producer width and
    precision pair."""
    out: dict = {}
    for s in sites:
        out.update(dict.fromkeys(_site_keys(s, space)))
    by_name = {s.name: s for s in sites}
    for j in junctions:
        for pk in _site_keys(by_name[j.producer], space):
            for p in _precisions_of(space).get(j.consumer, ["fp32"]):
                out[JunctionKey(j, pk, _consumer_key(by_name[j.consumer], pk.cout, p))] = None
    return list(out)


def _precisions_of(space) -> dict[str, list[str]]:
    return {layer.name: layer.precisions for layer in space.layers}


def _site_keys(s: LayerSite, space) -> list[LayerKey]:
    """`s` at each channel count its groups offer and each precision it may take."""
    kept = {g.name: [g.channels - k for k in g.kept] for g in space.groups}
    keys = []
    for rin in _combos([g for g, _ in s.in_per], kept):
        for rout in _combos([g for g, _ in s.out_per], kept):
            cin, cout = s.channels({**rin, **rout})
            groups = cin if s.depthwise else s.groups
            for p in _precisions_of(space).get(s.name, ["fp32"]):
                keys.append(LayerKey(s.kind, cin, cout, s.kernel, s.stride, s.padding, s.dilation, groups, s.hw, p))
    return list(dict.fromkeys(keys))


def _combos(groups: list[str], removed: dict[str, list[int]]) -> list[dict[str, int]]:
    combos: list[dict[str, int]] = [{}]
    for g in dict.fromkeys(groups):
        combos = [{**c, g: r} for c in combos for r in removed[g]]
    return combos


class _One(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class _RandomImages:
    """Calibration batches for a one-layer graph: its time does not depend on the values."""

    def __init__(self, shape: tuple[int, ...], n: int = 4) -> None:
        self.shape, self.n = shape, n

    def batches(self, batch_size: int):
        g = torch.Generator().manual_seed(0)
        for _ in range(self.n):
            yield torch.randn((2, *self.shape), generator=g), None


def _layer_of(key: LayerKey) -> tuple[nn.Module, tuple[int, ...]]:
    """A layer of `key`'s shape and its input shape (without the batch)."""
    if key.kind == "conv":
        return (nn.Conv2d(key.cin, key.cout, key.kernel, key.stride, key.padding, key.dilation, key.groups, bias=True),
                (key.cin, *key.hw))
    return nn.Linear(key.cin, key.cout), (key.cin,)


def _quantized(model: nn.Module, shape: tuple[int, ...], precisions: dict[str, str], reduce_range: bool) -> bytes:
    """`model` exported and quantized as a trial would quantize its layers at `precisions`."""
    from autocompress.pipeline.export import export_onnx, layer_nodes
    from autocompress.pipeline.quantize import quantize_static_onnx

    proto = export_onnx(model.eval(), torch.randn(1, *shape))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "graph.onnx"
        quantize_static_onnx(proto, path, precisions=precisions, nodes=layer_nodes(proto, list(precisions)),
                             calib=_RandomImages(shape), reduce_range=reduce_range)
        return path.read_bytes()


def layer_graph(key: LayerKey, *, reduce_range: bool = False) -> tuple[bytes, tuple[int, ...]]:
    """The one-layer ONNX graph of `key`, quantized as a trial would quantize that layer, and its input shape
    (without the batch)."""
    layer, shape = _layer_of(key)
    return _quantized(_One(layer), shape, {"layer": key.precision}, reduce_range), shape


class _Junction(nn.Module):
    def __init__(self, a: nn.Module, pool: nn.Module, b: nn.Module, relu: bool) -> None:
        super().__init__()
        self.a, self.pool, self.b, self.relu = a, pool, b, relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.b(self.pool(torch.relu(y) if self.relu else y))


def junction_graph(key: JunctionKey, *, reduce_range: bool = False) -> tuple[bytes, tuple[int, ...]]:
    """The graph producer -> pool -> consumer of `key`, quantized as a trial would quantize the two layers."""
    a, shape = _layer_of(key.producer)
    b, _ = _layer_of(key.consumer)
    model = _Junction(a, key.junction.pool(), b, key.junction.relu)
    return _quantized(model, shape, {"a": key.producer.precision, "b": key.consumer.precision}, reduce_range), shape


def time_graph(data: bytes, input_shape: tuple[int, ...], *, threads: int, batch: int = 1, sessions: int = 2,
               min_reps: int = 30, min_seconds: float = 0.02) -> float:
    """Median milliseconds of one run, the fastest of `sessions` fresh sessions: a quick timing for table entries
    (each is a small part of a model; the whole models are measured the careful way)."""
    from autocompress.measure.latency import make_session

    x = np.random.default_rng(0).standard_normal((batch, *input_shape)).astype(np.float32)
    medians = []
    for _ in range(sessions):
        sess = make_session(data, threads=threads)
        feed = {sess.get_inputs()[0].name: x}
        for _ in range(5):
            sess.run(None, feed)
        samples: list[float] = []
        start = time.perf_counter()
        while len(samples) < min_reps or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter_ns()
            sess.run(None, feed)
            samples.append((time.perf_counter_ns() - t0) / 1e6)
        medians.append(statistics.median(samples))
    return min(medians)


JUNCTION_PASSES = 3  # interleaved passes over a chunk's graphs; each graph's fastest pass counts


def junction_costs(keys: list[JunctionKey], time_graphs, *, reduce_range: bool = False) -> list[float]:
    """What each junction's pool adds (ms): its pair graph's time less its producer's and consumer's alone, the
    three timed in the same passes (`time_graphs`: a list of (graph, input shape) -> ms each)."""
    graphs = [g for k in keys for g in (junction_graph(k, reduce_range=reduce_range),
                                        layer_graph(k.producer, reduce_range=reduce_range),
                                        layer_graph(k.consumer, reduce_range=reduce_range))]
    best = np.min([time_graphs(graphs) for _ in range(JUNCTION_PASSES)], axis=0)
    return [float(best[3 * i] - best[3 * i + 1] - best[3 * i + 2]) for i in range(len(keys))]


def config_graph(model: nn.Module, example: torch.Tensor, space, ratios: dict[str, float],
                 precisions: dict[str, str], *, reduce_range: bool = False) -> bytes:
    """The ONNX artifact a trial with this configuration would ship, built from `model` without training: the
    same graph (operators, shapes, types) and so the same latency; only the weight values differ."""
    from autocompress.pipeline.export import export_onnx, fold_batchnorm, layer_nodes
    from autocompress.pipeline.prune import channel_counts, prune_model
    from autocompress.pipeline.quantize import quantize_static_onnx

    pruned = copy.deepcopy(model).eval()
    prune_model(pruned, example, {k: v for k, v in ratios.items() if v > 0}, round_to=space.round_to,
                min_channels=space.min_channels)
    fold_batchnorm(pruned, example)
    proto = export_onnx(pruned, example)
    nodes = layer_nodes(proto, list(channel_counts(pruned)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        quantize_static_onnx(proto, path, precisions=precisions, nodes=nodes,
                             calib=_RandomImages(tuple(example.shape[1:])), reduce_range=reduce_range)
        return path.read_bytes()


class LatencyTable:
    """Milliseconds per LayerKey (and JunctionKey) on one device with one set of latency settings, cached on disk."""

    def __init__(self, path: Path | None = None, entries: dict[str, float] | None = None) -> None:
        self.path = path
        self.entries: dict[str, float] = dict(entries or {})
        if path is not None and path.is_file():
            self.entries.update(json.loads(path.read_text()).get("entries", {}))

    @staticmethod
    def file_for(root: Path, device: dict, settings: dict, reduce_range: bool) -> Path:
        key = json.dumps({"device": device, "settings": settings, "reduce_range": reduce_range, "v": 1},
                         sort_keys=True)
        return root / "latency-table" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"

    def missing(self, keys: Iterable[LayerKey | JunctionKey]) -> list[LayerKey | JunctionKey]:
        return [k for k in dict.fromkeys(keys) if k.text() not in self.entries]

    def record(self, keys: list[LayerKey], times: list[float]) -> None:
        """Timings of `keys`, saved at once (a killed search keeps what it measured)."""
        for k, t in zip(keys, times, strict=True):
            self.entries[k.text()] = round(float(t), 5)
        if self.path is not None:
            atomic_write_text(self.path, json.dumps({"entries": self.entries}, indent=0))

    def total(self, keys: list[LayerKey]) -> float:
        return sum(self.entries[k.text()] for k in keys)

    def junction_cost(self, key: JunctionKey) -> float:
        """What the pool adds between its two layers (`junction_costs`)."""
        return self.entries[key.text()]


# The fit's features, per configuration: a constant (the model's own overhead), the table's sums per precision, the
# elements of the tensors that cross between float and integer layers (their Quantize/Dequantize pairs), and what
# the junctions' pools add.
FEATURES = ("overhead_ms", "fp32_sum", "fp16_sum", "int8_sum", "int4_sum", "crossing_melems", "junction_ms")
_PRIOR = (0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0)  # the plain table sum, until measurements say otherwise
_RIDGE = 0.05  # the prior weighs as much as a twentieth of one measured model


@dataclass(frozen=True)
class Fit:
    """measured ~= weights . features, least squares on the relative error over the whole models measured, pulled
    towards the plain table sum (ridge) so that a few anchors cannot swing the coefficients they do not inform."""

    weights: tuple[float, ...] = _PRIOR
    anchors: int = 0

    @staticmethod
    def of(points: list[tuple[np.ndarray, float]]) -> Fit:
        """`points`: (features, measured ms) of whole models."""
        if not points:
            return Fit()
        x = np.array([f for f, _ in points], dtype=float)
        y = np.array([m for _, m in points], dtype=float)
        xr = x / y[:, None]  # relative error: a 0.3 ms model counts as much as a 30 ms one
        a = xr.T @ xr + _RIDGE * np.eye(len(FEATURES))
        b = xr.T @ np.ones(len(y)) + _RIDGE * np.array(_PRIOR)
        return Fit(tuple(float(w) for w in np.linalg.solve(a, b)), len(points))

    def __call__(self, features: np.ndarray) -> float:
        return float(np.dot(self.weights, features))

    def as_dict(self) -> dict:
        return {"features": list(FEATURES), "weights": [round(w, 5) for w in self.weights], "anchors": self.anchors}


@dataclass
class LatencyModel:
    """Predicts a configuration's latency (ms) from the table and the fit."""

    sites: list[LayerSite]
    space: object  # SearchSpace
    table: LatencyTable
    fit: Fit = Fit()
    junctions: list[Junction] = field(default_factory=list)

    def keys(self, ratios: dict[str, float], precisions: dict[str, str]) -> tuple[list[LayerKey], list[JunctionKey]]:
        """The table entries of a configuration: one per layer, one per junction."""
        keys = layer_keys(self.sites, self.space, ratios, precisions)
        return keys, junction_keys(self.sites, self.junctions, keys)

    def total(self, ratios: dict[str, float], precisions: dict[str, str]) -> float:
        """The plain table sum: the layers and what the junctions add."""
        keys, joints = self.keys(ratios, precisions)
        return self.table.total(keys) + sum(self.table.junction_cost(k) for k in joints)

    def features(self, ratios: dict[str, float], precisions: dict[str, str]) -> np.ndarray:
        keys, joints = self.keys(ratios, precisions)
        sums = {p: 0.0 for p in ("fp32", "fp16", "int8", "int4")}
        for k in keys:
            sums[k.precision if k.precision in sums else "fp32"] += self.table.entries[k.text()]
        crossing = _crossing_elements(self.sites, keys, _removed(self.space, ratios))
        junction = sum(self.table.junction_cost(k) for k in joints)
        return np.array([1.0, sums["fp32"], sums["fp16"], sums["int8"], sums["int4"], crossing / 1e6, junction])

    def predict(self, ratios: dict[str, float], precisions: dict[str, str]) -> float:
        return self.fit(self.features(ratios, precisions))


def _crossing_elements(sites: list[LayerSite], keys: list[LayerKey], removed: dict[str, int]) -> float:
    """Elements of the channel spaces (groups) written or read by both float and integer layers: where a trial's
    artifact has Quantize/Dequantize pairs between its layers."""
    kinds: dict[str, set[bool]] = {}
    size: dict[str, float] = {}
    for s, k in zip(sites, keys, strict=True):
        is_int = k.precision not in ("fp32", "fp16")
        for g, _ in (*s.in_per, *s.out_per):
            kinds.setdefault(g, set()).add(is_int)
        for g, _ in s.in_per:  # the tensor a reader sees: its channels of this group at its input size
            size[g] = max(size.get(g, 0.0), float(k.cin) * k.hw[0] * k.hw[1])
    return sum(size.get(g, 0.0) for g, seen in kinds.items() if len(seen) > 1)
