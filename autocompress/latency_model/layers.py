"""The layers of a model as the latency model sees them: each conv / linear layer with the input size it sees and
the groups that set its channel counts (found by pruning each group alone), the table keys of a configuration,
and the one-layer graphs timed for them.

Why per layer: a configuration's latency is mostly the sum of its convolutions', and a convolution's time
depends only on its operator, the input it sees, its channel counts and its precision, so a table of a few
hundred one-layer graphs predicts millions of configurations before anything is trained.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from autocompress.pipeline.hooks import run_hooked

__all__ = ["LayerSite", "LayerKey", "wire_layers", "layer_keys", "site_keys", "removed_channels", "layer_graph",
           "time_graph", "config_graph", "layer_module", "quantized_graph", "as_pair"]


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


def as_pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _sites_of(model: nn.Module, example: torch.Tensor) -> dict[str, LayerSite]:
    """Every conv / linear layer with the input size it sees, unpruned."""
    seen: dict[str, tuple[int, ...]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp, name=name: seen.__setitem__(name, tuple(inp[0].shape)))
             for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    run_hooked(model, example, hooks)
    sites = {}
    for name, m in model.named_modules():
        if name not in seen:
            continue
        if isinstance(m, nn.Conv2d):
            shape = seen[name]
            sites[name] = LayerSite(name, "conv", m.in_channels, m.out_channels, as_pair(m.kernel_size),
                                    as_pair(m.stride), as_pair(m.padding), as_pair(m.dilation), m.groups,
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


def removed_channels(space, ratios: dict[str, float]) -> dict[str, int]:
    """Channels each group loses at `ratios` (any ratio, not only the space's choices: the uniform baselines)."""
    from autocompress.pipeline.prune import kept_channels

    return {g.name: g.channels - kept_channels(g.channels, ratios.get(g.name, 0.0), round_to=space.round_to,
                                               min_channels=space.min_channels, channel_groups=g.channel_groups)
            for g in space.groups}


def layer_keys(sites: list[LayerSite], space, ratios: dict[str, float], precisions: dict[str, str]) -> list[LayerKey]:
    """The table entries one configuration is made of."""
    removed = removed_channels(space, ratios)
    keys = []
    for s in sites:
        cin, cout = s.channels(removed)
        groups = cin if s.depthwise else s.groups
        keys.append(LayerKey(s.kind, cin, cout, s.kernel, s.stride, s.padding, s.dilation, groups, s.hw,
                             precisions.get(s.name, "fp32")))
    return keys


def _precisions_of(space) -> dict[str, list[str]]:
    return {layer.name: layer.precisions for layer in space.layers}


def site_keys(s: LayerSite, space) -> list[LayerKey]:
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


def layer_module(key: LayerKey) -> tuple[nn.Module, tuple[int, ...]]:
    """A layer of `key`'s shape and its input shape (without the batch)."""
    if key.kind == "conv":
        return (nn.Conv2d(key.cin, key.cout, key.kernel, key.stride, key.padding, key.dilation, key.groups, bias=True),
                (key.cin, *key.hw))
    return nn.Linear(key.cin, key.cout), (key.cin,)


def quantized_graph(model: nn.Module, shape: tuple[int, ...], precisions: dict[str, str], reduce_range: bool) -> bytes:
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
    layer, shape = layer_module(key)
    return quantized_graph(_One(layer), shape, {"layer": key.precision}, reduce_range), shape


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
