"""A measured latency model of the device: every layer timed alone at every channel count and precision the
search space offers (latency_model/layers.py), each pool between two layers timed in context
(latency_model/junctions.py), summed per configuration and calibrated on whole models measured the usual way.

What the table misses (residual Adds, the Quantize/Dequantize pairs a lone int8 layer has at its edges but a chain
of int8 layers shares) is absorbed by a straight-line fit on whole models the search measures anyway (its uniform
baselines, random proxies, then every trial).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from autocompress.fileio import atomic_write_text
from autocompress.latency_model.junctions import Junction, JunctionKey, all_junction_keys, junction_keys
from autocompress.latency_model.layers import LayerKey, LayerSite, layer_keys, removed_channels, site_keys
from autocompress.pipeline.blocks import inside

__all__ = ["LatencyTable", "LatencyModel", "Fit", "FEATURES", "all_keys"]


def all_keys(sites: list[LayerSite], space, junctions: list[Junction] = ()) -> list[LayerKey | JunctionKey]:
    """Every table entry the space can reach: each layer at each channel count its groups offer, at each precision
    it may take (layers the space does not quantize stay fp32), and each junction at each producer width and
    precision pair."""
    out: dict = {}
    for s in sites:
        out.update(dict.fromkeys(site_keys(s, space)))
    out.update(dict.fromkeys(all_junction_keys(sites, junctions, space)))
    return list(out)


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

    def keys(self, ratios: dict[str, float], precisions: dict[str, str],
             dropped: tuple[str, ...] = ()) -> tuple[list[LayerKey], list[JunctionKey]]:
        """The table entries of a configuration: one per layer, one per junction (a removed block's layers and the
        junctions that touch them have none)."""
        sites = self._sites(dropped)
        keys = layer_keys(sites, self.space, ratios, precisions)
        names = {s.name for s in sites}
        joints = [j for j in self.junctions if j.producer in names and j.consumer in names]
        return keys, junction_keys(sites, joints, keys)

    def _sites(self, dropped: tuple[str, ...]) -> list[LayerSite]:
        return [s for s in self.sites if not inside(s.name, dropped)] if dropped else self.sites

    def total(self, ratios: dict[str, float], precisions: dict[str, str], dropped: tuple[str, ...] = ()) -> float:
        """The plain table sum: the layers and what the junctions add."""
        keys, joints = self.keys(ratios, precisions, dropped)
        return self.table.total(keys) + sum(self.table.junction_cost(k) for k in joints)

    def features(self, ratios: dict[str, float], precisions: dict[str, str],
                 dropped: tuple[str, ...] = ()) -> np.ndarray:
        keys, joints = self.keys(ratios, precisions, dropped)
        sums = {p: 0.0 for p in ("fp32", "fp16", "int8", "int4")}
        for k in keys:
            sums[k.precision if k.precision in sums else "fp32"] += self.table.entries[k.text()]
        crossing = _crossing_elements(self._sites(dropped), keys, removed_channels(self.space, ratios))
        junction = sum(self.table.junction_cost(k) for k in joints)
        return np.array([1.0, sums["fp32"], sums["fp16"], sums["int8"], sums["int4"], crossing / 1e6, junction])

    def predict(self, ratios: dict[str, float], precisions: dict[str, str], dropped: tuple[str, ...] = ()) -> float:
        return self.fit(self.features(ratios, precisions, dropped))


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
