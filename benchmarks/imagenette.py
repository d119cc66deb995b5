"""Imagenette (issue 17): a torchvision ResNet-18 trained by autocompress's own baseline training, then searched.

Stage `baseline` trains (or loads from the cache) the FP32 ResNet-18 exactly as `autocompress search` with the same
flags would: Imagenette's train/ folder at short side 146, center crop 128, normalized with the training images'
mean/std, random-resized-crop + flip, SGD one-cycle. Every training image is used (train=all); validation is the
whole val/ folder (3,925 images), the test split a fifth of train/ carved off before training. The model is cached
under benchmarks/runs/cache (AUTOCOMPRESS_CACHE), so the search stage finds it.

    python benchmarks/imagenette.py baseline [--epochs 18]
    python benchmarks/imagenette.py search --budget 3h [--finetune-epochs N]
    python benchmarks/imagenette.py write      # imagenette.md again from imagenette.json and the run's files

Stage `search` runs `autocompress search` with the same flags (the baseline comes from the cache) into
benchmarks/runs/imagenette-search (resumed if it is there), watching its memory as benchmarks/memory.py does, and
reports the front: speed-up over FP32 and over the best uniform configuration (the run's uniform int8 / pruned
baselines) at equal validation accuracy (within 0.5 and 1 point of FP32), their test accuracy, time per trial
and peak memory.

Writes benchmarks/imagenette.md and imagenette.json (with the command and the host's fingerprint).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from pathlib import Path

HERE = Path(__file__).parent
DATA = HERE.parent.parent / "shared" / "data" / "imagenette2-160"
# The CLI flags of the benchmark's search: the baseline stage resolves the same config, so its cache key matches.
FLAGS = ["--model", "resnet18", "--dataset", "imagefolder", "--data-dir", str(DATA), "--resize", "146", "--crop", "128",
         "--max-images", "train=all,val=all,test=all"]


def config(epochs: float):
    from autocompress.api import make_config

    return make_config(dict(model="resnet18", dataset="imagefolder", data_dir=DATA, input_size=128, resize=146,
                            max_images={"train": None, "val": None, "test": None}, baseline={"epochs": epochs}))


def baseline(epochs: float) -> dict:
    from autocompress.pipeline.baseline import get_baseline
    from autocompress.tasks.data import dataset_of_config

    cfg = config(epochs)
    splits = dataset_of_config(cfg)
    print(f"splits {splits.sizes()}; {splits.preprocessing.describe()}; augment {splits.augment}", flush=True)
    t0 = time.perf_counter()

    def on_epoch(e: int, loss: float) -> None:
        print(f"epoch {e + 1}/{epochs:g}: loss {loss:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    _, info = get_baseline(model_name=cfg.model, splits=splits, settings=cfg.baseline, seed=cfg.seed,
                           on_epoch=on_epoch)
    return {"splits": splits.sizes(), "preprocessing": splits.preprocessing.as_dict(), "augment": splits.augment,
            "settings": cfg.baseline.model_dump(), **info}


def search(budget: str, epochs: float, finetune_epochs: float | None) -> dict:
    """The default search on the cached baseline; its front against FP32 and the uniform baselines."""
    import subprocess
    import sys

    from memory import Watch

    run = HERE / "runs" / "imagenette-search"
    cmd = [sys.executable, "-m", "autocompress.cli", "search", "--no-progress", *FLAGS, "--baseline-epochs",
           f"{epochs:g}", *(["--finetune-epochs", f"{finetune_epochs:g}"] if finetune_epochs else [])]
    cmd += ["--resume", str(run), "--budget", budget] if (run / "meta.json").is_file() else \
        ["--out", str(run), "--budget", budget]
    proc = subprocess.Popen(cmd)
    watch = Watch(proc.pid)
    while proc.poll() is None:
        watch.poll()
        time.sleep(1.0)
    return {"command": "autocompress " + " ".join(cmd[3:]), **front(run), "memory": watch.summary()}


def front(run: Path) -> dict:
    """FP32's figures, the fastest trial within 0.5 / 1 point of FP32's validation accuracy and its speed-ups over
    FP32 and over the fastest uniform baseline within the same points, trials done, median seconds per trial."""
    from autocompress.api._result import load_run
    from autocompress.results.pareto import fastest_within

    result = load_run(run)
    fp32 = result.baselines["fp32"].to_row()
    uniform = pd_rows([{**b.to_row(), "name": k} for k, b in result.baselines.items() if k != "fp32"])
    done = result.trials[result.trials["state"] == "COMPLETE"]
    rows = []
    for points in (0.5, 1.0):
        best = fastest_within(done, fp32["val_accuracy"], points)
        ref = fastest_within(uniform, fp32["val_accuracy"], points) if len(uniform) else None
        rows.append({"within_points": points, "trial": None if best is None else int(best["trial"]),
                     "val": None if best is None else float(best["val_accuracy"]),
                     "test": None if best is None else float(best["test_accuracy"]),
                     "latency_ms": None if best is None else float(best["latency_ms"]),
                     "vs_fp32": None if best is None else fp32["latency_ms"] / float(best["latency_ms"]),
                     "uniform": None if ref is None else str(ref["name"]),
                     "vs_uniform": None if best is None or ref is None
                     else float(ref["latency_ms"]) / float(best["latency_ms"])})
    # a trial that took a baseline's model (the warm start's uniform configurations) ran nothing of its own
    ran = done[done["reused"].isna()] if "reused" in done.columns else done
    seconds = [sum(v for k, v in r.items() if k.startswith("t_") and v == v) for _, r in ran.iterrows()]
    baselines = [{"name": r["name"], **{k: float(r[k]) for k in ("val_accuracy", "test_accuracy", "latency_ms")}}
                 for _, r in uniform.iterrows() if r.get("latency_ms") == r.get("latency_ms")]
    return {"fp32": {k: fp32[k] for k in ("val_accuracy", "test_accuracy", "latency_ms")}, "front": rows,
            "baselines": baselines, "trials_run": len(ran),
            "built": [{"trial": int(r["trial"]), **{k: float(r[k]) for k in ("val_accuracy", "test_accuracy",
                                                                              "latency_ms", "size_bytes")}}
                      for _, r in ran.iterrows()],
            "trials": len(done), "trial_seconds_median": sorted(seconds)[len(seconds) // 2] if seconds else None}


def pd_rows(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["baseline", "search", "write"], help="write: only rewrite imagenette.md")
    ap.add_argument("--epochs", type=float, default=18, help="of the baseline")
    ap.add_argument("--budget", default="3h")
    ap.add_argument("--finetune-epochs", type=float, default=None, help="default: the search's own")
    args = ap.parse_args()
    os.environ.setdefault("AUTOCOMPRESS_CACHE", str(HERE / "runs" / "cache"))
    from autocompress.runtime.device import fingerprint

    out = HERE / "imagenette.json"
    record = json.loads(out.read_text()) if out.is_file() else {}
    if args.stage == "search":
        record["search"] = {"date": str(dt.date.today()), "host": fingerprint(1),
                            **search(args.budget, args.epochs, args.finetune_epochs)}
    elif args.stage == "baseline":
        record["baseline"] = {"date": str(dt.date.today()), "command": f"python benchmarks/imagenette.py baseline "
                              f"--epochs {args.epochs:g}", "host": fingerprint(1), **baseline(args.epochs)}
    elif "search" in record:  # write: the front again from the run's files (e.g. after a change to front())
        record["search"].update(front(HERE / "runs" / "imagenette-search"))
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    lines = ["# Imagenette: ResNet-18 trained and searched by autocompress", ""]
    lines += _baseline_lines(record["baseline"]) if "baseline" in record else []
    lines += _search_lines(record["search"]) if "search" in record else []
    (HERE / "imagenette.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _host(fp: dict) -> str:
    return f"{fp['cpu']} ({', '.join(fp['isa'])}), {fp['cores']} cores, onnxruntime {fp['onnxruntime']}"


def _baseline_lines(b: dict) -> list[str]:
    return ["## The FP32 baseline", "",
            f"`{b['command']}` ({b['date']}) on {_host(b['host'])}: "
            f"torchvision ResNet-18 from scratch, {b['settings']['epochs']:g} epochs, lr {b['settings']['lr']}, "
            f"batch {b['settings']['batch_size']}, augmentation {b['augment']}; preprocessing: short side "
            f"{b['preprocessing']['resize']}, center crop {b['preprocessing']['crop']}, mean/std of the training "
            "images.", "",
            "| split | images | top-1 % (PyTorch FP32) |", "|---|---|---|",
            f"| train (fitted) | {b['splits']['train']} | - |",
            f"| val: Imagenette's val/ folder, all of it | {b['splits']['val']} | {b['val_accuracy_torch']:.2f} |",
            f"| test: carved from train/, never trained on | {b['splits']['test']} | {b['test_accuracy_torch']:.2f} |",
            "", f"Training took {b.get('train_seconds', '(cached)')} s"
            f"{'' if not b.get('cached') else ' (loaded from the cache: the figure is from when it was trained)'}.",
            ""]


def _search_lines(s: dict) -> list[str]:
    f = s["fp32"]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    lines = ["## The default search", "",
             f"`{s['command']}` ({s['date']}) on {_host(s['host'])}; latency: ONNX Runtime, 1 thread, batch 1, "
             "the medians confirmed together at the end of the run. The baseline is the one above, from the cache.",
             "", "| model | val % (ONNX) | test % (ONNX) | latency ms | vs FP32 |", "|---|---|---|---|---|",
             f"| FP32 | {f['val_accuracy']:.2f} | {f['test_accuracy']:.2f} | {f['latency_ms']:.3f} | 1.00x |"]
    for b in s.get("baselines", []):
        lines.append(f"| uniform {b['name']} | {b['val_accuracy']:.2f} | {b['test_accuracy']:.2f} | "
                     f"{b['latency_ms']:.3f} | {f['latency_ms'] / b['latency_ms']:.2f}x |")
    for b in s.get("built", []):
        lines.append(f"| trial {b['trial']} | {b['val_accuracy']:.2f} | {b['test_accuracy']:.2f} | "
                     f"{b['latency_ms']:.3f} | {f['latency_ms'] / b['latency_ms']:.2f}x |")
    lines += ["", "| within (points of FP32 val) | fastest trial | val % | test % | latency ms | vs FP32 | "
              "fastest uniform within | vs it |", "|---|---|---|---|---|---|---|---|"]
    for r in s["front"]:
        lines.append(f"| {r['within_points']:g} | {fmt(r['trial'], 'd')} | {fmt(r['val'], '.2f')} | "
                     f"{fmt(r['test'], '.2f')} | {fmt(r['latency_ms'], '.3f')} | {fmt(r['vs_fp32'], '.2f')}x | "
                     f"{r['uniform'] or 'none'} | {fmt(r['vs_uniform'], '.2f')}x |")
    m = s.get("memory", {})
    workers = m.get("trial_workers", [])
    lines += ["", *(f"- {n}" for n in s.get("notes", []))] if s.get("notes") else []
    lines += ["", f"{s['trials']} trials completed, {s.get('trials_run', s['trials'])} of them built and fine-tuned "
              "(the others were uniform configurations of the warm start, whose models the baselines had built); "
              f"median {fmt(s['trial_seconds_median'], '.0f')} s per trial built (all stages). Peak resident "
              f"memory: driver {m.get('driver_mb', '?')} MB, largest trial worker "
              f"{max((w['worker_mb'] for w in workers), default='?')} MB (with its image readers, by PSS: "
              f"{max((w['worker_plus_readers_mb'] for w in workers), default='?')} MB).", ""]
    return lines


if __name__ == "__main__":
    main()
