"""Trials per hour on this machine with 1 and 2 concurrent trials (the demo search, same seed and budget).

    python benchmarks/concurrency.py [--budget 8] [--runs benchmarks/runs]

Each run is `autocompress search --budget B --concurrency C --no-sensitivity --no-latency-cache`; trials
per hour = completed trials / seconds spent in the trial loop (meta.json `spent_seconds`: baselines
excluded), so the figure is the search's throughput once it is going. With C concurrent trials each
gets CPUs / C torch threads, and the device pauses them all while it measures. Writes
benchmarks/concurrency.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from autocompress.results.stages import outside_finetune_seconds

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=8)
    ap.add_argument("--runs", type=Path, default=HERE / "runs")
    args = ap.parse_args()
    rows = []
    for c in (1, 2):
        run = args.runs / f"concurrency-{c}"
        shutil.rmtree(run, ignore_errors=True)
        cmd = [sys.executable, "-m", "autocompress.cli", "search", "--budget", str(args.budget),
               "--concurrency", str(c), "--no-sensitivity", "--no-latency-cache", "--out", str(run), "--no-progress"]
        print(" ".join(cmd[2:]), flush=True)
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(res.stderr[-3000:])
        meta = json.loads((run / "meta.json").read_text())
        t = pd.read_csv(run / "trials.csv")
        ran = t[(t["state"] == "COMPLETE") & t.get("reused", pd.Series(index=t.index, dtype=object)).isna()]
        spent = float(meta["spent_seconds"])
        rows.append({"concurrency": c, "threads_per_trial": meta["ray"]["threads_per_trial"], "trials_run": len(ran),
                     "trial_loop_s": spent, "trials_per_hour": round(3600 * len(ran) / spent, 1),
                     "mean_finetune_s": round(float(ran["t_finetune"].mean()), 2),
                     "paused_by_measurement": int((t.get("latency_paused_trials", pd.Series(dtype=float)) > 0).sum()),
                     "outside_finetune_s": round(float(outside_finetune_seconds(ran).median()), 2)})
        print(rows[-1], flush=True)
    lines = [f"# Trials per hour, 1 vs 2 concurrent trials ({dt.date.today()})", "",
             f"`python benchmarks/concurrency.py --budget {args.budget}` on {os.cpu_count()} cores "
             "(demo ResNet-20, 6-epoch fine-tune). "
             "Trials reusing a baseline's result are not counted.", "",
             "| concurrency | threads per trial | trials run | trial loop s | trials per hour | mean fine-tune s "
             "| median s per trial outside the fine-tune | measurements that paused a trial |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['concurrency']} | {r['threads_per_trial']} | {r['trials_run']} | {r['trial_loop_s']} | "
              f"{r['trials_per_hour']} | {r['mean_finetune_s']} | {r['outside_finetune_s']} | "
              f"{r['paused_by_measurement']} |" for r in rows]
    (HERE / "concurrency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
