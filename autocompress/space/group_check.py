"""Only groups that pruning may really cut reach the search.

Torch-pruning follows the operators it can trace. A shortcut that subsamples and zero-pads channels to a fixed
count (the "option A" ResNet shortcut) is invisible to it: pruning the groups around it leaves channel counts the
padding no longer matches, and the forward pass fails. So before a search every group is pruned at its largest
ratio, and the model must still run on the example input, export, and give an output of the same shape.

The groups are checked together first, then in halves, down to the single groups that fail alone (group
testing): one export per model instead of one per group, which would make the check long on a network with many
groups. A group that fails alone keeps only the ratios that pass alone (checked from the largest down), or leaves
the space. A group that breaks only in company with others is not caught here; a trial that builds that
company fails with its error, like any other failing configuration.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
from dataclasses import replace
from pathlib import Path

import torch

from autocompress.fileio import atomic_write_text
from autocompress.pipeline.export import export_onnx
from autocompress.pipeline.prune import prune_model
from autocompress.space import GroupChoice, SearchSpace

__all__ = ["check_group", "find_limits", "apply_limits", "limit_to_safe_groups"]


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def check_group(model: torch.nn.Module, example: torch.Tensor, ratios: dict[str, float], *, round_to: int,
                min_channels: int, export: bool) -> str | None:
    """None if the groups of `ratios` pruned together leave a model that runs (and, with `export`, exports) and
    gives an output of the unpruned model's shape; otherwise why not, in one line."""
    m = copy.deepcopy(model).eval()
    try:
        with torch.no_grad():
            expected = tuple(m(example).shape)
        with torch.enable_grad():  # torch-pruning traces with autograd
            prune_model(m, example, ratios, round_to=round_to, min_channels=min_channels)
        with torch.no_grad():
            got = tuple(m(example).shape)
        if got != expected:
            return f"the output becomes {got} instead of {expected}"
        if export:
            export_onnx(m, example)
    except Exception as e:  # noqa: BLE001 - any failure means the search must not offer this ratio
        return _first_line(e)
    return None


def _failing_alone(model: torch.nn.Module, example: torch.Tensor, groups: list[GroupChoice],
                   space: SearchSpace) -> dict[str, str]:
    """{group: why} for the groups of `groups` that fail pruned alone at their largest ratio, found by checking
    the whole set, then its halves, recursively (a set that passes clears all its groups at once)."""
    why = check_group(model, example, {g.name: max(g.ratios) for g in groups}, round_to=space.round_to,
                      min_channels=space.min_channels, export=True)
    if why is None:
        return {}
    if len(groups) == 1:
        return {groups[0].name: why}
    half = len(groups) // 2
    return {**_failing_alone(model, example, groups[:half], space),
            **_failing_alone(model, example, groups[half:], space)}


def _safe_ratios(model: torch.nn.Module, example: torch.Tensor, g: GroupChoice, space: SearchSpace) -> list[float]:
    """The ratios of a group that failed at its largest one that pass alone, each checked with export."""
    return [r for r in g.ratios if r <= 0 or r != max(g.ratios) and check_group(
        model, example, {g.name: r}, round_to=space.round_to, min_channels=space.min_channels, export=True) is None]


def find_limits(space: SearchSpace, model: torch.nn.Module, example: torch.Tensor) -> dict[str, dict]:
    """{group: {"ratios": the ratios that pass, "reason": the first failure}} for every group that fails a check."""
    groups = [g for g in space.groups if any(r > 0 for r in g.ratios)]
    failing = _failing_alone(model, example, groups, space) if groups else {}
    by_name = {g.name: g for g in groups}
    return {name: {"ratios": _safe_ratios(model, example, by_name[name], space),
                   "reason": f"pruned alone by {max(by_name[name].ratios):g}: {why}"}
            for name, why in failing.items()}


def apply_limits(space: SearchSpace, limits: dict[str, dict]) -> tuple[SearchSpace, dict[str, str]]:
    """`space` limited (a new space): each limited group keeps only the ratios that passed, a group left with none
    to search leaves the space. Also returns {group: what was limited and why} for the report and --dry-run."""
    said: dict[str, str] = {}
    kept = []
    for g in space.groups:
        limit = limits.get(g.name)
        if limit is None:
            kept.append(g)
            continue
        ratios = [r for r in g.ratios if r in limit["ratios"]]
        if not any(r > 0 for r in ratios):
            said[g.name] = f"not pruned: {limit['reason']}"
            continue
        said[g.name] = f"ratios limited to {', '.join(f'{r:g}' for r in ratios)}: {limit['reason']}"
        pairs = [(r, k) for r, k in zip(g.ratios, g.kept, strict=True) if r in ratios]
        kept.append(replace(g, ratios=[r for r, _ in pairs], kept=[k for _, k in pairs]))
    return replace(space, groups=kept), said


def architecture_key(model: torch.nn.Module, example: torch.Tensor, space: SearchSpace) -> str:
    """What the checks depend on: the modules, the code of their forward passes, the input shape and the space
    (not the weights: which channels go changes, the shapes do not), and the code that prunes and checks (a new
    version of either may answer differently)."""
    h = hashlib.sha256(repr(model).encode())
    for ours in (prune_model, find_limits):
        h.update(inspect.getsource(inspect.getmodule(ours)).encode())
    for cls in sorted({type(m) for m in model.modules()}, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
        h.update(f"{cls.__module__}.{cls.__qualname__}".encode())
        try:
            h.update(inspect.getsource(cls.forward).encode())
        except (OSError, TypeError):  # built-in or source not on disk: the class name stands for it
            pass
    h.update(json.dumps([list(example.shape), space.describe(), space.round_to, space.min_channels]).encode())
    return h.hexdigest()[:20]


def limit_to_safe_groups(space: SearchSpace, model: torch.nn.Module, example: torch.Tensor,
                         cache: Path | None = None) -> tuple[SearchSpace, dict[str, str]]:
    """Check every group (the result cached under `cache` per architecture): `space` limited to what passed (a new
    space), and what was limited and why (`apply_limits`)."""
    path = cache / "group_checks" / f"{architecture_key(model, example, space)}.json" if cache else None
    if path is not None and path.is_file():
        limits = json.loads(path.read_text())
    else:
        limits = find_limits(space, model, example)
        if path is not None:
            atomic_write_text(path, json.dumps(limits))
    return apply_limits(space, limits)
