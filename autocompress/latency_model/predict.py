"""The search's latency predictor: the measured latency model (latency_model/model.py) built for this run's
model and space, calibrated on the baselines and then on every measured trial.

Each trial's prediction is made when it is proposed, before it trains, from the whole models measured by then,
and is recorded beside its measured figure (`latency_predicted_ms`), so the report can show how well the model
of the device predicts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from autocompress.latency_model.junctions import JunctionKey, find_junctions, junction_costs
from autocompress.latency_model.layers import layer_graph, wire_layers
from autocompress.latency_model.model import Fit, LatencyModel, LatencyTable, all_keys
from autocompress.results.records import SlowChoice
from autocompress.space import SearchSpace

__all__ = ["Predictor", "build_predictor", "calibrate_on_proxies", "random_configs", "prediction_errors", "CHUNK",
           "PROXIES", "SlowChoice", "slow_choices", "drop_slow", "SIZE_ONLY", "slow_precisions", "drop_precisions"]

CHUNK = 32  # layer graphs sent to the device per call (saved, and progress logged, between calls)
PROXIES = 12  # random whole configurations measured to calibrate the fit before the first trial


@dataclass
class Predictor:
    model: LatencyModel
    space: SearchSpace
    points: list[tuple[np.ndarray, float]] = field(default_factory=list)  # (features, ms) of whole models measured

    def predict(self, params: dict) -> float:
        """Milliseconds for Optuna params (or `prune:`/`quant:` columns)."""
        return round(self.model.predict(*self.space.decode(params), self.space.dropped(params)), 4)

    def covers(self, ratios: dict[str, float], precisions: dict[str, str]) -> bool:
        """Whether the table holds every layer of this configuration (a uniform baseline may prune a group or set a
        precision the space does not offer)."""
        keys, joints = self.model.keys(ratios, precisions)
        return not self.model.table.missing([*keys, *joints])

    def learn(self, ratios: dict[str, float], precisions: dict[str, str], ms: float, *,
              dropped: tuple[str, ...] = ()) -> None:
        """A whole model measured on the device (with `dropped` blocks removed): the fit is made again with it."""
        self.points.append((self.model.features(ratios, precisions, dropped), ms))
        self.model.fit = Fit.of(self.points)

    def summary(self) -> dict:
        return {"fit": self.model.fit.as_dict()}

    def with_space(self, space: SearchSpace) -> Predictor:
        """The same predictor (table, fit, measured points) reading the params of `space`, a narrowed version of its
        own: a parameter the narrowing left with one choice decodes to the value `space` gives it."""
        return replace(self, space=space)


def build_predictor(baseline: torch.nn.Module, example: torch.Tensor, space: SearchSpace, table: LatencyTable,
                    time_graphs: Callable[[list], list[float]], *, reduce_range: bool,
                    log: Callable[[str], None] = print) -> tuple[Predictor, dict]:
    """Wire the layers, time the table entries the cache lacks (on the device, through `time_graphs`), and return
    the (uncalibrated) predictor and what building it cost."""
    t0 = time.perf_counter()
    sites = wire_layers(baseline, example, space)
    junctions = find_junctions(baseline, example, sites)
    keys = all_keys(sites, space, junctions)
    todo = table.missing(keys)
    if todo:
        log(f"latency model: timing {len(todo)} layer and junction graphs on the device "
            f"({len(keys) - len(todo)} cached)")
    layers = [k for k in todo if not isinstance(k, JunctionKey)]
    joints = [k for k in todo if isinstance(k, JunctionKey)]
    for start in range(0, len(layers), CHUNK):
        chunk = layers[start:start + CHUNK]
        table.record(chunk, time_graphs([layer_graph(k, reduce_range=reduce_range) for k in chunk]))
        done = start + len(chunk)
        if done % (8 * CHUNK) == 0 and done < len(todo):
            log(f"  latency model: {done}/{len(todo)} timed ({time.perf_counter() - t0:.0f} s)")
    for start in range(0, len(joints), CHUNK // 4):  # each junction is 3 graphs timed in 3 passes
        chunk = joints[start:start + CHUNK // 4]
        table.record(chunk, junction_costs(chunk, time_graphs, reduce_range=reduce_range))
    info = {"layers": len(sites), "junctions": len(junctions), "entries": len(keys), "timed_now": len(todo),
            "seconds": round(time.perf_counter() - t0, 1)}
    return Predictor(LatencyModel(sites, space, table, junctions=junctions), space), info


def random_configs(space: SearchSpace, n: int, seed: int) -> list[tuple[dict, dict]]:
    """`n` configurations drawn uniformly from the space's choices: (ratios, precisions) each."""
    rng = np.random.default_rng(seed)
    choices = space.params()
    return [space.decode({k: v[int(rng.integers(len(v)))] for k, v in choices.items()}) for _ in range(n)]


def calibrate_on_proxies(predictor: Predictor, baseline: torch.nn.Module, example: torch.Tensor,
                         measure: Callable[[bytes], float], *, n: int, seed: int, reduce_range: bool) -> float:
    """Measure `n` random configurations built from the baseline without training (the same graphs, so the same
    latency, as trials of those configurations) and fit on them: the baselines alone are all-int8 or all-fp32 and
    say nothing of mixed precisions. Returns the seconds spent."""
    from autocompress.latency_model.layers import config_graph

    t0 = time.perf_counter()
    for ratios, precisions in random_configs(predictor.space, n, seed):
        data = config_graph(baseline, example, predictor.space, ratios, precisions, reduce_range=reduce_range)
        predictor.learn(ratios, precisions, measure(data))
    return round(time.perf_counter() - t0, 1)


def _group_costs(model: LatencyModel, space: SearchSpace, group, kept: int) -> list[float]:
    """The table time of `group`'s layers with `kept` channels: one figure per context (the other groups at each
    uniform level of pruning, every layer at fp32 then at int8 where allowed)."""
    from autocompress.latency_model.layers import LayerKey

    touching = [s for s in model.sites if group.name in {n for n, _ in (*s.in_per, *s.out_per)}]
    allowed = {layer.name: layer.precisions for layer in space.layers}
    costs = []
    for level in range(max(len(g.kept) for g in space.groups)):
        removed = {g.name: g.channels - g.kept[min(level, len(g.kept) - 1)] for g in space.groups}
        removed[group.name] = group.channels - kept
        for precision in ("fp32", "int8"):
            total = 0.0
            for s in touching:
                cin, cout = s.channels(removed)
                options = allowed.get(s.name, ["fp32"])
                p = precision if precision in options else options[0]
                key = LayerKey(s.kind, cin, cout, s.kernel, s.stride, s.padding, s.dilation,
                               cin if s.depthwise else s.groups, s.hw, p)
                total += model.table.entries[key.text()]
            costs.append(total)
    return costs


def slow_choices(model: LatencyModel, space: SearchSpace) -> list[SlowChoice]:
    """Channel counts no faster than a larger choice of the same group in every context of `_group_costs`."""
    out = []
    for g in space.groups:
        costs = {k: _group_costs(model, space, g, k) for k in g.kept}
        if not all(sum(c) > 0 for c in costs.values()):  # no layer of the group in the table: nothing to compare
            continue
        for i, (small, r_small) in enumerate(zip(g.kept, g.ratios, strict=True)):
            # the smallest larger count that is at least as fast in every context
            for big, r_big in reversed(list(zip(g.kept[:i], g.ratios[:i], strict=True))):
                if all(b <= s for b, s in zip(costs[big], costs[small], strict=True)):
                    out.append(SlowChoice(g.name, r_small, small, r_big, big, sum(costs[small]), sum(costs[big])))
                    break
    return out


# Precisions whose only gain over int8 is a smaller file: in a search for latency they are offered only where the
# device's table shows them faster than int8 (int4 weights run as DequantizeLinear + float Conv on CPU runtimes).
SIZE_ONLY = ("int4",)


def slow_precisions(model: LatencyModel, space: SearchSpace) -> dict[str, list[str]]:
    """Layer -> its SIZE_ONLY precisions that the table shows no faster than int8 at every channel count the space
    offers it (layers without int8 among their choices are left as they are)."""
    from autocompress.latency_model.layers import site_keys

    out: dict[str, list[str]] = {}
    allowed = {layer.name: layer.precisions for layer in space.layers}
    for s in model.sites:
        options = allowed.get(s.name, [])
        if "int8" not in options:
            continue
        keys = site_keys(s, space)
        t = model.table.entries
        slow = [p for p in options if p in SIZE_ONLY
                and all(t[k.text()] >= t[replace(k, precision="int8").text()] for k in keys if k.precision == p)]
        if slow:
            out[s.name] = slow
    return out


def drop_precisions(space: SearchSpace, gone: dict[str, list[str]]) -> SearchSpace:
    """`space` without the precisions `gone` names per layer (a new space)."""
    layers = [replace(layer, precisions=[p for p in layer.precisions if p not in gone.get(layer.name, [])])
              for layer in space.layers]
    return replace(space, layers=layers)


def drop_slow(space: SearchSpace, slow: list[SlowChoice]) -> SearchSpace:
    """`space` without the slow choices (a new space)."""
    gone = {(c.group, c.ratio) for c in slow}
    groups = []
    for g in space.groups:
        keep = [(r, k) for r, k in zip(g.ratios, g.kept, strict=True) if (g.name, r) not in gone]
        groups.append(replace(g, ratios=[r for r, _ in keep], kept=[k for _, k in keep]))
    return replace(space, groups=groups)


def prediction_errors(pairs: list[tuple[float, float]]) -> dict:
    """|predicted - measured| / measured (%) over (predicted, measured) pairs: n, median, worst."""
    errs = sorted(100 * abs(p - m) / m for p, m in pairs if m > 0)
    if not errs:
        return {"n": 0}
    mid = len(errs) // 2
    median = errs[mid] if len(errs) % 2 else (errs[mid - 1] + errs[mid]) / 2
    return {"n": len(errs), "median_pct": round(median, 2), "worst_pct": round(errs[-1], 2)}
