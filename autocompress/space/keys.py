"""The identity of the model a configuration builds, and a configuration's table columns: two proposals with the same
key build the same model, so it is built and measured once."""

from __future__ import annotations

import json

from autocompress.pipeline.blocks import inside
from autocompress.pipeline.prune import kept_channels
from autocompress.space._space import DROP, KEEP, SearchSpace

__all__ = ["model_key", "params_key", "config_columns"]


def model_key(space: SearchSpace, ratios: dict[str, float], precisions: dict[str, str], criterion: str = "l2",
              dropped: tuple[str, ...] = ()) -> str:
    """Identity of the model a configuration builds: kept channels of every group, precision of every layer
    (two ratios that round to the same channel count build the same model), the blocks it removes (their groups
    and layers then count as 0 channels and precision "-", whatever was asked of them)."""
    kept = {g.name: 0 if inside(g.name, dropped) else
            kept_channels(g.channels, float(ratios.get(g.name, 0.0)), round_to=space.round_to,
                          min_channels=space.min_channels, channel_groups=g.channel_groups)
            for g in space.groups}
    key = {"kept": kept, "precision": {layer.name: "-" if inside(layer.name, dropped) else
                                       precisions.get(layer.name, "fp32") for layer in space.layers}}
    pruned = any(k < g.channels for g, k in zip(space.groups, kept.values(), strict=True))
    if criterion != "l2" and pruned:  # other channels kept: another model (l2 keeps the keys of earlier runs)
        key["criterion"] = criterion
    if dropped:  # (no entry without: the keys of earlier runs stay as they were)
        key["dropped"] = sorted(dropped)
    return json.dumps(key, sort_keys=True)


def params_key(space: SearchSpace, params: dict) -> str:
    """The model key of Optuna params (or a row's choice columns)."""
    return model_key(space, *space.decode(params), space.criterion(params), space.dropped(params))


def config_columns(space: SearchSpace, params: dict) -> dict:
    """Every group's ratio and layer's precision, the fixed ones included (the table's `prune:` / `quant:`), and
    each removable block's `depth:` choice."""
    ratios, precisions = space.decode(params)
    cols = {**{f"prune:{g}": r for g, r in ratios.items()}, **{f"quant:{n}": p for n, p in precisions.items()}}
    if space.criteria != ["l2"]:
        cols["criterion"] = space.criterion(params)
    dropped = space.dropped(params)
    cols.update({f"depth:{b.name}": DROP if b.name in dropped else KEEP for b in space.blocks})
    return cols
