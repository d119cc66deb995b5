"""Per-layer sensitivity: each group pruned alone, each layer quantized alone, no fine-tune, on the
validation split. Run once per (baseline, space, data, format) and cached; it warm-starts the sampler and
removes hopeless choices from the space before the search spends fine-tunes on them.

Pruning without a fine-tune loses accuracy that the fine-tune wins back (docs/pipeline.md, "Sensitivity scan"),
so pruning choices are never removed, only ranked for the warm start. Precision choices are removed when,
alone and calibrated, they cost more than QUANT_HOPELESS points.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
from dataclasses import replace
from pathlib import Path

import torch

from autocompress.fileio import atomic_write_text
from autocompress.pipeline.finetune import evaluate
from autocompress.pipeline.prune import prune_model
from autocompress.pipeline.quantize import calibrate_activations, fake_quantized
from autocompress.space import SearchSpace
from autocompress.tasks.splitting import Splits

__all__ = ["scan", "cache_key", "narrow", "warm_configs", "QUANT_HOPELESS"]

# Validation images each scanned configuration is evaluated on: the scan is a few dozen evaluations, a ranking
# that needs no more, and an uncapped validation split would make it the longest stage of a search.
SCAN_IMAGES = 1000
QUANT_HOPELESS = 10.0  # points lost by one layer's precision alone (calibrated, no fine-tune)


def cache_key(baseline: torch.nn.Module, space: SearchSpace, splits: Splits, reduce_range: bool) -> str:
    h = hashlib.sha256()
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in baseline.state_dict().items()}, buf)
    h.update(buf.getvalue())
    h.update(json.dumps([space.describe(), space.round_to, space.min_channels, reduce_range]).encode())
    h.update(f"{splits.name}:{splits.val.fingerprint}:{splits.calib.fingerprint}:{SCAN_IMAGES}".encode())
    return h.hexdigest()[:20]


@torch.no_grad()
def scan(baseline: torch.nn.Module, splits, space: SearchSpace, *, reduce_range: bool,
         threads: int | None = None) -> dict:
    """{"base": val acc, "chance": %, "prune": {group: {ratio: acc}}, "quant": {layer: {precision: acc}}}."""
    if threads:
        torch.set_num_threads(threads)
    val = splits.val.head(SCAN_IMAGES)
    example = val.images(1)
    base = evaluate(baseline, val)
    out: dict = {"base": base, "chance": 100.0 / max(1, int(splits.num_classes)), "prune": {}, "quant": {}}
    for g in space.groups:
        out["prune"][g.name] = {}
        for r in g.ratios:
            if r <= 0:
                continue
            m = copy.deepcopy(baseline).eval()
            with torch.enable_grad():  # torch-pruning traces with autograd
                prune_model(m, example, {g.name: r}, round_to=space.round_to, min_channels=space.min_channels)
            out["prune"][g.name][str(r)] = evaluate(m, val)
    for layer in space.layers:
        out["quant"][layer.name] = {}
        for p in layer.precisions:
            if p == "fp32":
                continue
            m = copy.deepcopy(baseline).eval()
            with fake_quantized(m, {layer.name: p}, reduce_range=reduce_range) as qm:
                calibrate_activations(qm, splits.calib)
                out["quant"][layer.name][p] = evaluate(qm, val)
    return out


def cached_scan(cache: Path, key: str, compute) -> tuple[dict, bool]:
    path = cache / "sensitivity" / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text()), True
    result = compute()
    atomic_write_text(path, json.dumps(result, indent=1))
    return result, False


def narrow(space: SearchSpace, sens: dict) -> tuple[SearchSpace, dict[str, list]]:
    """`space` without its hopeless precision choices (a new space), and {param: removed choices}."""
    base = sens["base"]
    removed: dict[str, list] = {}
    layers = []
    for layer in space.layers:
        accs = sens["quant"].get(layer.name, {})
        keep = [p for p in layer.precisions if p == "fp32" or base - accs.get(p, base) <= QUANT_HOPELESS]
        if not keep:
            keep = [layer.precisions[0]]
        if len(keep) < len(layer.precisions):
            removed[f"quant:{layer.name}"] = [p for p in layer.precisions if p not in keep]
            layer = replace(layer, precisions=keep)
        layers.append(layer)
    return replace(space, layers=layers), removed


def warm_configs(space: SearchSpace, sens: dict, tolerances: tuple[float, ...] = (2.0, 8.0)) -> list[dict]:
    """Optuna params of configurations built from the scan: for each tolerance t, every group pruned by
    the largest ratio that alone costs at most t points (no fine-tune), every layer int8 whose int8
    alone costs at most 0.5 point."""
    base = sens["base"]
    configs = []
    for t in tolerances:
        params: dict = {}
        for g in space.groups:
            if len(g.ratios) > 1:
                ok = [r for r in g.ratios if r <= 0 or base - sens["prune"].get(g.name, {}).get(str(r), -1e9) <= t]
                params[f"prune:{g.name}"] = max(ok) if ok else min(g.ratios)
        for layer in space.layers:
            if len(layer.precisions) > 1:
                int8_acc = sens["quant"].get(layer.name, {}).get("int8", -1e9)
                int8_ok = "int8" in layer.precisions and base - int8_acc <= 0.5
                fallback = "fp32" if "fp32" in layer.precisions else layer.precisions[0]
                params[f"quant:{layer.name}"] = "int8" if int8_ok else fallback
        if params and params not in configs:
            configs.append(params)
    return configs
