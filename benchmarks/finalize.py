"""Finalize (issue 19): the fastest Pareto model within 1 point of FP32, fine-tuned for longer, before vs after.

Runs the demo search (`autocompress search --budget 12`, ResNet-20 on digits) into benchmarks/runs/ unless it is
there, then `autocompress finalize` on the fastest Pareto model whose validation accuracy is within 1 point of
FP32's, with the default epochs. Before and after are the same configuration: test accuracy of the file as the
search left it and as finalized, and their latencies measured together (with FP32) in alternating rounds.

    python benchmarks/finalize.py [--budget 12] [--epochs N] [--rounds 5]
    python benchmarks/finalize.py --run benchmarks/runs/imagenette-search --within 1 3 --out finalize-imagenette
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

from autocompress.api._result import load_run
from autocompress.engine.final import finalize
from autocompress.results.pareto import fastest_within
from autocompress.runtime.device import fingerprint

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="12", help="of the demo search (without --run)")
    ap.add_argument("--run", type=Path, default=None, help="finalize in this run instead of the demo's")
    ap.add_argument("--within", type=float, nargs="+", default=[1.0],
                    help="points of FP32's validation accuracy: the fastest Pareto model within each is finalized")
    ap.add_argument("--epochs", type=int, default=None, help="default: autocompress finalize's own")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default="finalize", help="benchmarks/<out>.md and .json")
    args = ap.parse_args()
    run = args.run or HERE / "runs" / f"finalize-demo-{args.budget}"
    if args.run is None and not (run / "report.html").is_file():
        subprocess.run([sys.executable, "-m", "autocompress.cli", "search", "--budget", args.budget, "--out", str(run),
                        "--no-progress"], check=True)
    result = load_run(run)
    fp32_val = result.baselines["fp32"].artifact.val_accuracy
    search_epochs = json.loads((run / "config.json").read_text())["finetune"]["epochs"]
    host = fingerprint(1)
    lines = [f"# Finalize: before vs after ({dt.date.today()})", "",
             f"`python benchmarks/finalize.py {' '.join(sys.argv[1:])}` on {host['cpu']} ({', '.join(host['isa'])}), "
             f"in the run `{run.name}` (model {result.meta['model']} on {result.meta['dataset']}; the search "
             f"fine-tunes {search_epochs:g} epochs). For each threshold, `autocompress finalize` of the fastest Pareto "
             "model within that many points of FP32's validation accuracy, on every training image, the best epoch's "
             f"weights kept. Latencies: FP32, the searched and the finalized file measured together, {args.rounds} "
             "alternating rounds, median."]
    record = {"command": sys.argv, "host": host, "run": str(run), "models": []}
    for points in args.within:
        row = fastest_within(result.trials, fp32_val, points)
        if row is None:
            lines += ["", f"No model is within {points:g} points of FP32's validation accuracy {fp32_val:.2f}%."]
            continue
        t0 = time.perf_counter()
        f = finalize(run, trial=int(row["trial"]), epochs=args.epochs, rounds=args.rounds, name=f"bench-{points:g}")
        seconds = time.perf_counter() - t0
        lines += _section(f, points, seconds)
        record["models"].append({"within_points": points, "seconds": round(seconds, 1), **f.to_dict()})
    (HERE / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    (HERE / f"{args.out}.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    print("\n".join(lines))


def _section(f, points: float, seconds: float) -> list[str]:
    s, a, b = f.searched, f.final, f.fp32
    lines = ["", f"## The fastest within {points:g} point{'s' if points != 1 else ''}: trial {f.trial}", "",
             f"{f.epochs_done} epochs, weights of epoch {f.best_epoch} kept; {seconds:.0f} s in all.", "",
             "| model | val % | test % | latency ms | vs FP32 | MB |", "|---|---|---|---|---|---|"]
    for label, x in (("FP32 baseline", b), (f"trial {f.trial} as searched", s), (f"trial {f.trial} finalized", a)):
        lines.append(f"| {label} | {x.val_accuracy:.2f} | {x.test_accuracy:.2f} | {x.latency_ms:.4f} | "
                     f"{b.latency_ms / x.latency_ms:.2f}x | {x.size_bytes / 1e6:.3f} |")
    lines += ["", f"Test accuracy {a.test_accuracy - s.test_accuracy:+.2f} points; latency of the finalized file "
              f"{a.latency_ms / s.latency_ms:.3f}x the searched one's (same configuration: the same channels and "
              "integer kernels, `tests/test_finalize.py`)."]
    return lines


if __name__ == "__main__":
    main()
