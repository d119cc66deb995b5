"""Search quality at equal trial budgets on the demo task: the default search vs random search vs the
grid of uniform settings, as hypervolume of the (validation accuracy, latency) front vs trials.

    python benchmarks/search_quality.py [--budgets 20 40 80] [--seeds 0 1 2] [--runs benchmarks/runs]
    python benchmarks/search_quality.py --runs benchmarks/runs/sq-imagenette --search-args "--model resnet18 ..."
    python benchmarks/search_quality.py --budgets 20 40 --methods default multifidelity

- default: `autocompress search` as shipped (TPE, warm start from the uniform baselines and the
  sensitivity scan);
- random: `--sampler random` with no warm start, no scan and no screening (pure random search over the space);
- noscreen: the default search with `--no-screen` (every proposal built, even one the latency model predicts
  slower than a measured model with at least its channels and precisions);
- multifidelity: the default search with `--multi-fidelity 1.0` (a trial stops halfway when a finished trial
  measured at least as fast as it is predicted was more than a point better then); compare it with default by
  the per-run table (hypervolume at the end, trials stopped, seconds), since a stopped trial counts in the budget;
- grid: `--sampler grid` over a space of ratios {0, 0.1, ..., 0.8} x {fp32, int8}: every group pruned by
  the same ratio and every layer at the same precision, each distinct model once (ratios that round to the
  same channel counts build one model), through the same pipeline and measurement.

Each run starts with an empty latency cache of its own (`<run>.cache`, sharing the trained baselines,
sensitivity scans and reference probe of the user's cache), so it pays for every measurement as a first
search on a device does; a run repeating an earlier run's configurations would otherwise take their
latencies from the cache and show stage times no first search gets.

Each run is a normal run directory under --runs, so an interrupted benchmark continues where it stopped
(`--resume` of every incomplete run). The hypervolume after n trials comes from the run's own trials
(in trial order) and its own FP32 baseline (autocompress.results.hypervolume). With the grid run, each
search is also set against the best uniform configuration within 1 point of FP32 (the fastest one): the
fastest trial at least as accurate, and its speed-up. Writes benchmarks/<--out>.md, .json and .html (the
plot); --out is search_quality by default.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from autocompress.measure.cache import cache_dir
from autocompress.results.hypervolume import hypervolume, hypervolume_curve, normalise
from autocompress.results.pareto import OBJECTIVES, dominates
from autocompress.results.stages import outside_finetune_seconds

HERE = Path(__file__).resolve().parent
GRID = [round(0.1 * i, 1) for i in range(9)]


def _own_latency_cache(run: Path) -> dict:
    """Environment for a run whose latency cache is its own (`<run>.cache`) while the baselines, sensitivity scans
    and the reference probe come from the user's cache (they do not depend on the run)."""
    own = run.parent / f"{run.name}.cache"
    own.mkdir(parents=True, exist_ok=True)
    for sub in ("baselines", "sensitivity", "probe"):
        shared = cache_dir() / sub
        shared.mkdir(parents=True, exist_ok=True)
        if not (own / sub).exists():
            (own / sub).symlink_to(shared, target_is_directory=True)
    return {**os.environ, "AUTOCOMPRESS_CACHE": str(own)}


def _cli(*args: str, run: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "autocompress.cli", *args, "--no-progress"], capture_output=True,
                         text=True, env=_own_latency_cache(run))
    if res.returncode != 0:
        raise SystemExit(f"autocompress {' '.join(args)} failed:\n{res.stderr[-3000:]}")


def _complete(run: Path) -> bool:
    meta = run / "meta.json"
    return meta.is_file() and json.loads(meta.read_text()).get("status") == "complete"


def search_run(run: Path, budget: int, seed: int, method: str, extra: list[str] = ()) -> Path:
    if _complete(run):
        return run
    if (run / "meta.json").is_file():
        _cli("search", "--resume", str(run), run=run)
        return run
    args = ["search", "--budget", str(budget), "--seed", str(seed), "--out", str(run), *extra]
    if method == "random":
        cfg = run.parent / f"{run.name}.yaml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text("sampler: random\nwarm_start: false\nsensitivity: false\nscreen: false\n")
        args += ["--config", str(cfg)]
    elif method == "multifidelity":
        args += ["--multi-fidelity", "1.0"]
    elif method == "noscreen":
        args += ["--no-screen"]
    print(f"  autocompress {' '.join(args)}", flush=True)
    _cli(*args, run=run)
    return run


def grid_points(runs: Path, seed: int, extra: list[str] = (), precisions: tuple[str, ...] = ("fp32", "int8")
                ) -> list[tuple[float, float]]:
    """The uniform grid (`--sampler grid` over a space of ratios 0, 0.1, ..., 0.8 and the precisions): its points."""
    space = runs / "grid-space.yaml"
    space.parent.mkdir(parents=True, exist_ok=True)
    space.write_text(f"prune:\n  ratios: {GRID}\nquantize:\n  precisions: [{', '.join(precisions)}]\n")
    run = runs / f"grid-s{seed}"
    if not _complete(run):
        if (run / "meta.json").is_file():
            _cli("search", "--resume", str(run), run=run)
        else:
            print(f"  autocompress search --sampler grid --space {space} --seed {seed}", flush=True)
            _cli("search", "--sampler", "grid", "--budget", "1000", "--seed", str(seed), "--space", str(space),
                 "--out", str(run), *extra, run=run)
    base = json.loads((run / "baselines.json").read_text())["fp32"]
    t = pd.read_csv(run / "trials.csv")
    t = t[t["state"] == "COMPLETE"]
    return [normalise(x.latency_ms, x.val_accuracy, base["latency_ms"], base["val_accuracy"]) for x in t.itertuples()]


def baseline_dominance(run: Path) -> list[str]:
    """Uniform baselines that dominate a point of the run's accuracy-latency front (validation accuracy up,
    latency down, as the hypervolume counts them): each as 'baseline > trial N'. Empty when none does."""
    base = json.loads((run / "baselines.json").read_text())
    t = pd.read_csv(run / "trials.csv")
    t = t[t["state"] == "COMPLETE"].dropna(subset=["val_accuracy", "latency_ms"])

    def dom(a, b) -> bool:
        return dominates(a, b, objectives=OBJECTIVES[:2])  # accuracy and latency, without size

    rows = [r for _, r in t.iterrows()]
    front = [r for r in rows if not any(dom(o, r) for o in rows if o is not r)]
    return [f"{k} > trial {int(r['trial'])}" for r in front for k, b in base.items()
            if b.get("state", "COMPLETE") == "COMPLETE" and dom(b, r)]


def _normalised_rows(run: Path, label: str) -> list[dict]:
    """The run's complete trials as {label, val, rel} with `rel` the latency over the run's own FP32 baseline's (runs
    are measured in different windows: ratios to their own FP32 compare, milliseconds may not)."""
    base = json.loads((run / "baselines.json").read_text())["fp32"]
    t = pd.read_csv(run / "trials.csv")
    t = t[(t["state"] == "COMPLETE") & (t["kind"] == "search")].dropna(subset=["val_accuracy", "latency_ms"])
    return [{"label": f"{label} trial {int(r.trial)}", "val": float(r.val_accuracy),
             "rel": float(r.latency_ms) / base["latency_ms"]} for r in t.itertuples()]


def uniform_rows(grid_run: Path | None, run: Path) -> list[dict]:
    """Every uniform configuration measured: the grid's (same ratio everywhere, fp32 or int8 everywhere) and the run's
    own uniform baselines (FP32, int8, 25% and 50% pruned + int8)."""
    base = json.loads((run / "baselines.json").read_text())
    rows = [{"label": f"baseline {k}", "val": float(b["val_accuracy"]),
             "rel": float(b["latency_ms"]) / base["fp32"]["latency_ms"]}
            for k, b in base.items() if b.get("state", "COMPLETE") == "COMPLETE"]
    return rows + (_normalised_rows(grid_run, "grid") if grid_run is not None else [])


def beats_uniform(run: Path, uniform: list[dict], points: float = 1.0) -> dict:
    """The best uniform configuration within `points` of FP32's validation accuracy (the fastest such), and the
    fastest of the run's trials at least as accurate as it: the speed-up of that trial over it (FP32-relative)."""
    fp32 = float(json.loads((run / "baselines.json").read_text())["fp32"]["val_accuracy"])
    best_u = min((u for u in uniform if u["val"] >= fp32 - points), key=lambda u: u["rel"])
    better = [r for r in _normalised_rows(run, "") if r["val"] >= best_u["val"]]
    best = min(better, key=lambda r: r["rel"], default=None)
    return {"uniform": best_u, "trial": best, "speedup": (best_u["rel"] / best["rel"]) if best else 0.0}


def outside_finetune(run: Path) -> list[float]:
    """Seconds per trial outside the fine-tune: the trial's own stages (prune, evaluation, export, quantize, kernel
    check, ONNX Runtime evaluation) plus the time the device held running trials still for its latency sessions.
    The measurement's wall time (t_measure) overlaps the next trial's fine-tune and is not counted; trials run
    before latency_held_s was recorded (the measurement then blocked the search) are left out."""
    t = pd.read_csv(run / "trials.csv")
    if "latency_held_s" not in t.columns:
        return []
    ran = (t["state"] == "COMPLETE") & t["latency_held_s"].notna()
    if "reused" in t.columns:
        ran &= t["reused"].isna()
    return outside_finetune_seconds(t[ran]).round(3).tolist()


def latency_sources(run: Path) -> list[int]:
    """[measured, taken from the run's latency cache] over the run's complete trials."""
    t = pd.read_csv(run / "trials.csv")
    src = t.loc[t["state"] == "COMPLETE", "latency_source"].fillna("measured").astype(str)
    return [int((src == "measured").sum()), int(src.str.startswith("cache").sum())]


def run_summary(run: Path) -> dict:
    """What a run cost and found: trials complete / stopped halfway / skipped by screening, its hypervolume at the
    end, its search seconds (meta.json spent_seconds: every session, after the FP32 baseline), the wall seconds of
    its last session and the seconds its trials spent fine-tuning."""
    meta = json.loads((run / "meta.json").read_text())
    t = pd.read_csv(run / "trials.csv")
    ran = t[~t["state"].isin(["DUPLICATE", "SKIPPED"])]
    c = curve(run)
    return {"complete": int(meta.get("trials_complete", 0)), "stopped": int(meta.get("trials_stopped_early", 0)),
            "skipped": int((t["state"] == "SKIPPED").sum()), "host": _host(meta), "started": meta.get("started", ""),
            "hypervolume": float(c["hypervolume"].iloc[-1]) if len(c) else 0.0,
            "search_s": float(meta.get("spent_seconds", 0.0)), "wall_s": float(meta.get("wall_seconds", 0.0)),
            "finetune_s": round(float(ran["t_finetune"].sum()), 1) if "t_finetune" in ran.columns else 0.0}


def _host(meta: dict) -> str:
    """The device a run measured on, from its meta.json fingerprint: CPU, the ISA flags that decide int8 speed, ORT."""
    d = meta.get("device", {})
    isa = [f for f in d.get("isa", []) if f.startswith(("avx512", "amx")) or f == "avx2"]
    return (f"{d.get('cpu', '?')} ({', '.join(isa)}), ONNX Runtime {d.get('onnxruntime', '?')}, "
            f"{d.get('threads', '?')} thread(s)")


def _host_lines(runs: dict) -> list[str]:
    """Which device each run measured on (runs kept from an earlier session may come from another CPU kind, whose
    int8 speed-ups differ, so a comparison across them is not a same-host one)."""
    by_host: dict[str, list[str]] = {}
    for method, by_seed in runs.items():
        for seed, r in by_seed.items():
            name = f"{method} s{seed} ({r.get('started', '')[:10]})"
            by_host.setdefault(r.get("host", "not recorded"), []).append(name)
    return ["", "**Hosts** (each run's own fingerprint): "
            + "; ".join(f"{h}: {', '.join(names)}" for h, names in by_host.items()) + "."]


def curve(run: Path) -> pd.DataFrame:
    base = json.loads((run / "baselines.json").read_text())["fp32"]
    return hypervolume_curve(pd.read_csv(run / "trials.csv"), base)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=int, nargs="+", default=[20, 40, 80])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--runs", type=Path, default=HERE / "runs")
    ap.add_argument("--methods", nargs="+", default=["default", "random", "grid"])
    ap.add_argument("--grid-seeds", type=int, nargs="+", default=None,
                    help="seeds of the grid (default: --seeds); "
                    "the grid's configurations do not depend on the seed, only its fine-tunes do")
    ap.add_argument("--default-budget", type=int, default=None,
                    help="trials of the default search "
                    "(default: the largest budget; half of it is enough for the N vs 2N check)")
    ap.add_argument("--grid-precisions", nargs="+", default=["fp32", "int8"],
                    help="the grid's precisions (default: fp32 int8)")
    ap.add_argument("--search-args", default="",
                    help="more `autocompress search` flags for every run, e.g. another model and dataset "
                    "(its runs then go under --runs of their own)")
    ap.add_argument("--out", default="search_quality", help="benchmarks/<out>.md, .json and .html")
    ap.add_argument("--keep-others", action="store_true",
                    help="methods not in --methods: "
                    "keep their results from the last search_quality.json, marked with its date")
    args = ap.parse_args()
    extra = shlex.split(args.search_args)
    top = max(args.budgets)
    today = str(dt.date.today())
    results: dict = {"budgets": args.budgets, "seeds": args.seeds, "hv": {}, "curves": {},
                     "dates": {m: today for m in args.methods}}
    searched: dict[tuple[str, int], Path] = {}  # (method, seed) -> its run
    for method in args.methods:
        for seed in (args.grid_seeds or args.seeds) if method == "grid" else args.seeds:
            print(f"{method}, seed {seed}", flush=True)
            if method == "grid":
                pts = grid_points(args.runs, seed, extra, tuple(args.grid_precisions))
                results["hv"].setdefault("grid", {})[seed] = {n: hypervolume(pts) for n in args.budgets}
                continue
            budget = top if method == "random" else (args.default_budget or top)
            run = search_run(args.runs / f"{method}-s{seed}-b{budget}", budget, seed, method, extra)
            c = curve(run)
            results.setdefault("dominated", {}).setdefault(method, {})[seed] = baseline_dominance(run)
            results.setdefault("outside_finetune_s", {}).setdefault(method, {})[seed] = outside_finetune(run)
            results.setdefault("latency_sources", {}).setdefault(method, {})[seed] = latency_sources(run)
            results.setdefault("runs", {}).setdefault(method, {})[seed] = run_summary(run)
            results["curves"].setdefault(method, {})[seed] = c["hypervolume"].tolist()
            searched[(method, seed)] = run
            results["hv"].setdefault(method, {})[seed] = {
                n: float(c["hypervolume"].iloc[n - 1]) if n <= len(c) else float("nan") for n in args.budgets
            }
    # each search against the uniform configurations: the grid's (when its run is there) and the run's own baselines
    grid_seeds = args.grid_seeds or args.seeds
    for (method, seed), run in searched.items():
        grid_run = args.runs / f"grid-s{seed if seed in grid_seeds else grid_seeds[0]}"
        with_grid = _complete(grid_run)
        vs = beats_uniform(run, uniform_rows(grid_run if with_grid else None, run))
        results.setdefault("vs_uniform", {}).setdefault(method, {})[seed] = {
            **vs, "uniforms": ("grid and the run's own uniform baselines" if with_grid
                               else "run's own uniform baselines")}
    kept = _keep_others(results, args.methods, HERE / f"{args.out}.json") if args.keep_others else []
    rows = []
    for method, by_seed in results["hv"].items():
        row = {"method": method}
        for n in args.budgets:
            vals = [by_seed[s][n] for s in by_seed]
            row[f"N={n}"] = ("not run" if any(np.isnan(vals))
                             else f"{np.median(vals):.3f} ({', '.join(f'{v:.3f}' for v in vals)})")
        rows.append(row)
    lines = [f"# Search quality on {'the demo task' if not extra else args.search_args} ({dt.date.today()})", "",
             f"`python benchmarks/search_quality.py {shlex.join(sys.argv[1:])}`: "
             "hypervolume (median over seeds, then each seed) of the validation-accuracy / latency front "
             "after N trials, normalised "
             "to each run's FP32 baseline (see autocompress/results/hypervolume.py). "
             "Grid: all its uniform configurations, whatever N.", "",
             "| method | " + " | ".join(f"N={n}" for n in args.budgets) + " |", "|---|" + "---|" * len(args.budgets)]
    lines += ["| " + " | ".join(r[k] for k in r) + " |" for r in rows]
    if kept:
        lines += ["", "Not re-run this time, kept from the last results: "
                      + ", ".join(f"{m} (run of {results['dates'][m]})" for m in kept) + "."]
    if "default" in results["hv"] and "random" in results["hv"]:
        for n in args.budgets:
            if 2 * n in args.budgets:
                d = np.median([results["hv"]["default"][s][n] for s in args.seeds])
                r = np.median([results["hv"]["random"][s][2 * n] for s in args.seeds])
                lines += ["", f"Default with {n} trials: {d:.3f}; random with {2 * n}: {r:.3f} -> "
                              f"{'default reaches it' if d >= r else 'default does NOT reach it'}."]
    lines += _run_lines(results.get("runs", {}))
    lines += _host_lines(results.get("runs", {}))
    lines += _vs_uniform_lines(results.get("vs_uniform", {}))
    for method, by_seed in results.get("dominated", {}).items():
        found = [f"seed {seed}: {', '.join(d)}" for seed, d in by_seed.items() if d]
        lines += ["", f"Uniform baselines dominating a point of the {method} search's accuracy-latency front: "
                      + ("; ".join(found) if found else f"none (seeds {', '.join(map(str, by_seed))}).")]
    for method, by_seed in results.get("outside_finetune_s", {}).items():
        outside = [v for vals in by_seed.values() for v in vals]
        if outside:
            lines += ["", f"Time per trial outside the fine-tune, {method} search "
                          "(the trial's own stages plus the time the device "
                          "held the running trials still for its latency sessions), "
                          f"over the {len(outside)} trials that recorded it "
                          f"(seeds {', '.join(map(str, by_seed))}): median {np.median(outside):.2f} s, 90th percentile "
                          f"{np.percentile(outside, 90):.2f} s, max {max(outside):.2f} s; "
                          f"{sum(v >= 3 for v in outside)} at 3 s or more."]
            src = results.get("latency_sources", {}).get(method, {})
            if src:
                lines[-1] += (" Latencies measured / taken from the run's own cache (a configuration built again): "
                              + "; ".join(f"seed {seed}: {m} / {c}" for seed, (m, c) in src.items()) + ".")
    (HERE / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    (HERE / f"{args.out}.json").write_text(json.dumps({"command": sys.argv, **results}, indent=1) + "\n")
    _plot(results, HERE / f"{args.out}.html")
    print("\n".join(lines))


def _run_lines(runs: dict) -> list[str]:
    """Per method and seed: trials complete and stopped, the hypervolume at the end and the seconds it took (a
    multi-fidelity search stops trials that count in its budget: it has to match the hypervolume in less time)."""
    if not runs:
        return []
    lines = ["", "**Each run**: trials complete / stopped halfway, proposals skipped by screening (not built, not "
                 "counted in the budget), hypervolume after its last trial, search seconds "
                 "(every session, after the FP32 baseline: uniform baselines, scan, latency model and trials), wall "
                 "seconds of its last session, seconds its trials spent fine-tuning:", "",
             "| method | seed | complete | stopped | skipped | hypervolume | search s | wall s | fine-tune s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method, by_seed in runs.items():
        for seed, r in by_seed.items():
            lines.append(f"| {method} | {seed} | {r['complete']} | {r['stopped']} | {r.get('skipped', 0)} | "
                         f"{r['hypervolume']:.3f} | {r['search_s']:.0f} | {r['wall_s']:.0f} | {r['finetune_s']:.0f} |")
    return lines


def _vs_uniform_lines(vs: dict) -> list[str]:
    """Per method and seed: the fastest uniform configuration within 1 point of FP32, and the run's fastest trial at
    least as accurate; the median speed-up and the 1.2x bar of issue 18."""
    lines = []
    for method, by_seed in vs.items():
        among = sorted({v.get("uniforms", "grid and the run's own uniform baselines") for v in by_seed.values()})
        lines += ["", f"**{method} vs the best uniform configuration** (the fastest within 1 point of FP32's "
                      f"validation accuracy, among the {' / '.join(among)}; latency relative to each run's own FP32):",
                  "",
                  "| seed | best uniform | its val % / latency | fastest trial at least as accurate | val % / latency "
                  "| speed-up |", "|---|---|---|---|---|---|"]
        for seed, v in by_seed.items():
            u, t = v["uniform"], v["trial"]
            lines.append(f"| {seed} | {u['label']} | {u['val']:.2f} / {u['rel']:.3f} | "
                         + (f"{t['label'].strip()} | {t['val']:.2f} / {t['rel']:.3f} | {v['speedup']:.2f}x |" if t
                            else "none | - | - |"))
        med = float(np.median([v["speedup"] for v in by_seed.values()]))
        lines += ["", f"Median speed-up over the best uniform configuration: {med:.2f}x "
                      f"({'meets' if med >= 1.2 else 'does NOT meet'} the 1.2x bar)."]
    return lines


def _keep_others(results: dict, methods: list[str], path: Path) -> list[str]:
    """Copy the results of the methods not run now from the last results at `path` (seeds and budgets back to
    ints, as JSON made them strings); returns the methods kept."""
    if not path.is_file():
        return []
    old = json.loads(path.read_text())
    kept = [m for m in old.get("hv", {}) if m not in methods]
    for m in kept:
        for key in ("hv", "curves", "dominated", "outside_finetune_s", "latency_sources", "vs_uniform", "runs"):
            if m in old.get(key, {}):
                results.setdefault(key, {})[m] = {
                    int(seed): ({int(n): v for n, v in val.items()} if key == "hv" else val)
                    for seed, val in old[key][m].items()}
        # the results before dates were recorded: that day
        results["dates"][m] = old.get("dates", {}).get(m, "2026-11-23")
    return kept


def _plot(results: dict, path: Path) -> None:
    """Hypervolume vs trials, one line per run, the grid as horizontal lines (a self-contained HTML page)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    colors = {"default": "#2563eb", "random": "#dc2626", "multifidelity": "#16a34a", "noscreen": "#9333ea"}
    for method, by_seed in results["curves"].items():
        for seed, c in by_seed.items():
            fig.add_trace(go.Scatter(x=list(range(1, len(c) + 1)), y=c, mode="lines",
                                     line=dict(color=colors.get(method, "gray"), shape="hv"),
                                     name=f"{method} (seed {seed})", legendgroup=method))
    for seed, hv in results["hv"].get("grid", {}).items():
        fig.add_hline(y=next(iter(hv.values())), line=dict(color="black", dash="dash", width=1),
                      annotation_text=f"uniform grid (seed {seed})")
    fig.update_layout(xaxis_title="trials", yaxis_title="hypervolume (FP32-normalised)", template="plotly_white",
                      height=480)
    # plotly.js from its CDN: a committed benchmark plot read in a browser, not a report shipped offline (4.8 MB each)
    fig.write_html(str(path), include_plotlyjs="cdn")


if __name__ == "__main__":
    main()
