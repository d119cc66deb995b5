"""Which sampler should propose the funnel's candidates? Each of `funnel.sampler`'s choices scores the same number of
candidates of the same model over the same ladder, and this table compares what each found per latency target.

    python benchmarks/funnel_samplers.py [--model demo|resnet18|mobilenet_v2] [--candidates 300] [--seeds 0 1]
        [--samplers evolution nsga2 tpe random] [--runs benchmarks/runs] [--out PREFIX]

Each (sampler, seed) is `autocompress search --budget 2 --funnel N` with `funnel: {sampler: ...}` in a config
file: a 2-trial budget runs only the two free uniform baselines after the funnel (no short fine-tunes, no trials), so
the run is the funnel's scoring stage on a real model, with the search's own ladder, latency model and score. The
runs share the latency cache ($AUTOCOMPRESS_CACHE), so every sampler is placed on the ladder by nearly the same
predictions (each run's latency model also learns from the baselines it measures: the ladders differ by about 0.3%).
A finished run is read again, not re-run: the same command goes on where a killed session stopped.

Per run, from its funnel.jsonl: proposals, how many were predicted over the slowest target (not built), and per
target the candidates scored and the best loss of the score (the funnel's ranking key) against the uniform ladder's
best there (its int8 rungs, scored in every run: they go first). Output: benchmarks/funnel_samplers_<model>.md and
.json (or PREFIX.md / .json) with the command, date and host.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from search_quality import MODELS, baseline, protocol_flags  # noqa: E402

SAMPLERS = ("evolution", "nsga2", "tpe", "random")


def run_dir(runs: Path, model: str, sampler: str, seed: int, n: int) -> Path:
    return runs / f"fs-{model}-{sampler}-s{seed}-n{n}"


def search(run: Path, flags: list[str], sampler: str, seed: int, n: int) -> None:
    """The funnel's scoring on this model with `sampler`, unless the run is complete already."""
    meta = run / "meta.json"
    if meta.is_file() and json.loads(meta.read_text()).get("status") == "complete":
        print(f"[{run.name}] complete: read again", flush=True)
        return
    cfg = run.parent / f"{run.name}.yaml"
    cfg.write_text(f"funnel:\n  sampler: {sampler}\n")
    args = ["search", "--out", str(run), "--budget", "2", "--funnel", str(n), "--seed", str(seed),
            "--config", str(cfg), "--no-progress", *flags]
    if run.is_dir():
        args.append("--resume")
    print(f"[{run.name}] autocompress {shlex.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "autocompress.cli", *args], check=True)


def summary(run: Path) -> dict:
    """Proposals, over the ladder, and per target: scored, best loss, the uniform ladder's best loss."""
    from autocompress.results.funnel import FunnelBook

    meta = json.loads((run / "meta.json").read_text())["funnel"]
    rows = list(FunnelBook.open(run / "funnel.jsonl").rows.values())
    per_target = []
    for t, ms in enumerate(meta["targets_ms"]):
        here = [s for s in rows if s.scored and s.target == t]
        uniform = [s.loss for s in here if s.origin == "uniform"]
        per_target.append({"target_ms": ms, "scored": len(here),
                           "best_loss": min((s.loss for s in here), default=None),
                           "best_accuracy": max((s.accuracy for s in here), default=None),
                           "uniform_best_loss": min(uniform, default=None)})
    return {"proposed": len(rows), "over_ladder": sum(s.target is None for s in rows),
            "scored": sum(s.scored for s in rows), "score_seconds": meta.get("score_seconds"),
            "per_target": per_target}


def table(results: dict[str, dict[int, dict]]) -> list[str]:
    """One row per sampler: its proposals over the ladder, and per target its best loss (median over the seeds),
    with the uniform ladder's best beside it."""
    any_run = next(iter(next(iter(results.values())).values()))
    targets = [p["target_ms"] for p in any_run["per_target"]]
    head = ("| sampler | seeds | proposed | over the ladder | "
            + " | ".join(f"{ms:.3g} ms: scored / best loss" for ms in targets) + " |")
    lines = [head, "|" + "---|" * (4 + len(targets))]
    uniform = [min((r["per_target"][i]["uniform_best_loss"] for runs in results.values() for r in runs.values()
                    if r["per_target"][i]["uniform_best_loss"] is not None), default=None) for i in range(len(targets))]
    lines.append("| uniform ladder (int8 rungs) | | | | "
                 + " | ".join("-" if u is None else f"- / {u:.3f}" for u in uniform) + " |")
    for sampler, runs in results.items():
        cells = []
        for i in range(len(targets)):
            scored = statistics.median(r["per_target"][i]["scored"] for r in runs.values())
            best = [b for r in runs.values() if (b := r["per_target"][i]["best_loss"]) is not None]
            cells.append(f"{scored:g} / {statistics.median(best):.3f}" if best else f"{scored:g} / -")
        proposed = sum(r["proposed"] for r in runs.values())
        over = sum(r["over_ladder"] for r in runs.values())
        lines.append(f"| {sampler} | {len(runs)} | {proposed} | {over} ({100 * over / max(proposed, 1):.0f}%) | "
                     + " | ".join(cells) + " |")
    return lines


def main() -> None:
    from autocompress.runtime.device import fingerprint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="demo")
    ap.add_argument("--candidates", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    ap.add_argument("--runs", type=Path, default=HERE / "runs")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    spec = MODELS[args.model]
    base = baseline(spec)
    flags = protocol_flags(spec, base, spec.train_images, spec.finetune_epochs)
    args.runs.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[int, dict]] = {}
    for sampler in args.samplers:
        for seed in args.seeds:
            run = run_dir(args.runs, args.model, sampler, seed, args.candidates)
            search(run, flags, sampler, seed, args.candidates)
            results.setdefault(sampler, {})[seed] = summary(run)
    out = args.out or HERE / f"funnel_samplers_{args.model}"
    command = "python benchmarks/funnel_samplers.py " + shlex.join(sys.argv[1:])
    host = fingerprint(1)
    record = {"date": str(dt.date.today()), "command": command, "host": host, "model": spec.label,
              "candidates": args.candidates, "results": results}
    Path(f"{out}.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"# The funnel's samplers on {spec.label} ({record['date']})", "",
             f"`{command}` on {host.get('cpu', '?')} ({host.get('cores', '?')} cores, ISA "
             f"{', '.join(host.get('isa', []))}), ONNX Runtime "
             f"{host.get('onnxruntime', '?')}: per sampler and seed, {args.candidates} candidates scored by the "
             "search's funnel (`--budget 2 --funnel N`), over nearly the same ladder (the first run's targets are "
             "shown; each run's latency model also learns from the baselines it measures). Per target: "
             "candidates scored (median over the seeds) / the best loss of the score there (median over the seeds; "
             "lower is better).", "", *table(results), ""]
    Path(f"{out}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
