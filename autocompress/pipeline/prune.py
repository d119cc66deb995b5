"""Structured pruning with torch-pruning's dependency graph: channels are physically removed.

A *group* is a set of layers whose output channels must be removed together (e.g. every conv that
feeds one residual sum). The search picks one ratio per group; the kept channel count is rounded to
a multiple of `round_to`, because ONNX Runtime's CPU convolutions work on blocks of 8 channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch_pruning as tp

__all__ = ["PruneGroup", "find_groups", "kept_channels", "prune_model", "output_layers", "channel_counts"]


@dataclass(frozen=True)
class PruneGroup:
    name: str  # the group's first member in module order: the key its ratio is stored under
    channels: int
    members: tuple[str, ...]  # layers whose output channels this group removes


def output_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the leaf layers whose output is the model's output (the classifier): never pruned."""
    produced: dict[int, str] = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, name=name: produced.__setitem__(id(out), name))
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            out = model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    if id(out) in produced:
        return [produced[id(out)]]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def _graph(model: nn.Module, example: torch.Tensor) -> tuple[tp.DependencyGraph, dict[nn.Module, str], list[nn.Module]]:
    names = {m: n for n, m in model.named_modules()}
    ignored = [dict(model.named_modules())[n] for n in output_layers(model, example)]
    # The classifier stays in the graph (its inputs are pruned with the last stage); it is only never a root.
    dg = tp.DependencyGraph().build_dependency(model.eval(), example_inputs=example, verbose=False)
    return dg, names, ignored


def find_groups(model: nn.Module, example: torch.Tensor) -> list[PruneGroup]:
    """The model's prunable channel groups, in module order."""
    dg, names, ignored = _graph(model, example)
    order = {n: i for i, n in enumerate(names.values())}
    groups = []
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear)):
        members = sorted(
            {names[dep.target.module] for dep, _ in group
             if dg.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, (nn.Conv2d, nn.Linear))},
            key=order.__getitem__,
        )
        if not members:
            continue
        root = dict(model.named_modules())[members[0]]
        channels = dg.get_out_channels(root)
        groups.append(PruneGroup(members[0], int(channels), tuple(members)))
    groups.sort(key=lambda g: order[g.name])
    return groups


def kept_channels(channels: int, ratio: float, *, round_to: int, min_channels: int) -> int:
    """Channels left after pruning `ratio` of them, rounded to a multiple of `round_to` (nearest)."""
    if ratio <= 0:
        return channels
    target = channels * (1.0 - ratio)
    keep = int(math.floor(target / round_to + 0.5)) * round_to if round_to > 1 else int(round(target))
    floor = max(round_to, math.ceil(min_channels / round_to) * round_to)  # the minimum, on the grid too
    return int(min(channels, max(floor, keep)))


def prune_model(
    model: nn.Module,
    example: torch.Tensor,
    ratios: dict[str, float],
    *,
    round_to: int = 8,
    min_channels: int = 8,
) -> dict[str, tuple[int, int]]:
    """Prune `model` in place: for each group name -> ratio, remove the lowest-L2 channels of the group.

    Returns {group name: (channels before, channels after)}.
    """
    dg, names, ignored = _graph(model, example)
    modules = dict(model.named_modules())
    protected = {names[m] for m in ignored}
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    result: dict[str, tuple[int, int]] = {}
    for name, ratio in ratios.items():
        if name not in modules:
            raise KeyError(f"no layer named {name!r} in the model")
        if name in protected:
            raise KeyError(f"layer {name!r} produces the model's output and cannot be pruned")
        root = modules[name]
        pruner = dg.get_pruner_of_module(root)
        channels = int(dg.get_out_channels(root))
        keep = kept_channels(channels, ratio, round_to=round_to, min_channels=min_channels)
        result[name] = (channels, keep)
        if keep >= channels:
            continue
        full = dg.get_pruning_group(root, pruner.prune_out_channels, idxs=list(range(channels)))
        scores = importance(full)
        drop = torch.argsort(scores)[: channels - keep].tolist()
        group = dg.get_pruning_group(root, pruner.prune_out_channels, idxs=sorted(drop))
        if not dg.check_pruning_group(group):
            raise RuntimeError(f"pruning group {name!r} to {keep} channels would remove a whole layer")
        group.prune()
    return result


def channel_counts(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv / linear layer (what a test checks after pruning)."""
    return {
        n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }
