"""How this host's speed moves over minutes: one Pareto model re-measured in new processes beside the reference probe.

    python benchmarks/drift.py [--run reports/example] [--trial N] [--samples 12] [--every 30]

Every `--every` seconds, a new process measures the model with the search's own latency method
(autocompress.measure.latency, default settings) and runs the reference probe (the fixed two-conv fp32
network every measurement is bracketed by) 5 x 25 times before and after. The table gives each figure, its
deviation from the run's reported median, the probe's median against the fastest this device has ever run it,
and the model / probe ratio. It is the evidence behind the README's "re-measured in new processes": whether a
re-measurement that misses the reported figure follows the host's speed (probe slow too) or not. Writes
benchmarks/drift.md and drift.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from device import md_table  # benchmarks/device.py, beside this script

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CODE = r"""
import sys, json, statistics
from pathlib import Path
from autocompress.measure.latency import LatencyMeter
meter = LatencyMeter()  # the search's default settings: 1 thread, batch 1
p = meter.probe  # the reference probe the measurement below is bracketed by
before = statistics.median(p() for _ in range(5))
r = meter.measure(Path(sys.argv[1]).read_bytes(), tuple(json.loads(sys.argv[2])))
after = statistics.median(p() for _ in range(5))
print(json.dumps({"latency_ms": r.median_ms, "probe_ms": (before + after) / 2, "probe_best_ms": p.best,
                  "slowed_sessions": r.slowed_sessions, "contended": r.contended}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "reports" / "example", help="a run directory")
    ap.add_argument("--trial", type=int, default=None, help="a Pareto trial (default: the run's fastest Pareto model)")
    ap.add_argument("--samples", type=int, default=12)
    ap.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    args = ap.parse_args()
    pareto = json.loads((args.run / "pareto.json").read_text())
    if args.trial is None:
        p = min(pareto, key=lambda r: r["latency_ms"])
    else:
        found = [r for r in pareto if r["trial"] == args.trial]
        if not found:
            print(f"error: trial {args.trial} is not a Pareto model of {args.run}; "
                  f"choose one of {[r['trial'] for r in pareto]}", file=sys.stderr)
            sys.exit(2)
        p = found[0]
    shape = json.loads((args.run / "meta.json").read_text())["input_shape"]
    reported = float(p["latency_ms"])
    rows = []
    print(f"trial {p['trial']} of {args.run}: reported {reported:.4f} ms; {args.samples} samples, "
          f"{args.every:g} s apart")
    for i in range(args.samples):
        if i:
            time.sleep(args.every)
        res = subprocess.run([sys.executable, "-c", CODE, str(args.run / p["onnx"]), json.dumps(shape)],
                             capture_output=True, text=True, check=True)
        out = json.loads(res.stdout.strip().splitlines()[-1])
        row = {"time": time.strftime("%H:%M:%S"), "latency_ms": round(out["latency_ms"], 4),
               "vs_reported_pct": round(100 * (out["latency_ms"] / reported - 1), 2),
               "probe_ms": round(out["probe_ms"], 4), "probe_vs_best": round(out["probe_ms"] / out["probe_best_ms"], 3),
               "latency_per_probe": round(out["latency_ms"] / out["probe_ms"], 3),
               "slowed_sessions": out["slowed_sessions"], "contended": out["contended"]}
        rows.append(row)
        print("  " + "  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    lat = np.array([r["latency_ms"] for r in rows])
    dev = np.abs(lat / reported - 1) * 100
    run_rel = args.run.resolve().relative_to(ROOT) if args.run.resolve().is_relative_to(ROOT) else args.run
    lines = [f"# Host drift ({dt.date.today()})", "",
             f"`python benchmarks/drift.py --run {run_rel} --trial {p['trial']} --samples {args.samples} "
             f"--every {args.every:g}`: trial {p['trial']} (reported {reported:.4f} ms) measured in a new process "
             f"every {args.every:g} s with the search's latency method, beside the reference probe.", ""]
    lines += md_table(rows, list(rows[0]))
    lines += ["", f"Within 5% of the reported median: {int((dev <= 5).sum())} of {len(rows)} samples "
                  f"(median {np.median(lat):.4f} ms, {100 * (np.median(lat) / reported - 1):+.2f}% from the reported; "
                  f"range {lat.min():.4f}-{lat.max():.4f} ms)."]
    (HERE / "drift.md").write_text("\n".join(lines) + "\n")
    (HERE / "drift.json").write_text(json.dumps({"date": str(dt.date.today()), "trial": p["trial"],
                                                 "reported_ms": reported, "rows": rows}, indent=1) + "\n")
    print("\n".join(lines[-1:]))


if __name__ == "__main__":
    main()
