"""The README's results: the demo search as the README's first command runs it, today's defaults, this host.

Runs `autocompress search --budget 12 --no-latency-cache --seed 0` (every latency measured in this run, none
taken from an earlier one), puts the run in `reports/example/`, and writes the table of its baselines and Pareto
trials to `readme_example.md` (the README's *Measured* section is that table). Latencies are the medians the run
confirmed together at its end, so every speed-up divides two figures of one window of the device.

    python benchmarks/readme_example.py
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).parent
ARGS = ["search", "--budget", "12", "--no-latency-cache", "--seed", "0", "--no-progress"]
BASELINE_LABELS = {"fp32": "FP32 baseline", "int8": "uniform int8, post-training",
                   "prune25-int8": "uniform 25% pruned + int8, fine-tuned",
                   "prune50-int8": "uniform 50% pruned + int8, fine-tuned"}


def describe(row: dict) -> str:
    """A trial's configuration in a few words: its pruning range and how many layers run at each precision."""
    ratios = [float(v) for k, v in row.items() if k.startswith("prune:") and v not in (None, "")]
    precs = [str(v) for k, v in row.items() if k.startswith("quant:")]
    counts = ", ".join(f"{precs.count(p)} {p}" for p in ("int8", "int4", "fp16", "fp32") if precs.count(p))
    lo, hi = (min(ratios), max(ratios)) if ratios else (0.0, 0.0)
    prune = f"{lo:.0%} pruned" if lo == hi else f"pruning {lo:.0%}-{hi:.0%}"
    return f"{prune}, {counts} layers"


def table(run: Path) -> list[str]:
    baselines = json.loads((run / "baselines.json").read_text())
    pareto = sorted(json.loads((run / "pareto.json").read_text()), key=lambda r: r["latency_ms"])
    fp32_ms = baselines["fp32"]["latency_ms"]
    lines = ["| model (ONNX file measured) | val acc % | test acc % | latency ms (median) | speed-up | size MB |",
             "|---|---|---|---|---|---|"]

    def row(label: str, r: dict) -> str:
        return (f"| {label} | {r['val_accuracy']:.2f} | {r['test_accuracy']:.2f} | {r['latency_ms']:.3f} "
                f"| {fp32_ms / r['latency_ms']:.2f}x | {r['size_bytes'] / 1e6:.3f} |")

    for kind, label in BASELINE_LABELS.items():
        if kind in baselines and baselines[kind].get("state") == "COMPLETE":
            lines.append(row(label, baselines[kind]))
    for r in pareto:
        same = f" (= baseline {str(r['reused']).removeprefix('baseline-')})" if r.get("reused") else ""
        lines.append(row(f"trial {int(r['trial'])}: {describe(r)}{same} (Pareto)", r))
    return lines


def verdict(run: Path) -> str:
    """The fastest Pareto trial within 1 point of FP32 (validation), against the fastest uniform baseline there."""
    baselines = json.loads((run / "baselines.json").read_text())
    bar = baselines["fp32"]["val_accuracy"] - 1.0
    trials = [r for r in json.loads((run / "pareto.json").read_text())
              if r["val_accuracy"] >= bar and not r.get("reused")]  # a reused baseline is not a searched model
    uniform = [b for k, b in baselines.items() if k != "fp32" and b.get("state") == "COMPLETE"
               and b["val_accuracy"] >= bar]
    if not trials or not uniform:
        return ("No searched model (other than a uniform baseline's) or no uniform baseline on the front is within "
                "1 point of FP32's validation accuracy.")
    best, ref = min(trials, key=lambda r: r["latency_ms"]), min(uniform, key=lambda r: r["latency_ms"])
    fp32_ms = baselines["fp32"]["latency_ms"]
    return (f"Within 1 point of FP32's validation accuracy, the fastest searched model (trial {int(best['trial'])}) "
            f"runs {fp32_ms / best['latency_ms']:.2f}x faster than FP32, the fastest uniform one "
            f"{fp32_ms / ref['latency_ms']:.2f}x: {ref['latency_ms'] / best['latency_ms']:.2f}x between them.")


def stages(meta: dict) -> str:
    """Where the search's time went before its trials: the latency model, the scan and the funnel (meta.json)."""
    lm, sens, f = meta.get("latency_model", {}), meta.get("sensitivity", {}), meta.get("funnel", {})
    origins = ", ".join(sorted({p["origin"] for p in f.get("promoted", [])})) or "none"
    parts = [f"latency model {lm.get('seconds', 0):g} s for its layer table ({lm.get('timed_now', 0)} of "
             f"{lm.get('entries', 0)} timings new) and {lm.get('proxy_seconds', 0):g} s for {lm.get('proxies', 0)} "
             "proxies",
             f"sensitivity scan {sens.get('seconds', 0):g} s{' (from the cache)' if sens.get('cached') else ''}",
             f"funnel {f.get('seconds', 0):g} s: {f.get('scored', 0)} of {f.get('proposed', 0)} proposed candidates "
             f"scored in {f.get('score_seconds', 0):g} s ({f.get('over_targets', 0)} predicted over the slowest "
             f"target, not built), {f.get('shortened', 0)} short fine-tunes, {len(f.get('promoted', []))} promoted "
             f"(origin: {origins})"]
    return f"Stages: {'; '.join(parts)}; the search in all {meta.get('wall_seconds', 0):g} s."


def _no_machine_paths(run: Path, replace: dict[str, str]) -> None:
    """The committed run names no directory of the machine it ran on (the temporary run directory, the home)."""
    for path in run.rglob("*"):
        if path.suffix in (".json", ".html", ".md", ".csv", ".log") and path.is_file():
            text = path.read_text()
            for old, new in replace.items():
                text = text.replace(old, new)
            path.write_text(text)


def main() -> None:
    started = dt.datetime.now()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "example"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "autocompress.cli", *ARGS, "--out", str(run)], check=True, cwd=ROOT)
        seconds = time.perf_counter() - t0
        shutil.rmtree(ROOT / "reports" / "example", ignore_errors=True)
        shutil.copytree(run, ROOT / "reports" / "example")
        _no_machine_paths(ROOT / "reports" / "example", {str(run): "reports/example", str(Path.home()): "~"})
    run = ROOT / "reports" / "example"
    meta = json.loads((run / "meta.json").read_text())
    dev = meta["device"]
    command = "autocompress " + " ".join(a for a in ARGS if a != "--no-progress")
    md = [f"# The README's results ({started:%Y-%m-%d})", "",
          f"`python benchmarks/readme_example.py`: `{command}` on {dev.get('cpu')} ({dev.get('cores')} cores, ISA "
          f"{', '.join(dev.get('isa', []))}), ONNX Runtime {dev.get('onnxruntime')}, {dev.get('threads')} thread, "
          f"batch 1; the whole command took {seconds:.0f} s. The run is `reports/example/`. Latencies are the "
          "medians confirmed together at the end of the run.", "", *table(run), "", verdict(run), "", stages(meta)]
    (HERE / "readme_example.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
