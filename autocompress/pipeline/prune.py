"""Structured pruning with torch-pruning's dependency graph: channels are physically removed.

A *group* is a set of layers whose output channels must be removed together (e.g. every conv that
feeds one residual sum). The search picks one ratio per group; the kept channel count is rounded to
a multiple of `round_to`, because ONNX Runtime's CPU convolutions work on blocks of 8 channels.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch_pruning as tp

from autocompress.pipeline.hooks import run_hooked

__all__ = ["PruneGroup", "find_groups", "kept_channels", "prune_model", "output_layers", "channel_counts", "CRITERIA",
           "TAYLOR_IMAGES"]

# How a group's channels are ranked before the lowest are removed (torch-pruning's importance classes):
# l2 / l1: magnitude of the weights the channel touches across the group (the default: l2);
# bn: the BatchNorm scale of the channel (network slimming; magnitude where a group has no BatchNorm);
# taylor: |weight x gradient| of the loss on training images (first-order Taylor), needs `data`.
CRITERIA = ("l2", "l1", "bn", "taylor")
TAYLOR_IMAGES = 256  # training images whose loss gradient ranks channels for `taylor`


@dataclass(frozen=True)
class PruneGroup:
    name: str  # the group's first member in module order: the key its ratio is stored under
    channels: int
    members: tuple[str, ...]  # layers whose output channels this group removes
    channel_groups: int = 1  # a grouped convolution splits the channels in this many equal parts (see kept_channels)
    part: str = ""  # the part of the model it was traced in, when torch-pruning cannot trace the whole model


def output_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the leaf layers whose output is the model's output (the classifier): never pruned."""
    # each output is kept alive with its name: a freed tensor's id can be reused by the model's own output
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, name=name: produced.__setitem__(id(out), (name, out)))
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    out = run_hooked(model, example, hooks)
    if id(out) in produced:
        return [produced[id(out)][0]]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


@dataclass
class _Scope:
    """A module torch-pruning traced: the whole model, or (when it cannot trace the whole) one of its parts."""
    prefix: str  # "" for the whole model, else the part's name and a dot
    dg: tp.DependencyGraph
    names: dict[nn.Module, str]  # module -> its name in the whole model
    ignored: list[nn.Module]  # layers whose output is the scope's output: never a group's root
    module: nn.Module
    example: torch.Tensor


def _scope(module: nn.Module, example: torch.Tensor, prefix: str = "") -> _Scope:
    names = {m: prefix + n for n, m in module.named_modules()}
    ignored = [dict(module.named_modules())[n] for n in output_layers(module, example)]
    # The classifier stays in the graph (its inputs are pruned with the last stage); it is only never a root.
    dg = tp.DependencyGraph().build_dependency(module.eval(), example_inputs=example, verbose=False)
    return _Scope(prefix, dg, names, ignored, module, example)


def _scopes(model: nn.Module, example: torch.Tensor) -> list[_Scope]:
    """The whole model's graph or, when torch-pruning cannot trace it (e.g. ShuffleNet's channel shuffle), the
    graphs of the largest parts it can trace, each traced on the input it receives in the model."""
    try:
        return [_scope(model, example)]
    except Exception:
        parts = _traceable_parts(model, "", _first_inputs(model, example))
        if not parts:
            raise
        return parts


def _first_inputs(model: nn.Module, example: torch.Tensor) -> dict[nn.Module, torch.Tensor]:
    seen: dict[nn.Module, torch.Tensor] = {}

    def hook(mod, args):
        if args and isinstance(args[0], torch.Tensor):
            seen.setdefault(mod, args[0].detach())
    run_hooked(model, example, [m.register_forward_pre_hook(hook) for m in model.modules()])
    return seen


def _traceable_parts(module: nn.Module, prefix: str, inputs: dict[nn.Module, torch.Tensor]) -> list[_Scope]:
    out = []
    for name, child in module.named_children():
        if child not in inputs or not any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in child.modules()):
            continue
        try:
            out.append(_scope(child, inputs[child], f"{prefix}{name}."))
        except Exception:  # noqa: BLE001 - untraceable as a whole: try its parts
            out += _traceable_parts(child, f"{prefix}{name}.", inputs)
    return out


def _keeps_boundary(scope: _Scope, root: str) -> bool:
    """A part's group may be cut only if the part still takes its input and gives an output of the same shape:
    the layers outside it were not traced with it."""
    part = copy.deepcopy(scope.module).eval()
    try:
        with torch.no_grad():
            expected = tuple(part(scope.example).shape)
        _prune_in(_scope(part, scope.example), {root[len(scope.prefix):]: 0.5}, round_to=1, min_channels=1, prefix="")
        with torch.no_grad():
            return tuple(part(scope.example).shape) == expected
    except Exception:  # noqa: BLE001 - a group that breaks its part is no group of the model
        return False


def find_groups(model: nn.Module, example: torch.Tensor) -> list[PruneGroup]:
    """The model's prunable channel groups, in module order."""
    scopes = _scopes(model, example)
    order = {n: i for i, n in enumerate(dict(model.named_modules()))}
    modules = dict(model.named_modules())
    groups = []
    for sc in scopes:
        for group in sc.dg.get_all_groups(ignored_layers=sc.ignored, root_module_types=(nn.Conv2d, nn.Linear)):
            members = sorted(
                {sc.names[dep.target.module] for dep, _ in group if sc.dg.is_out_channel_pruning_fn(dep.handler)
                 and isinstance(dep.target.module, (nn.Conv2d, nn.Linear))},
                key=order.__getitem__,
            )
            if not members or (sc.prefix and not _keeps_boundary(sc, members[0])):
                continue
            channels = sc.dg.get_out_channels(modules[members[0]])
            groups.append(PruneGroup(members[0], int(channels), tuple(members), _channel_groups(group),
                                     sc.prefix.rstrip(".")))
    groups.sort(key=lambda g: order[g.name])
    return groups


def _channel_groups(group) -> int:
    """How many equal parts a grouped convolution in `group` splits its channels into (1 if none). Depthwise
    convolutions (a group per channel) shrink with the channels; other grouped ones keep their group count, so
    each part must lose the same channels (as torch-pruning's own pruners do)."""
    parts = [m.groups for m in (dep.target.module for dep, _ in group)
             if isinstance(m, nn.Conv2d) and 1 < m.groups != m.out_channels]
    return max(parts, default=1)


def kept_channels(channels: int, ratio: float, *, round_to: int, min_channels: int, channel_groups: int = 1) -> int:
    """Channels left after pruning `ratio` of them, rounded to a multiple of `round_to` (nearest). With
    `channel_groups` parts, every part keeps the same count and the total stays a multiple of `round_to`."""
    if ratio <= 0:
        return channels
    if channel_groups > 1:
        step = round_to // math.gcd(round_to, channel_groups)  # parts x step is a multiple of round_to
        per_part = kept_channels(channels // channel_groups, ratio, round_to=step,
                                 min_channels=math.ceil(min_channels / channel_groups))
        return per_part * channel_groups
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
    criterion: str = "l2",
    data=None,
) -> dict[str, tuple[int, int]]:
    """Prune `model` in place: for each group name -> ratio, remove the group's least important channels by
    `criterion` (CRITERIA); `data` (a Split of training images) gives `taylor` its gradients.

    Returns {group name: (channels before, channels after)}.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"pruning criterion {criterion!r} is not one of {', '.join(CRITERIA)}")
    modules = dict(model.named_modules())
    for name in ratios:
        if name not in modules:
            raise KeyError(f"no layer named {name!r} in the model")
    if not any(r > 0 for r in ratios.values()):  # nothing to cut: no graph to trace
        return {name: (_out_channels(modules[name]),) * 2 for name in ratios}
    if criterion == "taylor":
        _loss_gradients(model, data)
    result: dict[str, tuple[int, int]] = {}
    try:
        for sc in _scopes(model, example):
            mine = {n: r for n, r in ratios.items() if modules[n] in sc.names}
            result.update(_prune_in(sc, mine, round_to=round_to, min_channels=min_channels, prefix=sc.prefix,
                                    criterion=criterion))
    finally:
        if criterion == "taylor":  # the fine-tune starts from clean gradients
            model.zero_grad(set_to_none=True)
    for name in ratios.keys() - result.keys():
        raise KeyError(f"layer {name!r} is in no part of the model that torch-pruning can trace")
    return result


def _loss_gradients(model: nn.Module, data) -> None:
    """Gradients of the cross-entropy on up to TAYLOR_IMAGES training images, for the Taylor criterion."""
    if data is None:
        raise ValueError("the taylor criterion needs training images for its gradients (prune_model(data=...))")
    model.zero_grad(set_to_none=True)
    seen = 0
    with torch.enable_grad():
        for x, y in data.batches(64):
            n = min(len(y), TAYLOR_IMAGES - seen)
            loss = nn.functional.cross_entropy(model(x[:n]), y[:n], reduction="sum") / TAYLOR_IMAGES
            loss.backward()
            seen += n
            if seen >= TAYLOR_IMAGES:
                break


def _importance(criterion: str):
    if criterion == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if criterion == "bn":
        return tp.importance.BNScaleImportance()
    if criterion == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.GroupMagnitudeImportance(p=2)


def _prune_in(sc: _Scope, ratios: dict[str, float], *, round_to: int, min_channels: int,
              prefix: str, criterion: str = "l2") -> dict[str, tuple[int, int]]:
    modules = {prefix + n: m for n, m in sc.module.named_modules()}
    protected = {sc.names[m] for m in sc.ignored}
    importance, magnitude = _importance(criterion), _importance("l2")
    result: dict[str, tuple[int, int]] = {}
    for name, ratio in ratios.items():
        if name in protected:
            raise KeyError(f"layer {name!r} produces the model's output and cannot be pruned")
        root = modules[name]
        pruner = sc.dg.get_pruner_of_module(root)
        channels = int(sc.dg.get_out_channels(root))
        full = sc.dg.get_pruning_group(root, pruner.prune_out_channels, idxs=list(range(channels)))
        parts = _channel_groups(full)
        keep = kept_channels(channels, ratio, round_to=round_to, min_channels=min_channels, channel_groups=parts)
        result[name] = (channels, keep)
        if keep >= channels:
            continue
        scores = importance(full)
        if scores is None:  # a criterion with nothing to score in this group (bn: no BatchNorm): magnitude
            scores = magnitude(full)
        drop = _lowest(scores, channels - keep, parts)
        group = sc.dg.get_pruning_group(root, pruner.prune_out_channels, idxs=sorted(drop))
        if not sc.dg.check_pruning_group(group):
            raise RuntimeError(f"pruning group {name!r} to {keep} channels would remove a whole layer")
        group.prune()
    return result


def _lowest(scores: torch.Tensor, n: int, parts: int) -> list[int]:
    """The `n` least important channels; with `parts`, the same positions in every part (scores averaged)."""
    size = len(scores) // parts
    local = torch.argsort(scores.view(parts, size).mean(dim=0))[: n // parts].tolist()
    return sorted(i + p * size for p in range(parts) for i in local)


def _out_channels(m: nn.Module) -> int:
    return int(m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)


def channel_counts(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv / linear layer (what a test checks after pruning)."""
    return {
        n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }
