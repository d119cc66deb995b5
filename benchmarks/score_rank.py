"""How well the cheap score ranks candidates (issue 29, item 1): Kendall's tau between a candidate's cheap score
(pruned, fake-quantized, BatchNorm recalibrated, no fine-tune: autocompress.pipeline.score) and its validation
accuracy after the search's own fine-tune.

    python benchmarks/score_rank.py [--model demo|imagenette] [--candidates 30] [--seed 0] [--finetune-epochs 6]
    python benchmarks/score_rank.py --model imagenette --finetune-images 2000 --finetune-epochs 2

For a model and seed: N random candidates of the search space as a search builds it for that model and data
(engine.prepare: the model's checked groups and quantizable layers with the space file's choices; the search's later
narrowing by the latency model and the sensitivity scan is not applied), each choice drawn uniformly and
independently. Each candidate is scored cheaply with every `--settings` (training images for BatchNorm : validation
images; `0:` keeps the baseline's statistics, the control), then fine-tuned exactly as a search's trial is
(run_pipeline with the TrialSpec the engine makes: the config's fine-tune with `--finetune-epochs`, the device's
integer format) and its ONNX Runtime artifact evaluated on the whole validation split. Per setting: Kendall's tau of
the score's accuracy, agreement with FP32 and (negated) loss against the fine-tuned accuracy, and the regret of
fine-tuning only the score's best k (the best fine-tuned accuracy among them below the best of all).

Models: `demo` is ResNet-20 on scikit-learn's digits (the baseline from the user's cache, trained on first use);
`imagenette` is torchvision's ResNet-18 at 128 px on ../shared/data/imagenette2-160 with the flags of
benchmarks/imagenette.py (its baseline cached under benchmarks/runs/cache; trained there on first use, hours on a
2-core CPU). `--seed` is the search's seed: data split, baseline, fine-tunes, score sample and the draws (another
seed trains another baseline).

Each candidate is appended to benchmarks/<--out>.json as it finishes, so a run that needs more than one session
goes on where it stopped (same model, seed, fine-tune and space; a larger --candidates adds more; every setting a
run has used is scored for every candidate, so new --settings are added to the candidates already done). Writes
benchmarks/<--out>.md and .json with each session's command, date and host.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "imagenette2-160"
DEFAULT_SETTINGS = ["0:512", "64:512", "256:512", "1024:512", "256:128", "256:2000"]
REGRET_K = (1, 3, 5)


@dataclass(frozen=True)
class Setup:
    """Everything a candidate is scored and fine-tuned with, built once per session."""

    key: str
    finetune_epochs: float
    config: object  # SearchConfig
    splits: object  # Splits the scores read
    finetune_splits: object  # the same, with the fine-tune's training images when capped
    baseline: object  # the FP32 model
    space: object  # SearchSpace
    reduce_range: bool
    baseline_info: dict


def _config(model: str, seed: int, space: str | None):
    from autocompress.engine.plan import make_config

    common = {"seed": seed, **({"space": space} if space else {})}
    if model == "demo":
        return make_config(common)
    return make_config({**common, "model": "resnet18", "dataset": "imagefolder", "data_dir": DATA, "input_size": 128,
                        "resize": 146, "max_images": {"train": None, "val": None, "test": None},
                        "baseline": {"epochs": 18}})


def _capped(splits, n: int | None, seed: int):
    """`splits` with a seeded sample of n training images for the fine-tunes (None: all)."""
    if n is None or n >= len(splits.train):
        return splits
    pos = np.sort(np.random.default_rng([seed, 17]).permutation(len(splits.train))[:n])
    return replace(splits, train=splits.train.take(pos))


def setup(args) -> Setup:
    from autocompress.engine.prepare import prepare
    from autocompress.pipeline.baseline import get_baseline
    from autocompress.pipeline.quantize import quant_format_for
    from autocompress.runtime.device import fingerprint
    from autocompress.tasks.data import dataset_of_config

    cfg = _config(args.model, args.seed, args.space)
    splits = dataset_of_config(cfg)
    print(f"{args.model}: splits {splits.sizes()}; baseline (trained on first use)...", flush=True)
    baseline, info = get_baseline(model_name=cfg.model, splits=splits, settings=cfg.baseline, seed=cfg.seed)
    space = prepare(cfg, splits, baseline).space
    epochs = args.finetune_epochs if args.finetune_epochs is not None else cfg.finetune.epochs
    key = (f"{args.model}-s{args.seed}-ft{epochs:g}"
           + (f"-n{args.finetune_images}" if args.finetune_images else "")
           + (f"-{Path(args.space).stem}" if args.space else ""))
    keep = {k: info[k] for k in ("val_accuracy_torch", "test_accuracy_torch", "path") if k in info}
    return Setup(key, epochs, cfg, splits, _capped(splits, args.finetune_images, args.seed), baseline.eval(), space,
                 bool(quant_format_for(fingerprint(1))["reduce_range"]), keep)


def draws(space, n: int, seed: int) -> list[dict]:
    """n candidates' Optuna params, each choice drawn uniformly and independently (the same n for a seed)."""
    rng = np.random.default_rng([seed, 29])
    params = space.params()
    return [{name: choices[int(rng.integers(len(choices)))] for name, choices in params.items()} for _ in range(n)]


def parse_settings(texts: list[str], seed: int) -> dict:
    from autocompress.pipeline.score import ScoreSettings

    out = {}
    for text in texts:
        bn, val = (int(v) for v in text.split(":"))
        out[f"bn{bn}-val{val}"] = ScoreSettings(bn_images=bn, val_images=val, seed=seed)
    return out


class Scorer:
    """The cheap scores of candidates under several settings: each setting's images and the baseline's logits on
    them read once."""

    def __init__(self, s: Setup, settings: dict) -> None:
        from autocompress.pipeline.score import reference_logits, score_sample

        self.setup, self.settings = s, settings
        self.samples = {k: score_sample(s.splits, v) for k, v in settings.items()}
        self.reference = {k: reference_logits(s.baseline, self.samples[k], v) for k, v in settings.items()}

    def score(self, params: dict, label: str) -> dict:
        from autocompress.pipeline.score import score_candidate

        s = self.setup
        ratios, precisions = s.space.decode(params)
        score = score_candidate(s.baseline, self.samples[label], ratios, precisions,
                                criterion=s.space.criterion(params), round_to=s.space.round_to,
                                min_channels=s.space.min_channels, reduce_range=s.reduce_range,
                                settings=self.settings[label], teacher_logits=self.reference[label])
        row = asdict(score)
        row.pop("kept")
        return row


def finetune(s: Setup, params: dict, epochs: float, threads: int) -> dict:
    """The candidate through a search trial's pipeline: its artifact's validation accuracy and the seconds it took."""
    from autocompress.config import TrainConfig
    from autocompress.errors import describe_error
    from autocompress.pipeline.trial import StoppedEarly, TrialSpec, run_pipeline

    cfg, space = s.config, s.space
    ratios, precisions = space.decode(params)
    spec = TrialSpec(ratios, precisions, TrainConfig(**{**cfg.finetune.model_dump(), "epochs": epochs}),
                     space.round_to, space.min_channels, cfg.seed, s.reduce_range, train_device="cpu",
                     criterion=space.criterion(params))
    t0 = time.perf_counter()
    try:
        out = run_pipeline(s.baseline, s.finetune_splits, spec, threads=threads)
    except Exception as e:  # noqa: BLE001 - a failing candidate is a row, as a failing trial is a record
        return {"error": describe_error(e), "seconds": round(time.perf_counter() - t0, 2)}
    if isinstance(out, StoppedEarly):  # cannot happen without stop_below; said rather than mis-recorded
        return {"error": "stopped early", "seconds": round(time.perf_counter() - t0, 2)}
    return {"val_accuracy": out.val_accuracy, "seconds": round(time.perf_counter() - t0, 2),
            "stages": out.stage_seconds, "channels": sum(out.channels.values())}


def kendall(x: list[float], y: list[float]) -> tuple[float | None, float | None]:
    from scipy.stats import kendalltau

    if len(x) < 3:
        return None, None
    res = kendalltau(x, y)
    tau, p = float(res.statistic), float(res.pvalue)
    return (None, None) if tau != tau else (round(tau, 3), round(p, 4))


def regret(score: list[float], truth: list[float], k: int) -> float | None:
    """Points between the best fine-tuned accuracy of all and the best among the score's top k."""
    if len(score) < k:
        return None
    top = np.argsort(-np.asarray(score), kind="stable")[:k]
    return round(max(truth) - max(truth[i] for i in top), 3)


def summary(run: dict) -> dict:
    """Per setting: Kendall's tau (accuracy, agreement, -loss vs fine-tuned accuracy), regret@k, seconds."""
    done = [c for c in run["candidates"] if "val_accuracy" in c["finetune"]]
    truth = [c["finetune"]["val_accuracy"] for c in done]
    out = {"candidates": len(done), "failed": len(run["candidates"]) - len(done),
           "finetune_seconds_median": statistics.median([c["finetune"]["seconds"] for c in done]) if done else None,
           "settings": {}}
    for label in run["settings"]:
        rows = [c["scores"][label] for c in done if label in c["scores"]]
        if len(rows) != len(done):
            continue
        acc, agree, neg_loss = ([r[k] for r in rows] for k in ("accuracy", "agreement", "loss"))
        neg_loss = [-v for v in neg_loss]
        out["settings"][label] = {
            "tau_accuracy": kendall(acc, truth), "tau_agreement": kendall(agree, truth),
            "tau_loss": kendall(neg_loss, truth),
            **{f"regret@{k}": regret(agree, truth, k) for k in REGRET_K},
            "seconds_median": round(statistics.median(r["seconds"] for r in rows), 3) if rows else None}
    return out


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, (list, tuple)):
        return "-" if v[0] is None else f"{v[0]:+.3f} (p {v[1]:.3g})"
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def _acc(ft: dict) -> str:
    return f"{ft['val_accuracy']:.2f}" if "val_accuracy" in ft else f"failed: {ft.get('error', '?')}"


def table(run: dict) -> list[str]:
    s = run["summary"]
    lines = [f"{s['candidates']} candidates fine-tuned ({s['failed']} failed); fine-tune median "
             f"{_cell(s['finetune_seconds_median'])} s per candidate (run_pipeline, all stages).", "",
             "| setting | BN images | val images | tau accuracy | tau agreement | tau -loss | "
             + " | ".join(f"regret@{k}" for k in REGRET_K) + " | s per score |",
             "|---|---|---|---|---|---|" + "---|" * len(REGRET_K) + "---|"]
    for label, r in s["settings"].items():
        st = run["settings"][label]
        lines.append(f"| {label} | {st['bn_images']} | {st['val_images']} | {_cell(r['tau_accuracy'])} | "
                     f"{_cell(r['tau_agreement'])} | {_cell(r['tau_loss'])} | "
                     + " | ".join(_cell(r[f"regret@{k}"]) for k in REGRET_K) + f" | {_cell(r['seconds_median'])} |")
    return lines


def candidate_lines(run: dict) -> list[str]:
    """One row per candidate: its shape, the default setting's score and the fine-tuned accuracy."""
    label = "bn256-val512" if "bn256-val512" in run["settings"] else next(iter(run["settings"]))
    lines = ["", f"| # | mean ratio | int8 / int4 / fp32 layers | score acc ({label}) | agreement | loss | "
                 "fine-tuned val acc | fine-tune s |", "|---|---|---|---|---|---|---|---|"]
    for c in run["candidates"]:
        ratios = [v for k, v in c["params"].items() if k.startswith("prune:")]
        prec = [v for k, v in c["params"].items() if k.startswith("quant:")]
        sc, ft = c["scores"].get(label, {}), c["finetune"]
        mean = sum(ratios) / len(ratios) if ratios else 0.0
        lines.append(f"| {c['index']} | {mean:.3f} | {prec.count('int8')} / {prec.count('int4')} / "
                     f"{prec.count('fp32')} | {sc.get('accuracy', float('nan')):.2f} | "
                     f"{sc.get('agreement', float('nan')):.2f} | {sc.get('loss', float('nan')):.3f} | "
                     f"{_acc(ft)} | {ft.get('seconds', '-')} |")
    return lines


def markdown(results: dict) -> str:
    lines = ["# Cheap score vs fine-tuned accuracy (issue 29)", "",
             "Kendall's tau (tau-b) between each cheap-score setting and the validation accuracy of the candidate's "
             "ONNX Runtime artifact after the search's own fine-tune; regret@k: points between the best fine-tuned "
             "accuracy of all candidates and the best among the k the agreement score ranks first. "
             "Written by `benchmarks/score_rank.py`."]
    for key, run in results["runs"].items():
        lines += ["", f"## {key}", ""]
        lines += [f"- {x['date']}: `{x['command']}` on {x['host'].get('cpu', '?')} "
                  f"({', '.join(x['host'].get('isa', []))}), {x['threads']} thread(s)" for x in run["sessions"]]
        lines += [f"- FP32 baseline: {_cell(run['baseline'].get('val_accuracy_torch'))}% validation (PyTorch); "
                  f"{run['params']} searched parameters; integer format reduce_range={run['reduce_range']}", ""]
        lines += table(run) + candidate_lines(run)
    return "\n".join(lines) + "\n"


def open_run(results: dict, s: Setup, args, settings: dict) -> dict:
    from autocompress.runtime.device import fingerprint

    run = results["runs"].setdefault(s.key, {"model": args.model, "seed": args.seed,
                                             "finetune_epochs": s.finetune_epochs, "sessions": [],
                                             "candidates": [], "settings": {}})
    run["settings"].update({k: asdict(v) for k, v in settings.items()})
    run.update(baseline=s.baseline_info, reduce_range=s.reduce_range, params=len(s.space.params()))
    run["sessions"].append({"date": dt.datetime.now().isoformat(timespec="seconds"), "host": fingerprint(1),
                            "command": "python benchmarks/score_rank.py " + " ".join(sys.argv[1:]),
                            "threads": args.threads})
    return run


def save(path: Path, results: dict) -> None:
    from autocompress.fileio import atomic_write_text

    for run in results["runs"].values():
        run["summary"] = summary(run)
    atomic_write_text(path.with_suffix(".json"), json.dumps(results, indent=1, default=str) + "\n")
    atomic_write_text(path.with_suffix(".md"), markdown(results))


def measure(run: dict, s: Setup, args, settings: dict, path: Path, results: dict) -> None:
    """Score and fine-tune every candidate not done yet; score the done ones under settings they lack."""
    scorer = Scorer(s, settings)
    done = {c["index"]: c for c in run["candidates"]}
    session = len(run["sessions"]) - 1
    for i, params in enumerate(draws(s.space, args.candidates, args.seed)):
        if i in done:
            if done[i]["params"] != params:
                raise SystemExit(f"candidate {i} of {s.key} in {path.with_suffix('.json')} was drawn from another "
                                 "space; use another --out or remove that run")
            done[i]["scores"].update({k: scorer.score(params, k) for k in settings if k not in done[i]["scores"]})
            continue
        scores = {k: scorer.score(params, k) for k in settings}
        ft = finetune(s, params, s.finetune_epochs, args.threads)
        run["candidates"].append({"index": i, "params": params, "scores": scores, "finetune": ft,
                                  "session": session})
        save(path, results)
        best = scores.get("bn256-val512") or next(iter(scores.values()))
        print(f"  candidate {i}: score {best['accuracy']:.2f}% (agreement {best['agreement']:.2f}%, "
              f"{best['seconds']:.2f} s), fine-tuned {_acc(ft)} "
              f"({ft['seconds']:.1f} s)", flush=True)
    save(path, results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["demo", "imagenette"], default="demo")
    ap.add_argument("--candidates", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--finetune-epochs", type=float, default=None, help="default: the search's own (6)")
    ap.add_argument("--finetune-images", type=int, default=None, help="training images per fine-tune (default: all)")
    ap.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, help="BN images:val images, e.g. 256:512")
    ap.add_argument("--space", default=None, help="a search-space YAML (default: the package's)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the usable CPUs)")
    ap.add_argument("--out", default="score_rank", help="benchmarks/<out>.md and .json")
    args = ap.parse_args()
    if args.model == "imagenette":  # the baseline benchmarks/imagenette.py trained and cached
        os.environ.setdefault("AUTOCOMPRESS_CACHE", str(HERE / "runs" / "cache"))
    import torch

    from autocompress.cpus import usable_cpus
    from autocompress.pipeline.score import ScoreSettings

    args.threads = args.threads or usable_cpus()
    torch.set_num_threads(args.threads)
    s = setup(args)
    settings = parse_settings(args.settings, args.seed)
    path = HERE / args.out
    results = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").is_file() else {}
    results.setdefault("runs", {})
    run = open_run(results, s, args, settings)
    # every setting the run has ever used, so that a resumed session leaves no candidate without one
    settings = {label: ScoreSettings(**kept) for label, kept in run["settings"].items()}
    measure(run, s, args, settings, path, results)
    print("\n".join([f"\n{s.key}", *table(run)]))


if __name__ == "__main__":
    main()
