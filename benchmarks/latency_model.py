"""How well the measured latency model (autocompress/latency_model/model.py) predicts whole models.

    python benchmarks/latency_model.py [--runs reports/example benchmarks/runs/imagenette-search] [--random 30]

For each run directory (its model, data and space): the layer table is filled on this host (every one-layer
graph the space can reach, timed; its cost is reported), then whole models are measured the careful way
(LatencyMeter, the search's settings) in one window on this host:
- the anchors a search has before its first trial: the 4 uniform baselines (FP32, int8, 25% and 50% pruned +
  int8) and the 12 random configurations the search measures to calibrate (`latency_model/predict.py`, same seed);
- every configuration the run's trials tried, then `--random` other configurations drawn from the space.
Each is built from the run's trained baseline without fine-tuning (`config_graph`: the same graph as the
trial's artifact, so the same latency). Reported, over the trials' and random configurations: the error
|predicted - measured| / measured of the fit on the anchors alone; of the fit on every model measured before
(as a search predicts each trial when it proposes it); of the fit on all other models (leave one out); and of
the raw table sum (no fit).
Writes benchmarks/latency_model.md and benchmarks/latency_model.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
DEFAULT_RUNS = [HERE.parent / "reports" / "example", HERE / "runs" / "imagenette-search"]


def _setup(run: Path):
    from autocompress.engine.prepare import load_resume_config, prepare
    from autocompress.tasks.data import dataset_of_config

    cfg = load_resume_config(run)
    splits = dataset_of_config(cfg)
    prep = prepare(cfg, splits, cfg.model, resume=True)
    return cfg, _trained(cfg, splits), prep.space, splits.val.images(1)


def _trained(cfg, splits) -> torch.nn.Module:
    """The run's trained FP32 baseline (cached): whole models are built from it, as the search builds its proxies
    and trials. An untrained model's folded biases are all zero, the exporter shares one initializer among them,
    and ONNX Runtime then runs the float convolutions that read the shared, dequantized bias outside its blocked
    layout, twice as slow as in a trial's artifact."""
    from autocompress.pipeline.baseline import baseline_path, load_cached

    cached = load_cached(baseline_path(cfg.model, splits, cfg.baseline, cfg.seed), cfg.model, splits)
    if cached is None:
        sys.exit(f"no cached baseline for {cfg.model} on {cfg.dataset}: run the search (or `autocompress search "
                 f"--resume`) once first, with the same AUTOCOMPRESS_CACHE")
    return cached[0]


def _configs(run: Path, space, n_random: int, seed: int) -> list[tuple[str, dict]]:
    """(label, Optuna params) of the run's completed search trials and of `n_random` uniform draws."""
    out, seen = [], set()
    csv = run / "trials.csv"
    if csv.is_file():
        df = pd.read_csv(csv)
        df = df[(df["kind"] == "search") & (df["state"] == "COMPLETE")]
        cols = [c for c in df.columns if c.startswith(("prune:", "quant:"))]
        for _, row in df.iterrows():
            params = {c: (float(row[c]) if c.startswith("prune:") else str(row[c])) for c in cols if pd.notna(row[c])}
            key = json.dumps(params, sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append((f"trial {int(row['trial'])}", params))
    rng = np.random.default_rng(10_000 + seed)  # apart from the proxies (seeded with the run's seed)
    choices = space.params()
    for i in range(n_random):
        params = {k: v[int(rng.integers(len(v)))] for k, v in choices.items()}
        out.append((f"random {i}", {k: (float(v) if k.startswith("prune:") else str(v)) for k, v in params.items()}))
    return out


def _anchors(space) -> list[tuple[str, dict, dict]]:
    from autocompress.config import BASELINES

    return [(f"baseline {b.name}", {g.name: b.ratio for g in space.groups},
             {layer.name: b.precision for layer in space.layers}) for b in BASELINES]


def evaluate_run(run: Path, n_random: int, seed: int) -> dict:
    from autocompress.latency_model.layers import config_graph, time_graph
    from autocompress.latency_model.model import Fit, LatencyTable
    from autocompress.latency_model.predict import PROXIES, build_predictor, random_configs
    from autocompress.measure.cache import cache_dir
    from autocompress.measure.latency import LatencyMeter
    from autocompress.pipeline.quantize import quant_format_for
    from autocompress.runtime.device import fingerprint

    cfg, model, space, example = _setup(run)
    device = {**fingerprint(cfg.latency.threads), "name": cfg.device}  # as a search records it: the same table
    reduce_range = bool(quant_format_for(device)["reduce_range"])
    table = LatencyTable(LatencyTable.file_for(cache_dir(), device, cfg.latency.model_dump(), reduce_range))

    def time_graphs(graphs):
        return [time_graph(d, shape, threads=cfg.latency.threads, batch=cfg.latency.batch) for d, shape in graphs]

    predictor, info = build_predictor(model, example, space, table, time_graphs, reduce_range=reduce_range)
    lm = predictor.model
    meter = LatencyMeter(cfg.latency)
    rows, feats = [], []
    todo = [(label, r, p) for label, r, p in _anchors(space)]
    todo += [(f"proxy {i}", r, p) for i, (r, p) in enumerate(random_configs(space, PROXIES, cfg.seed))]
    n_anchors = len(todo)
    todo += [(label, *space.decode(params)) for label, params in _configs(run, space, n_random, seed)]
    for i, (label, ratios, precisions) in enumerate(todo):
        data = config_graph(model, example, space, ratios, precisions, reduce_range=reduce_range)
        res = meter.measure(data, tuple(example.shape[1:]))
        rows.append({"model": label, "measured_ms": res.median_ms, "table_sum_ms": lm.total(ratios, precisions),
                     "contended": res.contended})
        feats.append(lm.features(ratios, precisions))
        print(f"  [{i + 1}/{len(todo)}] {label}: measured {res.median_ms:.4f} ms, table sum "
              f"{rows[-1]['table_sum_ms']:.4f} ms", flush=True)
    df = pd.DataFrame(rows)
    points = list(zip(feats, df["measured_ms"], strict=True))
    fit = Fit.of(points[:n_anchors])
    df["predicted_anchors_ms"] = [fit(f) for f in feats]
    # in trial order, each from the models before it (what the search predicts when it proposes)
    df["predicted_online_ms"] = [Fit.of(points[:max(i, n_anchors)])(f) for i, f in enumerate(feats)]
    df["predicted_loo_ms"] = [Fit.of(points[:i] + points[i + 1:])(f) for i, f in enumerate(feats)]
    ev = df.iloc[n_anchors:]
    summary = {name: _errors(ev[col], ev["measured_ms"]) for name, col in
               (("fit on the 4 baselines and 12 random proxies (before any trial)", "predicted_anchors_ms"),
                ("fit on the models measured before (as in a search)", "predicted_online_ms"),
                ("fit on all others (leave one out)", "predicted_loo_ms"), ("raw table sum", "table_sum_ms"))}
    return {"run": str(run.relative_to(HERE.parent)) if run.is_relative_to(HERE.parent) else str(run),
            "model": cfg.model, "input_shape": list(example.shape[1:]), "layers": info["layers"],
            "junctions": info["junctions"],
            "table_entries": info["entries"], "table_filled_now": info["timed_now"], "table_fill_s": info["seconds"],
            "fit": fit.as_dict(), "errors": summary,
            "models": df.round(5).to_dict(orient="records")}


def _errors(pred: pd.Series, measured: pd.Series) -> dict:
    e = (100 * (pred - measured).abs() / measured).to_numpy()
    return {"n": int(len(e)), "median_pct": round(float(np.median(e)), 2),
            "p90_pct": round(float(np.percentile(e, 90)), 2), "max_pct": round(float(e.max()), 2)}


def write(results: list[dict], command: str, wall_s: float, host: dict) -> None:
    lines = ["# Latency model: predicted vs measured", "", f"Command: `{command}`", "",
             f"Host: {host['cpu']}, {host['cores']} cores, ISA {' '.join(host['isa'])}, onnxruntime "
             f"{host['onnxruntime']}, {host['threads']} thread(s). Wall time {wall_s:.0f} s.", "",
             "Error = |predicted - measured| / measured over the trials' configurations and random ones; the measured "
             "figure is the search's own method (LatencyMeter), all in one window on this host.", "",
             "| model | input | layers (junctions) | table entries (filled now, s) | predictor | n | median | p90 "
             "| worst |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for name, e in r["errors"].items():
            lines.append(f"| {r['model']} ({r['run']}) | {'x'.join(map(str, r['input_shape']))} | {r['layers']} "
                         f"({r['junctions']}) | "
                         f"{r['table_entries']} ({r['table_filled_now']}, {r['table_fill_s']} s) | {name} | {e['n']} | "
                         f"{e['median_pct']}% | {e['p90_pct']}% | {e['max_pct']}% |")
    (HERE / "latency_model.md").write_text("\n".join(lines) + "\n")
    (HERE / "latency_model.json").write_text(json.dumps({"command": command, "host": host, "wall_s": round(wall_s, 1),
                                                         "results": results}, indent=1) + "\n")


def main() -> None:
    from autocompress.runtime.device import fingerprint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", type=Path, default=[r for r in DEFAULT_RUNS if (r / "meta.json").is_file()])
    ap.add_argument("--random", type=int, default=30, help="random configurations per run, besides the trials'")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    results = []
    for run in args.runs:
        print(f"{run}:", flush=True)
        results.append(evaluate_run(run.resolve(), args.random, args.seed))
        print(json.dumps(results[-1]["errors"], indent=1), flush=True)
    write(results, "python benchmarks/latency_model.py " + " ".join(sys.argv[1:]), time.perf_counter() - t0,
          fingerprint(1))


if __name__ == "__main__":
    main()
