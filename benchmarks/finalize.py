"""Finalize (issue 19): the fastest Pareto model within 1 point of FP32, fine-tuned for longer, before vs after.

Runs the demo search (`autocompress search --budget 12`, ResNet-20 on digits) into benchmarks/runs/ unless it is
there, then `autocompress finalize` on the fastest Pareto model whose validation accuracy is within 1 point of
FP32's, with the default epochs. Before and after are the same configuration: test accuracy of the file as the
search left it and as finalized, and their latencies measured together (with FP32) in alternating rounds.

    python benchmarks/finalize.py [--budget 12] [--epochs N] [--rounds 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

from autocompress.final import finalize
from autocompress.results.pareto import fastest_within
from autocompress.results.result import load_run
from autocompress.search.device import fingerprint

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="12")
    ap.add_argument("--epochs", type=int, default=None, help="default: autocompress finalize's own")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    run = HERE / "runs" / f"finalize-demo-{args.budget}"
    if not (run / "report.html").is_file():
        subprocess.run([sys.executable, "-m", "autocompress.cli", "search", "--budget", args.budget, "--out", str(run),
                        "--no-progress"], check=True)
    result = load_run(run)
    fp32_val = result.baselines["fp32"].artifact.val_accuracy
    row = fastest_within(result.trials, fp32_val, 1.0)
    if row is None:
        sys.exit(f"no model of {run} is within 1 point of FP32's validation accuracy {fp32_val:.2f}%")
    search_epochs = json.loads((run / "config.json").read_text())["finetune"]["epochs"]
    t0 = time.perf_counter()
    f = finalize(run, int(row["trial"]), epochs=args.epochs, rounds=args.rounds, name="bench")
    seconds = time.perf_counter() - t0
    s, a, b = f.searched, f.final, f.fp32
    lines = [f"# Finalize: before vs after ({dt.date.today()})", "",
             f"`python benchmarks/finalize.py --budget {args.budget} --rounds {args.rounds}"
             f"{f' --epochs {args.epochs}' if args.epochs else ''}` on {fingerprint(1)['cpu']} "
             f"({', '.join(fingerprint(1)['isa'])}). The demo search `autocompress search --budget {args.budget}` "
             f"(ResNet-20 on digits), then `autocompress finalize` of trial {f.trial}: the fastest Pareto model within "
             f"1 point of FP32's validation accuracy. {f.epochs_done} epochs on every training image (the search "
             f"fine-tunes {search_epochs:g} epochs), weights of epoch "
             f"{f.best_epoch} kept; {seconds:.0f} s in all. Latencies: the three files measured together, "
             f"{args.rounds} alternating rounds, median.", "",
             "| model | val % | test % | latency ms | vs FP32 | MB |", "|---|---|---|---|---|---|"]
    for label, x in (("FP32 baseline", b), (f"trial {f.trial} as searched", s), (f"trial {f.trial} finalized", a)):
        lines.append(f"| {label} | {x.val_accuracy:.2f} | {x.test_accuracy:.2f} | {x.latency_ms:.4f} | "
                     f"{b.latency_ms / x.latency_ms:.2f}x | {x.size_bytes / 1e6:.3f} |")
    lines += ["", f"Test accuracy {a.test_accuracy - s.test_accuracy:+.2f} points; latency of the finalized file "
              f"{a.latency_ms / s.latency_ms:.3f}x the searched one's (same configuration: the same channels and "
              "integer kernels, `tests/test_finalize.py`)."]
    (HERE / "finalize.md").write_text("\n".join(lines) + "\n")
    (HERE / "finalize.json").write_text(json.dumps({"command": sys.argv, "host": fingerprint(1),
                                                    "seconds": round(seconds, 1), **f.to_dict()}, indent=1,
                                                   default=str) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
