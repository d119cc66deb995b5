"""Search quality on real models: the default search with a wall-clock budget against the uniform ladder, every final
latency confirmed in one interleaved window (issue 29's "Done when").

    python benchmarks/search_quality.py --model resnet18|mobilenet_v2|demo --seed 0 [--budget 1h]
        [--train-images N] [--finetune-epochs E] [--runs benchmarks/runs] [--rounds 5] [--out PREFIX]
    python benchmarks/search_quality.py --model mobilenet_v2 --baseline-only   # train and cache the baseline, stop

One model and one seed per invocation (one model-seed fits a session); each step is resumable, so the same command
goes on where a killed session stopped:

1. **Baseline.** The FP32 model trained by autocompress's own baseline training on *every* training image, exactly as
   benchmarks/imagenette.py trains it (same settings, so the same cache key: the ResNet-18 of imagenette.md is found
   in benchmarks/runs/cache, $AUTOCOMPRESS_CACHE), always at seed 0, whatever the search's seed; trained there on
   first use (MobileNetV2: hours on 2 cores). The searches get it with `--weights` and its own mean/std
   (`--mean/--std`: with the training images capped, `normalize: dataset` would take other statistics).
2. **default**: `autocompress search` as shipped (latency model, sensitivity scan, funnel, TPE) with `--budget 1h`
   and the reduced protocol (`--max-images train=N,val=all,test=all --finetune-epochs E`), into its own run
   directory (`--resume` when it is there and not complete).
3. **uniform**: the uniform ladder, every prune ratio of the default space (autocompress/search_spaces/default.yaml)
   with every layer int8, as `autocompress search --sampler grid` over a space YAML written next to the run (the
   default space's ratios, precisions [int8]), the same protocol flags, a budget of one trial per ratio, and
   `--no-latency-model` (the grid needs no predictions: the layer table and its proxies would only cost time).
   Its models are fine-tuned exactly like the search's trials; its 25% and 50% rungs are the run's fine-tuned
   baselines and its 0% rung the int8 post-training baseline (the search reuses the same models the same way).
4. **Window.** Every final model: the default run's Pareto models, every rung of the ladder, and the FP32 and int8
   PTQ baselines, measured together after both runs: `--rounds` rounds, each measuring every file once in a shuffled
   order, with autocompress's own measurement (autocompress/measure/latency.py, the run's latency settings from its
   config.json); per file the median of its rounds not flagged `contended` (of all when every one is: the rule of
   the search's own end-of-run confirmation, engine/confirm.py). Files are told apart by content (sha256): one
   measured once whatever runs share it.

The comparison uses the window's figures, with each run's own figures beside them: per method the fastest model within
1 point of FP32's validation accuracy (ONNX Runtime), and the ratio searched / uniform (the bar is 1.2x). Also: the
funnel (meta.json `funnel`: candidates scored, failed, over the targets, the ladder, promoted, seconds), the time of
each stage of the default run, and the cheap score's rank correlation (Kendall's tau) with the accuracy after the
fine-tune, over every model both scored by the funnel and fine-tuned by either run.

Each run has a latency cache of its own (`<run>.cache`; the trained baselines, sensitivity scans, group checks and
reference probe are shared with $AUTOCOMPRESS_CACHE), so each measures every model it builds and times its own
latency table, as a first search on a device does. Output: benchmarks/search_quality_<model>.md and .json (--out
PREFIX: PREFIX.md / .json), one section per seed with the command, date and host; a seed run later is added to the
sections already there.

The previous version of this script (hypervolume at equal trial budgets on the demo: default vs random vs the uniform
grid) is in git history (commit 6f667df); its results stay in search_quality.md / _imagenette / _mf.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import shlex
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "imagenette2-160"
WITHIN = 1.0  # points of FP32's validation accuracy
BAR = 1.2  # searched / uniform


@dataclass(frozen=True)
class ModelSpec:
    """A model of the benchmark: how its baseline is trained (on every training image) and the reduced protocol."""

    name: str  # --model
    label: str
    config: dict  # the baseline's config (autocompress.api.make_config keys): every training image
    data_flags: tuple[str, ...]  # the searches' data flags, without the caps and the baseline's mean/std
    train_images: int | None  # default cap of the fine-tunes' training images (None: all)
    finetune_epochs: float  # default
    given_stats: bool  # pass the baseline's mean/std to the searches
    training_note: str  # printed before the baseline trains
    caps: dict = field(default_factory=dict)  # the other splits' caps in the searches (flag values)


def _imagenette(model: str, label: str, note: str) -> ModelSpec:
    # the config benchmarks/imagenette.py trains its baseline with: the same key in the baseline cache
    config = dict(model=model, dataset="imagefolder", data_dir=DATA, input_size=128, resize=146,
                  max_images={"train": None, "val": None, "test": None}, baseline={"epochs": 18})
    return ModelSpec(model, label, config, ("--model", model, "--dataset", "imagefolder", "--data-dir", str(DATA),
                                            "--resize", "146", "--crop", "128"),
                     train_images=3000, finetune_epochs=2, given_stats=True, training_note=note,
                     caps={"val": "all", "test": "all"})


MODELS = {
    "resnet18": _imagenette("resnet18", "torchvision ResNet-18 at 128 px, trained on Imagenette",
                            "about 40 minutes on 2 cores (imagenette.md: 2363 s)"),
    "mobilenet_v2": _imagenette("mobilenet_v2", "torchvision MobileNetV2 at 128 px, trained on Imagenette",
                                "hours on 2 cores"),
    "demo": ModelSpec("resnet20", "the demo ResNet-20 on scikit-learn's digits", dict(model="resnet20",
                                                                                      dataset="digits"),
                      ("--model", "resnet20"), train_images=None, finetune_epochs=3, given_stats=False,
                      training_note="about 40 s"),
}


# ------------------------------------------------------------------------------------------------------------ baseline


def baseline(spec: ModelSpec) -> dict:
    """The FP32 baseline on every training image, at seed 0 (trained and cached on first use): its file, figures and
    preprocessing."""
    from autocompress.api import make_config
    from autocompress.pipeline.baseline import baseline_path, get_baseline
    from autocompress.tasks.data import dataset_of_config

    cfg = make_config(spec.config)
    splits = dataset_of_config(cfg)
    path = baseline_path(cfg.model, splits, cfg.baseline, cfg.seed)
    if not path.is_file():
        print(f"baseline: {spec.label} is not in the cache ({path}); training it now on all {len(splits.train)} "
              f"training images, {cfg.baseline.epochs:g} epochs: {spec.training_note}", flush=True)
    t0 = time.perf_counter()

    def on_epoch(e: int, loss: float) -> None:
        print(f"  baseline epoch {e + 1}/{cfg.baseline.epochs:g}: loss {loss:.3f} ({time.perf_counter() - t0:.0f} s)",
              flush=True)

    _, info = get_baseline(model_name=cfg.model, splits=splits, settings=cfg.baseline, seed=cfg.seed,
                           on_epoch=on_epoch)
    pre = splits.preprocessing
    return {"path": str(path), "cached": bool(info.get("cached")), "train_seconds": info.get("train_seconds"),
            "epochs": cfg.baseline.epochs, "seed": cfg.seed, "splits": splits.sizes(),
            "val_accuracy_torch": info.get("val_accuracy_torch"),
            "test_accuracy_torch": info.get("test_accuracy_torch"),
            "mean": [float(v) for v in pre.mean], "std": [float(v) for v in pre.std],
            "train_indices": splits.train.indices.tolist()}


def protocol_flags(spec: ModelSpec, base: dict, train_images: int | None, epochs: float) -> list[str]:
    """The flags every run of this model gets: data, the baseline's weights (and mean/std), the reduced protocol."""
    flags = [*spec.data_flags, "--weights", base["path"], "--finetune-epochs", f"{epochs:g}"]
    if spec.given_stats:
        flags += ["--mean", ",".join(repr(v) for v in base["mean"]), "--std", ",".join(repr(v) for v in base["std"])]
    caps = {"train": str(train_images) if train_images else "all", **spec.caps} if (train_images or spec.caps) else {}
    if caps:
        flags += ["--max-images", ",".join(f"{k}={v}" for k, v in caps.items())]
    # every seed on the seed-0 baseline's splits: no seed carves its test images from the baseline's training images
    return flags + ["--split-seed", "0"]


def test_overlap(spec: ModelSpec, base: dict, seed: int, train_images: int | None) -> dict:
    """How many images of this seed's test split the baseline (trained at seed 0) was trained on: none, since every
    search draws its splits with split seed 0 (--split-seed); counted as a check."""
    from autocompress.api import make_config
    from autocompress.tasks.data import dataset_of_config

    over = {"weights": base["path"], "seed": seed, "split_seed": 0, "max_images": {"train": train_images}}
    if spec.given_stats:
        over.update(mean=base["mean"], std=base["std"])
    splits = dataset_of_config(make_config({**spec.config, **over}))
    test = set(splits.test.indices.tolist())
    trained = len(test & set(base["train_indices"]))
    return {"test_images": len(test), "trained_on": trained, "rule": splits.rule}


# ---------------------------------------------------------------------------------------------------------------- runs


def _own_latency_cache(run: Path) -> dict:
    """Environment for a run whose latency cache (and latency table) is its own (`<run>.cache`), while the trained
    baselines, sensitivity scans, group checks and the reference probe come from $AUTOCOMPRESS_CACHE."""
    from autocompress.measure.cache import cache_dir

    own = run.parent / f"{run.name}.cache"
    own.mkdir(parents=True, exist_ok=True)
    for sub in ("baselines", "sensitivity", "group_checks", "probe"):
        shared = cache_dir() / sub
        shared.mkdir(parents=True, exist_ok=True)
        if not (own / sub).exists():
            (own / sub).symlink_to(shared.resolve(), target_is_directory=True)
    return {**os.environ, "AUTOCOMPRESS_CACHE": str(own)}


def _status(run: Path) -> str | None:
    meta = run / "meta.json"
    return json.loads(meta.read_text()).get("status") if meta.is_file() else None


def _cli(args: list[str], run: Path, tag: str) -> int:
    """`autocompress <args>` in a new process, its output streamed and kept in `<run>.log` with the seconds since the
    session's start on each line (the stage times come from there too); its exit status."""
    log_path = run.parent / f"{run.name}.log"
    cmd = [sys.executable, "-m", "autocompress.cli", *args, "--no-progress"]
    print(f"[{tag}] autocompress {shlex.join(args)}", flush=True)
    with open(log_path, "a") as log:
        log.write(f"# session {dt.datetime.now().isoformat(timespec='seconds')}: autocompress {shlex.join(args)}\n")
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                env={**_own_latency_cache(run), "PYTHONUNBUFFERED": "1"})
        assert proc.stdout is not None
        for line in proc.stdout:
            s = time.perf_counter() - t0
            log.write(f"[{s:9.1f}] {line}")
            log.flush()
            print(f"[{tag} {s:6.0f} s] {line}", end="", flush=True)
        rc = proc.wait()
        log.write(f"[{time.perf_counter() - t0:9.1f}] # exit {rc}\n")
    return rc


def search(run: Path, args: list[str], tag: str) -> Path:
    """A run to its end: started, resumed when it is there and not complete, left alone when complete."""
    status, rc = _status(run), 0
    if status == "complete":
        print(f"[{tag}] {run} is complete: kept", flush=True)
    elif status is not None:
        rc = _cli(["search", "--resume", str(run)], run, tag)
    else:
        if run.is_dir() and any(run.iterdir()):
            raise SystemExit(f"{run} exists without meta.json (not a run autocompress started); remove it first")
        rc = _cli(["search", "--out", str(run), *args], run, tag)
    log = run.parent / f"{run.name}.log"
    if _status(run) != "complete":
        raise SystemExit(f"{run} did not complete (status {_status(run)!r}, exit {rc}; its output is in {log}); "
                         "run the same command again to resume")
    if rc != 0:  # the search is done and its files written: what failed came after (the report), and is not used here
        print(f"[{tag}] warning: autocompress exited {rc} after the run completed (see {log}); its results are used",
              flush=True)
    return run


def ladder_space(path: Path) -> list[float]:
    """The uniform ladder's space YAML at `path`: the default space's pruning, every layer int8. Its ratios."""
    import yaml

    import autocompress

    space = yaml.safe_load((Path(autocompress.__file__).parent / "search_spaces" / "default.yaml").read_text())
    space["quantize"] = {**space.get("quantize", {}), "precisions": ["int8"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# The uniform ladder (benchmarks/search_quality.py): every prune ratio of the default space, "
                    "every layer int8.\n" + yaml.safe_dump(space, sort_keys=False))
    return [float(r) for r in space["prune"]["ratios"]]


# -------------------------------------------------------------------------------------------------------- run contents


def _read(run: Path) -> dict:
    import pandas as pd

    from autocompress.results.pareto import pareto_front

    csv = run / "trials.csv"
    trials = pd.read_csv(csv) if csv.stat().st_size > 1 else pd.DataFrame(columns=["trial", "kind", "state"])
    return {"run": run, "meta": json.loads((run / "meta.json").read_text()),
            "config": json.loads((run / "config.json").read_text()),
            "baselines": json.loads((run / "baselines.json").read_text()),
            # the front as the report draws it (pareto.json is the report's: not there when the report failed)
            "pareto": json.loads(pareto_front(trials).to_json(orient="records")) if len(trials) else [],
            "trials": trials}  # (empty when no trial ran: a time budget spent before the first)


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else f


def describe(row: dict) -> str:
    """A configuration in a few words: its pruning range and its layers' precisions."""
    ratios = [float(v) for k, v in row.items() if k.startswith("prune:") and _num(v) is not None]
    precs = Counter(str(v) for k, v in row.items() if k.startswith("quant:") and isinstance(v, str))
    lo, hi = (min(ratios), max(ratios)) if ratios else (0.0, 0.0)
    pruning = f"{lo:.1%}".replace(".0%", "%") if lo == hi else f"{lo:.1%}-{hi:.1%}".replace(".0%", "%")
    layers = ", ".join(f"{n} {p}" for p, n in sorted(precs.items(), key=lambda kv: -kv[1]))
    return f"pruning {pruning}, {layers} layers" if layers else f"pruning {pruning}"


def _row_figures(row: dict) -> dict:
    return {"val": _num(row.get("val_accuracy")), "test": _num(row.get("test_accuracy")),
            "run_ms": _num(row.get("latency_ms")), "search_ms": _num(row.get("search_latency_ms")),
            "size_mb": (_num(row.get("size_bytes")) or 0) / 1e6, "sha256": str(row.get("sha256")),
            "onnx": str(row.get("onnx")), "reused": row.get("reused") if isinstance(row.get("reused"), str) else None}


def final_models(default: dict, uniform: dict) -> list[dict]:
    """Every model the comparison needs, with its run's own figures: FP32 and int8 PTQ (the default run's), the
    default run's Pareto models, the uniform ladder's rungs."""
    out = []
    for name in ("fp32", "int8"):
        b = default["baselines"].get(name)
        if b and b.get("state", "COMPLETE") == "COMPLETE":
            out.append({"method": "baseline", "name": name, "label": "FP32" if name == "fp32" else "int8 PTQ",
                        "run": str(default["run"]), **_row_figures(b)})
    for row in default["pareto"]:
        reused = f" (= {row['reused'].removeprefix('baseline-')})" if isinstance(row.get("reused"), str) else ""
        out.append({"method": "default", "name": f"trial {int(row['trial'])}", "trial": int(row["trial"]),
                    "label": f"searched trial {int(row['trial'])}: {describe(row)}{reused}", "run": str(default["run"]),
                    **_row_figures(row)})
    t = uniform["trials"]
    for row in t[(t["state"] == "COMPLETE") & (t["kind"] == "search")].to_dict("records"):
        # the rung: the ratio most groups have (a group too small for it keeps the closest channel count it allows)
        ratios = Counter(float(v) for k, v in row.items() if k.startswith("prune:") and _num(v) is not None)
        top = max(ratios.items(), key=lambda kv: (kv[1], kv[0]))[0] if ratios else 0.0
        rung = f"{top:.1%}".replace(".0%", "%")
        how = {"baseline-int8": "post-training", None: "fine-tuned"}.get(
            row.get("reused") if isinstance(row.get("reused"), str) else None, "fine-tuned, the run's baseline")
        out.append({"method": "uniform", "name": f"trial {int(row['trial'])}", "trial": int(row["trial"]),
                    "ratio": top, "config": describe(row),
                    "label": f"uniform {rung} + int8 ({how})", "run": str(uniform["run"]), **_row_figures(row)})
    for m in out:
        m["file"] = str(Path(m["run"]) / m["onnx"])
    return out


# -------------------------------------------------------------------------------------------------------------- window


def window(models: list[dict], settings: dict, input_shape: list[int], rounds: int, seed: int, cache: Path) -> dict:
    """Every distinct file (by sha256) measured `rounds` times, each round in a shuffled order; per file its rounds and
    the median of those not flagged contended. Kept in `cache` and reused while the files and rounds are the same."""
    from autocompress.config import LatencyConfig
    from autocompress.engine.confirm import summarise
    from autocompress.measure.latency import LatencyMeter

    files = {m["sha256"]: m["file"] for m in models}
    want = {"files": sorted(files), "rounds": rounds, "settings": settings, "input_shape": input_shape}
    if cache.is_file():
        old = json.loads(cache.read_text())
        if {k: old.get(k) for k in want} == want:
            print(f"window: kept from {cache} ({old['started']})", flush=True)
            return old
    data = {h: Path(f).read_bytes() for h, f in files.items()}
    meter = LatencyMeter(LatencyConfig(**settings))
    rng = random.Random(seed)
    figures: dict[str, list[dict]] = {h: [] for h in files}
    orders = []
    started, t0 = dt.datetime.now().isoformat(timespec="seconds"), time.perf_counter()
    print(f"window: {len(files)} files x {rounds} rounds, each round in a shuffled order", flush=True)
    for r in range(rounds):
        order = sorted(files)
        rng.shuffle(order)
        orders.append([h[:12] for h in order])
        for h in order:
            figures[h].append(meter.measure(data[h], tuple(input_shape), seed=r).as_dict())
        print(f"  round {r + 1}/{rounds} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    result = {**want, "started": started, "seconds": round(time.perf_counter() - t0, 1), "orders": orders,
              "per_file": {h: {"rounds_ms": [round(f["median_ms"], 4) for f in v],
                               "contended_rounds": sum(bool(f.get("contended")) for f in v),
                               "probe_vs_best": [f.get("probe_vs_best") for f in v], **summarise(v)}
                           for h, v in figures.items()}}
    cache.write_text(json.dumps(result, indent=1) + "\n")
    return result


# ------------------------------------------------------------------------------------------------------------- figures


def fastest(models: list[dict], method: str, floor: float, key: str = "window_ms") -> dict | None:
    near = [m for m in models if m["method"] == method and m["val"] is not None and m["val"] >= floor
            and m.get(key) is not None]
    return min(near, key=lambda m: m[key]) if near else None


def comparison(models: list[dict]) -> dict:
    """Per method the fastest model within WITHIN points of FP32's validation accuracy (by the window's latency, and by
    each run's own), and the ratio searched / uniform. With no ladder model within the points, FP32 itself is the
    uniform reference (the fastest uncompressed model that qualifies)."""
    fp32 = next(m for m in models if m["method"] == "baseline" and m["name"] == "fp32")
    floor = fp32["val"] - WITHIN
    out = {"fp32": {k: fp32[k] for k in ("val", "test", "window_ms", "run_ms")}, "floor": floor}
    for key, name in (("window_ms", "window"), ("run_ms", "own")):
        s, u = fastest(models, "default", floor, key), fastest(models, "uniform", floor, key)
        ref = u or fp32
        out[name] = {"searched": _pick(s, fp32, key), "uniform": _pick(u, fp32, key),
                     "uniform_is_fp32": u is None,
                     "ratio": round(ref[key] / s[key], 4) if s and ref.get(key) else None}
    return out


def _pick(m: dict | None, fp32: dict, key: str) -> dict | None:
    if m is None:
        return None
    return {"name": m["name"], "label": m["label"], "val": m["val"], "test": m["test"], "ms": m[key],
            "vs_fp32": round(fp32[key] / m[key], 3) if fp32.get(key) and m[key] else None}


def _trial_key(row: dict, kept: list[str], layers: list[str]) -> str | None:
    """A trials.csv row's model as space.keys.model_key writes it (kept channels, precisions), or None."""
    k = {}
    for g in kept:
        v = _num(row.get(f"channels:{g}"))
        if v is None:
            return None
        k[g] = int(v)
    p = {}
    for layer in layers:
        v = row.get(f"quant:{layer}")
        if not isinstance(v, str):
            return None
        p[layer] = v
    return json.dumps({"kept": k, "precision": p}, sort_keys=True)


def funnel_figures(default: dict, uniform: dict) -> dict:
    """meta.json's funnel, candidates per target, the trial that fine-tuned each promoted candidate, and Kendall's tau
    between each cheap figure (the score's loss and accuracy; the short fine-tune's accuracy, where the funnel ran one)
    and the fine-tuned validation accuracy, over every model both scored and fine-tuned by either run."""
    from dataclasses import asdict

    from autocompress.results.funnel import FunnelBook

    meta = dict(default["meta"].get("funnel") or {})
    book = default["run"] / "funnel.jsonl"
    if not book.is_file():
        return {"meta": meta}
    rows = [asdict(r) for _, r in sorted(FunnelBook.open(book).rows.items())]  # a candidate's last line wins
    for r in rows:  # keys as _trial_key writes them
        r["key"] = json.dumps(json.loads(r["key"]), sort_keys=True)
    scored: dict[str, dict] = {}
    for r in rows:
        if r.get("accuracy") is not None:
            scored.setdefault(r["key"], r)
    if not scored:
        return {"meta": meta}
    targets = meta.get("targets_ms", [])
    per_target = Counter(r["target"] for r in scored.values())
    first = json.loads(next(iter(scored)))
    kept, layers = sorted(first["kept"]), sorted(first["precision"])
    tuned: dict[str, dict] = {}  # model key -> the fine-tuned model's validation accuracy (first run that built it)
    for name, run in (("default", default), ("uniform", uniform)):
        t = run["trials"]
        for row in t[(t["state"] == "COMPLETE") & (t["kind"] == "search")].to_dict("records"):
            if row.get("reused") == "baseline-int8":  # post-training, not fine-tuned
                continue
            key = _trial_key(row, kept, layers)
            if key is not None and key not in tuned:
                tuned[key] = {"run": name, "trial": int(row["trial"]), "val": float(row["val_accuracy"])}
    pairs = [{"candidate": s["number"], "origin": s["origin"], "score_acc": s["accuracy"], "loss": s["loss"],
              "short_acc": s.get("short_accuracy"), "predicted_ms": s["predicted_ms"], **tuned[k]}
             for k, s in scored.items() if k in tuned]
    rank: dict = {"n": len(pairs), "pairs": pairs}
    from scipy.stats import kendalltau

    for name, field_, sign in (("loss", "loss", -1), ("accuracy", "score_acc", 1), ("short", "short_acc", 1)):
        have = [q for q in pairs if q[field_] is not None]
        if len(have) >= 3:
            tau, pv = kendalltau([sign * q[field_] for q in have], [q["val"] for q in have])
            rank[name] = {"n": len(have), "tau": None if tau != tau else round(float(tau), 3),
                          "p": None if pv != pv else round(float(pv), 4)}
    by_number = {r["number"]: r for r in rows}
    for q in meta.get("promoted", []):  # the default run's trial that fine-tuned it
        s = by_number.get(q["candidate"])
        hit = tuned.get(s["key"]) if s else None
        q["trial"] = hit if hit and hit["run"] == "default" else None
    return {"meta": meta, "per_target": {f"{targets[t]:.4g}" if t is not None and t < len(targets) else str(t): n
                                         for t, n in sorted(per_target.items(), key=lambda kv: (kv[0] is None,
                                                                                                kv[0] or 0))},
            "rank": rank}


_STAMP = re.compile(r"^\[\s*([0-9.]+)\] (.*)$")


def _last_session(log: Path) -> list[tuple[float, str]]:
    """(seconds since the session's start, text) of the last session in a run's log."""
    if not log.is_file():
        return []
    out: list[tuple[float, str]] = []
    for line in log.read_text().splitlines():
        if line.startswith("# session"):
            out = []
        elif m := _STAMP.match(line):
            out.append((float(m.group(1)), m.group(2)))
    return out


def stage_times(run: dict) -> dict:
    """Seconds of each stage of a run: the uniform baselines (their rows), the latency table and its proxies, the
    sensitivity scan, the funnel (meta.json), the trials and the end-of-run confirmation (from the times of the log's
    lines: from the first trial's start, its line's time less its pipeline's seconds, to the confirmation's first
    line), the whole search (spent_seconds) and its last session's wall time."""
    meta = run["meta"]
    base = [b for b in run["baselines"].values()]
    lm = meta.get("latency_model") if isinstance(meta.get("latency_model"), dict) else {}
    sens = meta.get("sensitivity") if isinstance(meta.get("sensitivity"), dict) else {}
    fun = meta.get("funnel") if isinstance(meta.get("funnel"), dict) else {}
    out = {"baselines": round(sum(float(b.get("duration_s") or 0) for b in base), 1),
           "latency_table": lm.get("seconds"), "latency_proxies": lm.get("proxy_seconds"),
           "table_entries": lm.get("entries"), "table_timed_now": lm.get("timed_now"),
           "scan": sens.get("seconds"), "scan_cached": sens.get("cached"), "funnel": fun.get("seconds"),
           "spent": meta.get("spent_seconds"), "wall_last_session": meta.get("wall_seconds"),
           "sessions": 1 + int(meta.get("resumed", 0))}
    lines = _last_session(run["run"].parent / f"{run['run'].name}.log")
    durations = {int(r["trial"]): float(r.get("duration_s") or 0) for r in run["trials"].to_dict("records")}
    first = next(((s, int(m.group(1))) for s, text in lines if (m := re.match(r"trial (\d+):", text))), None)
    confirm = next((s for s, text in lines if text.startswith("confirming the latency")), None)
    end = lines[-1][0] if lines else None
    if first is not None:
        start = first[0] - durations.get(first[1], 0.0)
        stop = confirm if confirm is not None else end
        out["trials"] = round(stop - start, 1) if stop is not None else None
    if confirm is not None and end is not None:
        out["confirmation"] = round(end - confirm, 1)
    t = run["trials"]
    built = t[(t["state"] == "COMPLETE") & t["reused"].isna()] if "reused" in t.columns else t[t["state"] == "COMPLETE"]
    out["trials_complete"] = int((t["state"] == "COMPLETE").sum())
    out["trials_built"] = len(built)
    out["trials_failed"] = int((t["state"] == "FAIL").sum())
    if len(built) and "t_finetune" in built.columns:
        from autocompress.results.stages import outside_finetune_seconds

        out["finetune_median"] = round(float(built["t_finetune"].median()), 1)
        out["outside_finetune_median"] = round(float(outside_finetune_seconds(built).median()), 1)
    return out


# -------------------------------------------------------------------------------------------------------------- output


def _f(v, spec: str = ".2f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def section_lines(seed: str, s: dict) -> list[str]:
    h, p, b = s["host"], s["protocol"], s["baseline"]
    c, w = s["comparison"], s["comparison"]["window"]
    trained = "" if b["cached"] else f", trained in this session in {b['train_seconds']} s"
    lines = [f"## Seed {seed}", "",
             f"`{s['command']}`, {s['date']} to {s['finished']}, on {h.get('cpu', '?')} "
             f"({', '.join(h.get('isa', []))}), {h.get('cores', '?')} cores, host `{h.get('host', '?')}`, ONNX Runtime "
             f"{h.get('onnxruntime', '?')}, Python {h.get('python', '?')}; latency {p['latency_threads']} thread(s), "
             f"batch {p['latency_batch']}.", "",
             f"- Protocol (the same for both methods): fine-tunes on {p['train_images'] or 'all'} training images "
             f"(`--max-images {p['max_images'] or '(default)'}`), {p['finetune_epochs']:g} epochs; default search "
             f"budget {p['budget']}; ladder rungs {', '.join(f'{r:g}' for r in p['ladder'])} x int8; window "
             f"{p['rounds']} rounds.",
             f"- Baseline: `{Path(b['path']).name}` ({b['epochs']:g} epochs on all {b['splits']['train']} training "
             f"images, seed {b['seed']}; PyTorch {_f(b['val_accuracy_torch'])}% val / {_f(b['test_accuracy_torch'])}% "
             f"test{trained}).",
             f"- Test split: {s['test_overlap']['trained_on']} of its {s['test_overlap']['test_images']} images were "
             "training images of the baseline"
             + (" (the splits are drawn with the search's seed, the baseline was trained at seed 0): its test figures "
                "are not held out; validation (what the bar uses) is." if s['test_overlap']['trained_on'] else "."),
             f"- Runs: default `{s['runs']['default']['dir']}` ({s['runs']['default']['status']}), uniform "
             f"`{s['runs']['uniform']['dir']}` ({s['runs']['uniform']['status']}); window "
             f"{s['window']['seconds']:.0f} s from {s['window']['started']} ({s['window']['files']} files).", "",
             "| model | val % | test % | latency ms, window (median of rounds) | rounds ms | run's own ms | vs FP32 "
             "(window) | size MB |", "|---|---|---|---|---|---|---|---|"]
    fp32_ms = c["fp32"]["window_ms"]
    for m in s["models"]:
        lines.append(f"| {m['label']} | {_f(m['val'])} | {_f(m['test'])} | {_f(m['window_ms'], '.3f')}"
                     f"{' (contended)' if m.get('window_contended') else ''} | "
                     f"{' '.join(f'{v:.3f}' for v in m.get('rounds_ms', []))} | {_f(m['run_ms'], '.3f')} | "
                     f"{_f(fp32_ms / m['window_ms'] if m['window_ms'] else None)}x | {m['size_mb']:.3f} |")
    lines += ["", f"**Within {WITHIN:g} point of FP32's validation accuracy** ({_f(c['fp32']['val'])}%, so at least "
                  f"{_f(c['floor'])}%), the fastest of each method by the window's latency:", "",
              "| method | model | val % | test % | latency ms | vs FP32 |", "|---|---|---|---|---|---|",
              f"| FP32 | FP32 | {_f(c['fp32']['val'])} | {_f(c['fp32']['test'])} | {_f(fp32_ms, '.3f')} | 1.00x |"]
    for method in ("searched", "uniform"):
        m = w[method]
        name = "none" if m is None else m["label"]
        if method == "uniform" and w["uniform_is_fp32"]:
            name = "none of the ladder (FP32 is the reference)"
        lines.append(f"| {method} | {name} | {_f(m and m['val'])} | {_f(m and m['test'])} | "
                     f"{_f(m and m['ms'], '.3f')} | {_f(m and m['vs_fp32'])}x |")
    own = c["own"]
    verdict = ("no searched model within the points" if w["ratio"] is None else
               f"{w['ratio']:.2f}x ({'meets' if w['ratio'] >= BAR else 'does NOT meet'} the {BAR:g}x bar"
               f"{'' if w['ratio'] >= 1 else '; slower than uniform'})")
    lines += ["", f"**Searched / uniform: {verdict}.** By each run's own figures (measured in two windows): "
                  f"{_f(own['ratio'])}x ({own['searched']['label'] if own['searched'] else 'none'} vs "
                  f"{own['uniform']['label'] if own['uniform'] else 'FP32'})."]
    lines += _funnel_lines(s.get("funnel", {})) + _stage_lines(s["stages"])
    return lines + [""]


def _funnel_lines(fun: dict) -> list[str]:
    meta = fun.get("meta") or {}
    failed = meta.get("failed") if isinstance(meta.get("failed"), str) else None  # (else: a count of candidates)
    if not meta or "off" in meta or failed:
        return ["", f"Funnel: {meta.get('off') or (failed and 'failed: ' + failed) or 'not run'}."]
    lines = ["", f"**Funnel** (meta.json `funnel`): {meta.get('scored')} candidates scored of {meta.get('proposed')} "
                 f"proposed (asked for up to {meta.get('candidates')}), {meta.get('failed')} failed, "
                 f"{meta.get('over_targets')} predicted over the targets (not built), {meta.get('seconds')} s; "
                 f"targets {', '.join(f'{t:.4g}' for t in meta.get('targets_ms', []))} ms (scored per target: "
                 + (", ".join(f"{t} ms: {n}" for t, n in fun.get("per_target", {}).items()) or "none") + "); "
                 f"settings {json.dumps(meta.get('settings', {}))}.", ""]
    if meta.get("promoted"):
        lines += ["| promoted candidate | origin | target ms | score % (loss) | short fine-tune % | predicted ms | "
                  "fine-tuned as | val % |", "|---|---|---|---|---|---|---|---|"]
    else:
        lines[-1:] = []
    targets = meta.get("targets_ms", [])
    for p in meta.get("promoted", []):
        t = p.get("trial")
        lines.append(f"| {p['candidate']} | {p['origin']} | "
                     f"{_f(targets[p['target']] if p.get('target') is not None else None, '.4g')} | "
                     f"{_f(p['accuracy'])} ({_f(p['loss'], '.3f')}) | {_f(p.get('short_accuracy'))} | "
                     f"{_f(p['predicted_ms'], '.3f')} | "
                     f"{'trial ' + str(t['trial']) if t else 'not run'} | {_f(t and t['val'])} |")
    if meta.get("shortened") is not None:
        lines[1] += (f" Short fine-tunes: {meta.get('shortened')} ({meta.get('short_failed')} failed); scoring took "
                     f"{meta.get('score_seconds')} s of the funnel's {meta.get('seconds')} s.")
    rank = fun.get("rank", {})
    names = {"loss": "the score's loss (what promotion ranks by without short fine-tunes)",
             "accuracy": "the score's accuracy", "short": "the short fine-tune's accuracy"}
    taus = [f"{_f(rank[k]['tau'], '+.3f')} (p {_f(rank[k]['p'], '.3f')}, {rank[k]['n']} models) for {names[k]}"
            for k in names if k in rank]
    if taus:
        lines += ["", f"**Cheap figures vs fine-tuned validation accuracy** (Kendall's tau-b), over the {rank['n']} "
                      "models both scored by the funnel and fine-tuned by either run (the ladder's fine-tuned rungs, "
                      "the search's trials): " + "; ".join(taus) + "."]
    else:
        lines += ["", f"Cheap score vs fine-tuned accuracy: only {rank.get('n', 0)} models both scored and fine-tuned."]
    return lines


def _stage_lines(st: dict) -> list[str]:
    d, u = st["default"], st["uniform"]
    scan = f"{_f(d.get('scan'), '.0f')} s{' (cached)' if d.get('scan_cached') else ''}"
    return ["", "**Time of each stage** of the default search (s): "
                f"uniform baselines {_f(d['baselines'], '.0f')}, latency table {_f(d.get('latency_table'), '.0f')} "
                f"({d.get('table_timed_now')} of {d.get('table_entries')} layer timings new) + proxies "
                f"{_f(d.get('latency_proxies'), '.0f')}, scan {scan}, funnel {_f(d.get('funnel'), '.0f')}, "
                f"trials {_f(d.get('trials'), '.0f')} ({d['trials_complete']} complete, {d['trials_built']} built, "
                f"{d['trials_failed']} failed; median fine-tune {_f(d.get('finetune_median'), '.0f')} s, outside it "
                f"{_f(d.get('outside_finetune_median'), '.0f')} s), end-of-run confirmation "
                f"{_f(d.get('confirmation'), '.0f')}; the whole search {_f(d.get('spent'), '.0f')} "
                f"({d['sessions']} session(s)). The uniform ladder: baselines {_f(u['baselines'], '.0f')}, trials "
                f"{_f(u.get('trials'), '.0f')} ({u['trials_built']} built), the whole run {_f(u.get('spent'), '.0f')}."]


def write(prefix: Path, doc: dict) -> None:
    spec = MODELS[doc["model"]]
    lines = [f"# Search quality: {spec.label}", "",
             "Written by `benchmarks/search_quality.py` (its docstring has the protocol): the default search with a "
             "wall-clock budget against the uniform ladder (every prune ratio of the default space x int8, fine-tuned "
             "like the search's trials), every final latency measured again in one interleaved window. The bar: the "
             f"fastest searched model within {WITHIN:g} point of FP32's validation accuracy at least {BAR:g}x faster "
             "than the fastest uniform one, on both seeds of at least one model, and no slower on the other.", ""]
    ratios = {seed: s["comparison"]["window"]["ratio"] for seed, s in sorted(doc["seeds"].items())}
    meets = all(v and v >= BAR for v in ratios.values())
    no_slower = all(v and v >= 1 for v in ratios.values())
    lines += ["Searched / uniform by seed: " + ", ".join(f"seed {k}: {_f(v, '.2f', 'none within the points')}"
                                                         f"{'x' if v else ''}" for k, v in ratios.items())
              + f". At least {BAR:g}x on every seed run: {'yes' if meets else 'no'}"
              + f"; no slower on every seed run: {'yes' if no_slower else 'no'}"
              + (" (seeds 0 and 1 are the protocol)." if set(ratios) != {"0", "1"} else "."), ""]
    for seed, s in sorted(doc["seeds"].items()):
        lines += section_lines(seed, s)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    prefix.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


# ---------------------------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", default="1h", help="of the default search (default 1h)")
    ap.add_argument("--train-images", type=int, default=None,
                    help="training images of every fine-tune (default: resnet18 / mobilenet_v2 3000, demo all)")
    ap.add_argument("--finetune-epochs", type=float, default=None,
                    help="epochs of every fine-tune (default: resnet18 / mobilenet_v2 2, demo 3)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the measurement window (default 5)")
    ap.add_argument("--runs", type=Path, default=HERE / "runs", help="where the run directories go")
    ap.add_argument("--out", type=Path, default=None,
                    help="PREFIX of the results, PREFIX.md and PREFIX.json (default benchmarks/search_quality_<model>)")
    ap.add_argument("--baseline-only", action="store_true", help="train (or find) the baseline, and stop")
    args = ap.parse_args()
    os.environ.setdefault("AUTOCOMPRESS_CACHE", str(HERE / "runs" / "cache"))
    spec = MODELS[args.model]
    n_train = args.train_images if args.train_images is not None else spec.train_images
    epochs = args.finetune_epochs if args.finetune_epochs is not None else spec.finetune_epochs
    started, t0 = dt.datetime.now().isoformat(timespec="seconds"), time.perf_counter()

    base = baseline(spec)
    print(f"baseline: {base['path']} ({'cached' if base['cached'] else 'trained now'}; val "
          f"{_f(base['val_accuracy_torch'])}%, test {_f(base['test_accuracy_torch'])}%)", flush=True)
    if args.baseline_only:
        return
    flags = protocol_flags(spec, base, n_train, epochs)
    tag = f"{args.model}-s{args.seed}-t{n_train or 'all'}-e{epochs:g}"
    runs = args.runs.resolve()
    default_run = search(runs / f"sq-{tag}-default-{args.budget}", ["--budget", args.budget, "--seed",
                                                                    str(args.seed), *flags], "default")
    space = runs / f"sq-{tag}-uniform.yaml"
    ratios = ladder_space(space)
    uniform_run = search(runs / f"sq-{tag}-uniform", ["--sampler", "grid", "--space", str(space), "--budget",
                                                      str(len(ratios)), "--seed", str(args.seed),
                                                      "--no-latency-model", *flags], "uniform")
    default, uniform = _read(default_run), _read(uniform_run)
    settings = default["config"]["latency"]
    if uniform["config"]["latency"] != settings:
        print("warning: the two runs' latency settings differ; the window uses the default run's", flush=True)
    models = final_models(default, uniform)
    win = window(models, settings, default["meta"]["input_shape"], args.rounds, args.seed,
                 runs / f"sq-{tag}-window.json")
    for m in models:
        f = win["per_file"][m["sha256"]]
        m.update(window_ms=round(f["median_ms"], 4), rounds_ms=f["rounds_ms"], window_contended=f["contended"])
    from autocompress.runtime.device import fingerprint

    host = fingerprint(settings["threads"])
    hosts = {name: {k: r["meta"].get("device", {}).get(k) for k in ("host", "cpu", "isa")}
             for name, r in (("default", default), ("uniform", uniform))}
    section = {
        "command": "python benchmarks/search_quality.py " + shlex.join(sys.argv[1:]),
        "date": min(started, default["meta"].get("started") or started),  # the default search's start
        "finished": dt.datetime.now().isoformat(timespec="seconds"), "invoked": started,
        "seconds": round(time.perf_counter() - t0, 1), "host": host, "run_hosts": hosts,
        "protocol": {"train_images": n_train, "finetune_epochs": epochs, "budget": args.budget, "ladder": ratios,
                     "rounds": args.rounds, "flags": flags,
                     "max_images": next((flags[i + 1] for i, f in enumerate(flags) if f == "--max-images"), None),
                     "latency_threads": settings["threads"], "latency_batch": settings["batch"]},
        "baseline": {k: v for k, v in base.items() if k != "train_indices"},
        "test_overlap": test_overlap(spec, base, args.seed, n_train),
        "runs": {name: {"dir": str(r["run"]), "status": r["meta"].get("status"),
                        "fp32_val": r["baselines"]["fp32"].get("val_accuracy")}
                 for name, r in (("default", default), ("uniform", uniform))},
        "window": {k: win[k] for k in ("started", "seconds", "rounds", "orders")} | {"files": len(win["per_file"])},
        "models": models, "comparison": comparison(models), "funnel": funnel_figures(default, uniform),
        "stages": {"default": stage_times(default), "uniform": stage_times(uniform)},
    }
    prefix = args.out or HERE / f"search_quality_{args.model}"
    path = prefix.with_suffix(".json")
    doc = json.loads(path.read_text()) if path.is_file() else {"model": args.model, "seeds": {}}
    doc["seeds"][str(args.seed)] = section
    write(prefix, doc)


if __name__ == "__main__":
    main()
