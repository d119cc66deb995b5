"""Only groups that pruning may really cut reach the search.

Torch-pruning follows the operators it can trace. A shortcut that subsamples and zero-pads channels to a fixed
count (the "option A" ResNet shortcut) is invisible to it: pruning the groups around it leaves channel counts the
padding no longer matches, and the forward pass fails. So before a search each group is pruned alone at its
largest ratio, and the model must still run on the example input, export, and give an output of the same shape;
a group that fails keeps only the ratios that pass (checked from the largest down), or leaves the space.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
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


def check_group(model: torch.nn.Module, example: torch.Tensor, group: GroupChoice, ratio: float, *, round_to: int,
                min_channels: int, export: bool) -> str | None:
    """None if `group` pruned alone by `ratio` leaves a model that runs (and, with `export`, exports) and gives an
    output of the unpruned model's shape; otherwise why not, in one line."""
    m = copy.deepcopy(model).eval()
    try:
        with torch.no_grad():
            expected = tuple(m(example).shape)
        with torch.enable_grad():  # torch-pruning traces with autograd
            prune_model(m, example, {group.name: ratio}, round_to=round_to, min_channels=min_channels)
        with torch.no_grad():
            got = tuple(m(example).shape)
        if got != expected:
            return f"the output becomes {got} instead of {expected}"
        if export:
            export_onnx(m, example)
    except Exception as e:  # noqa: BLE001 - any failure means the search must not offer this ratio
        return _first_line(e)
    return None


def _safe_ratios(model: torch.nn.Module, example: torch.Tensor, g: GroupChoice, space: SearchSpace) -> tuple[list, str]:
    """The group's ratios that pass, and the first failure's reason ('' if none). The largest ratio is checked
    first (with export); only when it fails are the smaller ones checked, each by running the model."""
    ratios = sorted((r for r in g.ratios if r > 0), reverse=True)
    why = check_group(model, example, g, ratios[0], round_to=space.round_to, min_channels=space.min_channels,
                      export=True)
    if why is None:
        return list(g.ratios), ""
    ok = [r for r in ratios[1:] if check_group(model, example, g, r, round_to=space.round_to,
                                                 min_channels=space.min_channels, export=False) is None]
    return [r for r in g.ratios if r <= 0 or r in ok], f"pruned alone by {ratios[0]:g}: {why}"


def find_limits(space: SearchSpace, model: torch.nn.Module, example: torch.Tensor) -> dict[str, dict]:
    """{group: {"ratios": the ratios that pass, "reason": the first failure}} for every group that fails a check."""
    limits = {}
    for g in space.groups:
        if any(r > 0 for r in g.ratios):
            ratios, reason = _safe_ratios(model, example, g, space)
            if reason:
                limits[g.name] = {"ratios": ratios, "reason": reason}
    return limits


def apply_limits(space: SearchSpace, limits: dict[str, dict]) -> dict[str, str]:
    """In place: each limited group keeps only the ratios that passed, a group left with none to search leaves the
    space. Returns {group: what was limited and why} for the report and --dry-run."""
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
        kept.append(GroupChoice(g.name, g.channels, g.members, [r for r, _ in pairs], [k for _, k in pairs]))
    space.groups = kept
    return said


def architecture_key(model: torch.nn.Module, example: torch.Tensor, space: SearchSpace) -> str:
    """What the checks depend on: the modules, the code of their forward passes, the input shape and the space
    (not the weights: which channels go changes, the shapes do not)."""
    h = hashlib.sha256(repr(model).encode())
    for cls in sorted({type(m) for m in model.modules()}, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
        h.update(f"{cls.__module__}.{cls.__qualname__}".encode())
        try:
            h.update(inspect.getsource(cls.forward).encode())
        except (OSError, TypeError):  # built-in or source not on disk: the class name stands for it
            pass
    h.update(json.dumps([list(example.shape), space.describe(), space.round_to, space.min_channels]).encode())
    return h.hexdigest()[:20]


def limit_to_safe_groups(space: SearchSpace, model: torch.nn.Module, example: torch.Tensor,
                         cache: Path | None = None) -> dict[str, str]:
    """Check every group (the result cached under `cache` per architecture) and limit `space` to what passed."""
    path = cache / "group_checks" / f"{architecture_key(model, example, space)}.json" if cache else None
    if path is not None and path.is_file():
        limits = json.loads(path.read_text())
    else:
        limits = find_limits(space, model, example)
        if path is not None:
            atomic_write_text(path, json.dumps(limits))
    return apply_limits(space, limits)
