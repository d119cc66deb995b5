"""The search's latency predictor: the measured latency model (measure/latency_model.py) built for this run's
model and space, calibrated on the baselines and then on every measured trial.

Each trial's prediction is made when it is proposed, before it trains, from the whole models measured by then,
and is recorded beside its measured figure (`latency_predicted_ms`), so the report can show how well the model
of the device predicts.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from autocompress.measure.junctions import JunctionKey, find_junctions, junction_costs
from autocompress.measure.latency_model import Fit, LatencyModel, LatencyTable, all_keys
from autocompress.measure.layers import layer_graph, wire_layers
from autocompress.space import SearchSpace

__all__ = ["Predictor", "build_predictor", "calibrate_on_proxies", "random_configs", "prediction_errors", "CHUNK",
           "PROXIES", "SlowChoice", "slow_choices", "drop_slow", "setup_predictor"]

CHUNK = 32  # layer graphs sent to the device per call (saved, and progress logged, between calls)
PROXIES = 12  # random whole configurations measured to calibrate the fit before the first trial


@dataclass
class Predictor:
    model: LatencyModel
    space: SearchSpace
    points: list[tuple[np.ndarray, float]] = field(default_factory=list)  # (features, ms) of whole models measured

    def predict(self, params: dict) -> float:
        """Milliseconds for Optuna params (or `prune:`/`quant:` columns)."""
        return round(self.model.predict(*self.space.decode(params)), 4)

    def covers(self, ratios: dict[str, float], precisions: dict[str, str]) -> bool:
        """Whether the table holds every layer of this configuration (a uniform baseline may prune a group or set a
        precision the space does not offer)."""
        keys, joints = self.model.keys(ratios, precisions)
        return not self.model.table.missing([*keys, *joints])

    def learn(self, ratios: dict[str, float], precisions: dict[str, str], ms: float) -> None:
        """A whole model measured on the device: the fit is made again with it."""
        self.points.append((self.model.features(ratios, precisions), ms))
        self.model.fit = Fit.of(self.points)

    def summary(self) -> dict:
        return {"fit": self.model.fit.as_dict()}


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
    from autocompress.measure.layers import config_graph

    t0 = time.perf_counter()
    for ratios, precisions in random_configs(predictor.space, n, seed):
        data = config_graph(baseline, example, predictor.space, ratios, precisions, reduce_range=reduce_range)
        predictor.learn(ratios, precisions, measure(data))
    return round(time.perf_counter() - t0, 1)


@dataclass(frozen=True)
class SlowChoice:
    """A group's channel count that a larger one of the same group beats on this device: fewer channels (so no
    more accurate) and no faster, in every context tried; the search does not offer it."""

    group: str
    ratio: float
    kept: int
    instead_ratio: float  # the larger channel count that is at least as fast
    instead_kept: int
    ms: float  # the group's layers at `kept`, summed over the contexts (table figures)
    instead_ms: float

    def text(self) -> str:
        return (f"{self.group}: {self.kept} channels ({self.ms:.4f} ms in the table) are no faster than "
                f"{self.instead_kept} ({self.instead_ms:.4f} ms)")


def _group_costs(model: LatencyModel, space: SearchSpace, group, kept: int) -> list[float]:
    """The table time of `group`'s layers with `kept` channels: one figure per context (the other groups at each
    uniform level of pruning, every layer at fp32 then at int8 where allowed)."""
    from autocompress.measure.layers import LayerKey

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


def drop_slow(space: SearchSpace, slow: list[SlowChoice]) -> None:
    """Remove the slow choices from `space` in place."""
    gone = {(c.group, c.ratio) for c in slow}
    for g in space.groups:
        keep = [(r, k) for r, k in zip(g.ratios, g.kept, strict=True) if (g.name, r) not in gone]
        g.ratios, g.kept = [r for r, _ in keep], [k for _, k in keep]


def prediction_errors(pairs: list[tuple[float, float]]) -> dict:
    """|predicted - measured| / measured (%) over (predicted, measured) pairs: n, median, worst."""
    errs = sorted(100 * abs(p - m) / m for p, m in pairs if m > 0)
    if not errs:
        return {"n": 0}
    mid = len(errs) // 2
    median = errs[mid] if len(errs) % 2 else (errs[mid - 1] + errs[mid]) / 2
    return {"n": len(errs), "median_pct": round(median, 2), "worst_pct": round(errs[-1], 2)}


def setup_predictor(prep, state, executor, baseline: torch.nn.Module, reduce_range: bool,
                    log: Callable[[str], None] = print) -> Predictor | None:
    """The search's predictor, fitted on the whole models measured so far, or None when it is switched off or fails
    (it only adds figures to the report and skips over-target proposals: a failure never takes the search down).

    A first session drops the channel counts that are slow on this device from the space (`meta.json`
    `slow_choices`) before the study is made; a resumed one drops the same, whatever becomes of its latency model,
    so that its study keeps the same choices."""
    from autocompress.search.cluster import describe_error

    if prep.resume:
        _drop(prep.space, [SlowChoice(**c) for c in state.meta.get("slow_choices", [])], log)
    if not prep.config.latency_model:
        return None
    try:
        return _build(prep, state, executor, baseline, reduce_range, log)
    except Exception as e:  # noqa: BLE001 - the search runs without predictions
        log(f"  latency model failed ({describe_error(e)}): the search goes on without predictions"
            + ("; --target-latency-ms is ignored" if prep.config.target_latency_ms else "")
            + ("; --multi-fidelity stops no trial" if prep.config.multi_fidelity_points else ""))
        state.meta["latency_model"] = {"failed": describe_error(e)}
        state.rd.write_json(state.rd.meta, state.meta)
        return None


def _build(prep, state, executor, baseline: torch.nn.Module, reduce_range: bool,
           log: Callable[[str], None]) -> Predictor:
    from autocompress.measure.cache import cache_dir

    cfg, space = prep.config, prep.space
    table = LatencyTable(LatencyTable.file_for(cache_dir(), state.meta["device"], cfg.latency.model_dump(),
                                               reduce_range))
    example = prep.splits.val.images(1)
    predictor, info = build_predictor(baseline, example, space, table, executor.time_graphs,
                                      reduce_range=reduce_range, log=log)
    if not prep.resume and cfg.sampler != "grid":  # (the grid is the uniform reference: all of its choices stay)
        slow = slow_choices(predictor.model, space)
        _drop(space, slow, log)
        state.meta["slow_choices"] = [asdict(c) for c in slow]
        state.meta["space"] = space.describe()
        state.rd.write_json(state.rd.meta, state.meta)
    _learn_measured(predictor, state, cfg.seed, reduce_range)
    if space.params():
        def measure(data: bytes) -> float:
            return float(executor.get(executor.submit_measure(data))["median_ms"])

        info["proxies"] = PROXIES
        info["proxy_seconds"] = calibrate_on_proxies(predictor, baseline, example, measure, n=PROXIES, seed=cfg.seed,
                                                     reduce_range=reduce_range)
    state.meta["latency_model"] = {**info, **predictor.summary()}
    state.rd.write_json(state.rd.meta, state.meta)
    log(f"  latency model: {info['entries']} layer timings ({info['timed_now']} new, {info['seconds']} s), "
        f"fit on {predictor.model.fit.anchors} whole models measured ({info.get('proxy_seconds', 0)} s)")
    return predictor


def _drop(space: SearchSpace, slow: list[SlowChoice], log: Callable[[str], None]) -> None:
    drop_slow(space, slow)
    for c in slow:
        log(f"  not offered, slow on this device: {c.text()}")


def _learn_measured(predictor: Predictor, state, seed: int, reduce_range: bool) -> None:
    """The anchors measured already: the uniform baselines the table covers, then (on resume) the earlier
    sessions' trials, in trial order."""
    from autocompress.config import BASELINES
    from autocompress.results.records import TrialState
    from autocompress.search.baselines import baseline_spec

    space = predictor.space
    for b in BASELINES:
        rec = state.baselines.get(b.name)
        if rec is not None and rec.measured:
            spec = baseline_spec(b, space, None, seed, reduce_range)
            if predictor.covers(spec.ratios, spec.precisions):
                predictor.learn(spec.ratios, spec.precisions, rec.latency.median_ms)
    for _, rec in sorted(state.records.items()):
        if rec.state is TrialState.COMPLETE and rec.measured and rec.reused is None and rec.duplicate_of is None:
            ratios, precisions = space.decode(rec.choices)
            if predictor.covers(ratios, precisions):
                predictor.learn(ratios, precisions, rec.latency.median_ms)
