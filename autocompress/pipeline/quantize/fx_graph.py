"""Which activations ONNX Runtime quantizes, mirrored as fake quantizers inserted in a torch.fx trace of the model."""

from __future__ import annotations

import operator

import torch
import torch.nn as nn
import torch.nn.functional as F

from autocompress.pipeline.quantize.quantizers import _ActFakeQuant
from autocompress.pipeline.quantize.regions import _regions

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


def _insert_ort_fake_quant(model: nn.Module, precisions: dict[str, str]) -> tuple[nn.Module, list[_ActFakeQuant]]:
    """A traced copy of `model` (sharing its modules) with fake quantization on every activation that
    ONNX Runtime's QDQ quantization of the exported model quantizes: inputs and outputs of quantized
    layers (Gemm outputs excepted, see ort._quantize), and of the ops between quantized layers (the
    regions `ort._nodes_to_exclude` leaves quantized). Raises if the model cannot be traced."""
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
        if not (is_layer(q) and isinstance(mods[q.target], nn.Linear)):  # Gemm outputs stay float (ort._quantize)
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
