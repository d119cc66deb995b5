"""One search on a quiet machine, under `taskset -c 0`, and beside a busy core: what the search takes and how it
sizes its threads (issue 30, item 2).

The same demo search (seed 0, its own baseline cache so all three start alike) runs three times in one window:
alone; pinned to one CPU; and with a busy loop pinned to one of the process's CPUs for the whole search. Each row
is what the run recorded (`meta.json`: the CPUs it saw as usable and free, Ray's CPUs, threads per trial) and what
it took (the whole command, the median fine-tune per trial). Times compare only within one run of this script.

    python benchmarks/shared_cpus.py [--budget 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from autocompress.runtime.device import fingerprint

HERE = Path(__file__).parent
SEARCH = ["search", "--seed", "0", "--no-progress", "--finetune-epochs", "2", "--no-latency-cache"]


def _search(out: Path, budget: int, cache: Path, prefix: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([*prefix, sys.executable, "-m", "autocompress.cli", *SEARCH, "--budget", str(budget), "--out",
                    str(out)], check=True, env={**os.environ, "AUTOCOMPRESS_CACHE": str(cache)},
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _row(name: str, out: Path, seconds: float) -> dict:
    meta = json.loads((out / "meta.json").read_text())
    trials = pd.read_csv(out / "trials.csv")
    tuned = trials[(trials["state"] == "COMPLETE") & trials["reused"].isna()] if "reused" in trials else trials
    finetune = [float(s) for s in tuned.get("t_finetune", []) if pd.notna(s)]
    cpus, ray = meta.get("cpus", {}), meta.get("ray", {})
    return {"condition": name, "usable_cpus": cpus.get("usable"), "busy_elsewhere": cpus.get("busy_elsewhere"),
            "ray_cpus": ray.get("cpus"), "threads_per_trial": ray.get("threads_per_trial"),
            "concurrency": ray.get("concurrency"), "trials": int((trials["state"] == "COMPLETE").sum()),
            "finetune_s_median": round(statistics.median(finetune), 2) if finetune else None,
            "seconds": round(seconds, 1)}


def table(rows: list[dict]) -> list[str]:
    quiet = rows[0]["seconds"]
    lines = ["| condition | usable CPUs | busy elsewhere (cores) | Ray CPUs | threads per trial | concurrency "
             "| trials | fine-tune s (median) | whole search s | vs quiet |", "|---" * 10 + "|"]
    for r in rows:
        lines.append(f"| {r['condition']} | {r['usable_cpus']} | {r['busy_elsewhere']} | {r['ray_cpus']} "
                     f"| {r['threads_per_trial']} | {r['concurrency']} | {r['trials']} | {r['finetune_s_median']} "
                     f"| {r['seconds']} | {r['seconds'] / quiet:.2f}x |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=3)
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        sys.exit("needs two CPUs: one to pin to, one to keep busy")
    started, rows = dt.datetime.now(), []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        _search(Path(tmp) / "warm", 1, cache, [])  # the baseline trained and cached, outside every timed run
        rows.append(_row("quiet", Path(tmp) / "a", _search(Path(tmp) / "a", args.budget, cache, [])))
        print(table(rows)[-1], flush=True)
        out = Path(tmp) / "b"
        rows.append(_row(f"taskset -c {cpus[0]}", out,
                         _search(out, args.budget, cache, ["taskset", "-c", str(cpus[0])])))
        print(table(rows)[-1], flush=True)
        busy = subprocess.Popen(["taskset", "-c", str(cpus[-1]), sys.executable, "-c", "while True: pass"])
        try:
            out = Path(tmp) / "c"
            rows.append(_row(f"beside a busy loop on CPU {cpus[-1]}", out, _search(out, args.budget, cache, [])))
        finally:
            busy.kill()
            busy.wait()
        print(table(rows)[-1], flush=True)
    host = fingerprint(1)
    command = "python benchmarks/shared_cpus.py" + (f" --budget {args.budget}" if args.budget != 3 else "")
    md = [f"# A search on shared CPUs ({started:%Y-%m-%d})", "",
          f"`{command}` on {host['cpu']} ({host['cores']} cores, ISA {', '.join(host['isa'])}), ONNX Runtime "
          f"{host['onnxruntime']}. The demo search (`autocompress {' '.join(SEARCH)} --budget {args.budget}`), "
          "its baseline trained once beforehand; the three runs one after another in one window.", "",
          *table(rows), "",
          "*Busy elsewhere* is what the search saw in its half-second sample of `/proc/stat` before it started Ray "
          "(`cpus` in `meta.json`); it runs on the usable CPUs less those. Latency figures taken beside the busy "
          "loop are retried and flagged by the meter as usual (docs/latency.md)."]
    (HERE / "shared_cpus.md").write_text("\n".join(md) + "\n")
    (HERE / "shared_cpus.json").write_text(json.dumps({"command": command, "host": host,
                                                       "date": f"{started:%Y-%m-%d %H:%M}", "rows": rows},
                                                      indent=1) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
