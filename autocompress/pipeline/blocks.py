"""Depth as a lever: residual blocks that can be removed whole.

On small inputs a network's latency follows its number of operators, not their channels (a CIFAR ResNet-56 at 32 x
32 runs about 9 us per int8 convolution, whatever its width), so pruning channels barely moves it, while removing
blocks does. A block is removable when its output has its input's shape and it adds its input unchanged (an identity
shortcut, as in ResNet's BasicBlock / Bottleneck without downsampling, or MobileNetV2's InvertedResidual with
`use_res_connect`): replaced by the identity, the shortcut carries the signal on.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass

import torch
import torch.nn as nn

from autocompress.pipeline.hooks import run_hooked

__all__ = ["Block", "removable_blocks", "remove_blocks", "inside"]

_ADDS = {operator.add, operator.iadd, torch.add}
_PASS_THROUGH = (nn.Identity, nn.Dropout)  # modules a shortcut may pass its input through unchanged
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Identity)  # what a block may apply after its sum
_ACTIVATION_FUNCTIONS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6}


@dataclass(frozen=True)
class Block:
    """A removable block: its module name and the convolution / linear layers inside it (they leave with it)."""

    name: str
    layers: tuple[str, ...]


def removable_blocks(model: nn.Module, example: torch.Tensor) -> list[Block]:
    """The model's removable residual blocks, in the order of `named_modules`. Each is checked: the model with it
    replaced by the identity runs and gives outputs of the same shape."""
    shapes = _io_shapes(model, example)
    with torch.no_grad():
        expected = model.eval()(example).shape
    out = []
    for name, module in model.named_modules():
        if not name or name not in shapes or not _has_layers(module):
            continue
        shape_in, shape_out = shapes[name]
        if shape_in != shape_out or not _adds_its_input(module):
            continue
        if _runs_without(model, name, example, expected):
            out.append(Block(name, _layers(module, name)))
    return out


def remove_blocks(model: nn.Module, names: list[str] | tuple[str, ...]) -> None:
    """Replace each named block by the identity, in place."""
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, nn.Identity())


def inside(name: str, blocks: list[str] | tuple[str, ...] | set[str]) -> bool:
    """Whether module `name` is one of `blocks` or within one."""
    return any(name == b or name.startswith(b + ".") for b in blocks)


def _io_shapes(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[torch.Size, torch.Size]]:
    """Input and output shape of every module called exactly once with one tensor in and one tensor out."""
    seen: dict[str, list] = {}
    hooks = []
    for name, module in model.named_modules():
        def hook(m, args, output, name=name):
            seen.setdefault(name, []).append(
                (args[0].shape, output.shape) if len(args) == 1 and isinstance(args[0], torch.Tensor)
                and isinstance(output, torch.Tensor) else None)
        hooks.append(module.register_forward_hook(hook))
    run_hooked(model, example, hooks)
    return {n: calls[0] for n, calls in seen.items() if len(calls) == 1 and calls[0] is not None}


def _has_layers(module: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in module.modules())


def _layers(module: nn.Module, prefix: str) -> tuple[str, ...]:
    return tuple(f"{prefix}.{n}" for n, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def _adds_its_input(module: nn.Module) -> bool:
    """Whether the module's traced graph ends by adding its input, unchanged (through identities at most), to what
    its layers computed (an activation after the sum allowed): a residual block, not a stage holding some."""
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception:  # noqa: BLE001 - a block torch.fx cannot trace is not offered
        return False
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    outputs = [n for n in graph.nodes if n.op == "output"]
    if len(inputs) != 1 or len(outputs) != 1:
        return False
    modules = dict(module.named_modules())

    def through(node, kinds) -> torch.fx.Node:
        while (isinstance(node, torch.fx.Node) and node.op == "call_module"
               and isinstance(modules.get(node.target), kinds)) or _is_activation_call(node, kinds):
            node = node.args[0]
        return node

    last = through(outputs[0].args[0], _ACTIVATIONS)
    is_add = isinstance(last, torch.fx.Node) and (
        (last.op == "call_function" and last.target in _ADDS) or (last.op == "call_method" and last.target in (
            "add", "add_")))
    return is_add and any(through(a, _PASS_THROUGH) is inputs[0] for a in last.args[:2])


def _is_activation_call(node, kinds) -> bool:
    """A functional activation (F.relu, torch.relu, x.relu()) when activations are what is walked through."""
    if kinds is not _ACTIVATIONS or not isinstance(node, torch.fx.Node):
        return False
    return ((node.op == "call_function" and node.target in _ACTIVATION_FUNCTIONS)
            or (node.op == "call_method" and node.target in ("relu", "relu_")))


def _runs_without(model: nn.Module, name: str, example: torch.Tensor, expected: torch.Size) -> bool:
    trial = copy.deepcopy(model)
    remove_blocks(trial, [name])
    try:
        with torch.no_grad():
            return trial.eval()(example).shape == expected
    except Exception:  # noqa: BLE001 - a model that fails without the block keeps it
        return False
