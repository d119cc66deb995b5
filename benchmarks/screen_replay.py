"""Would screening (autocompress/latency_model/screen.py) have skipped a model worth having? Replayed on finished runs.

    python benchmarks/screen_replay.py [RUN ...]   (default: the demo runs under benchmarks/runs and reports/example)

For each run whose trials carry the latency model's prediction (`latency_predicted_ms`), in trial order: the
models measured so far (its baselines, then its completed trials) and each completed trial's prediction, given to
the same `dominator` the search calls, with the latencies the search knew then (before the confirmation rounds
at the end). A trial it names would have been skipped unbuilt. For those, the measured
figures say whether skipping was right: was the trial in fact slower than the model that covers it, and no more
accurate; and was it on the run's accuracy-latency front (or the 3-objective front, file size included)?
Writes benchmarks/screen_replay.md and .json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent


def _known_ms(row) -> float:
    """The latency the search knew when it screened: the figure measured during the search (`search_latency_ms`),
    before any confirmation rounds at the end moved it to `latency_ms`."""
    v = row.get("search_latency_ms")
    return float(v) if v is not None and not pd.isna(v) else float(row["latency_ms"])


def _keys(t: pd.DataFrame, baselines: dict) -> tuple[list[tuple], dict]:
    """(key, owner, latency known during the search, val, final latency) of the completed uniform baselines, and
    each completed trial's key by number."""
    channels = [c for c in t.columns if c.startswith("channels:")]
    quant = [c for c in t.columns if c.startswith("quant:")]
    full = {c.split(":", 1)[1]: int(t[c].max()) for c in channels}

    def key(kept: dict, precision: dict) -> str:
        return json.dumps({"kept": kept, "precision": precision}, sort_keys=True)

    base = []
    for name, b in baselines.items():
        if b.get("state") == "COMPLETE" and name in ("fp32", "int8", "prune25-int8", "prune50-int8"):
            kept = {g: int(b.get(f"channels:{g}", n)) for g, n in full.items()}
            precision = {q.split(":", 1)[1]: "fp32" if name == "fp32" else "int8" for q in quant}
            base.append((key(kept, precision), name, _known_ms(b), float(b["val_accuracy"]),
                         float(b["latency_ms"])))
    trials = {int(r["trial"]): key({c.split(":", 1)[1]: int(r[c]) for c in channels},
                                   {q.split(":", 1)[1]: str(r[q]) for q in quant})
              for _, r in t.iterrows()}
    return base, trials


def replay(run: Path) -> dict | None:
    from autocompress.latency_model.screen import SCREEN_SLACK, dominator
    from autocompress.results.pareto import OBJECTIVES, dominates, pareto_front

    t = pd.read_csv(run / "trials.csv")
    t = t[(t["kind"] == "search") & (t["state"] == "COMPLETE")]
    if "duplicate_of" in t.columns:
        t = t[t["duplicate_of"].isna()]
    if "reused" in t.columns:
        t = t[t["reused"].isna()]
    if "latency_predicted_ms" not in t.columns or t["latency_predicted_ms"].isna().all():
        return None
    if json.loads((run / "config.json").read_text()).get("sampler") == "grid":
        return None  # a grid search never screens: it builds every uniform configuration by design
    t = t.sort_values("trial")
    base, keys = _keys(t, json.loads((run / "baselines.json").read_text()))
    done = [r for _, r in t.iterrows()]
    front2 = {int(r["trial"]) for r in done if not any(dominates(o, r, OBJECTIVES[:2]) for o in done)}
    front3 = set(pareto_front(t)["trial"].astype(int))
    measured = [(k, owner, ms) for k, owner, ms, _, _ in base]
    val = {owner: v for _, owner, _, v, _ in base}
    final = {owner: ms for _, owner, _, _, ms in base}  # after the confirmation rounds: the truth to judge a skip by
    rows = []
    for _, r in t.iterrows():
        n = int(r["trial"])
        dom = dominator(keys[n], float(r["latency_predicted_ms"]), measured, SCREEN_SLACK)
        if dom is not None:
            rows.append({"trial": n, "predicted_ms": float(r["latency_predicted_ms"]),
                         "measured_ms": float(r["latency_ms"]), "val": float(r["val_accuracy"]),
                         "covered_by": dom.text(), "its_ms": final[dom.owner], "its_val": val[dom.owner],
                         "slower": float(r["latency_ms"]) > final[dom.owner],
                         "no_more_accurate": float(r["val_accuracy"]) <= val[dom.owner],
                         "on_front_2d": n in front2, "on_front_3d": n in front3,
                         "finetune_s": float(r.get("t_finetune", 0.0))})
        measured.append((keys[n], n, _known_ms(r)))
        final[n] = float(r["latency_ms"])
        val[n] = float(r["val_accuracy"])
    return {"run": str(run.relative_to(HERE.parent)) if run.is_relative_to(HERE.parent) else str(run),
            "trials": int(len(t)), "finetune_s": round(float(t.get("t_finetune", pd.Series(dtype=float)).sum()), 1),
            "skipped": rows}


def write(results: list[dict], command: str, host: dict) -> None:
    lines = ["# Screening replayed on finished runs", "", f"Command: `{command}`", "",
             f"Host (of this replay; the runs' figures are their own): {host['cpu']}, ORT {host['onnxruntime']}.", "",
             "Each completed trial with a latency prediction, in trial order, against the models measured before it "
             "(baselines, earlier trials). `would skip`: trials screening would not have built. `right`: the trial "
             "was in fact slower than the model covering it and no more accurate on validation.", "",
             "| run | trials | would skip | right | on the accuracy-latency front | on the 3-objective front | "
             "fine-tune s saved / total |", "|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["skipped"]
        right = sum(x["slower"] and x["no_more_accurate"] for x in s)
        saved = sum(x["finetune_s"] for x in s)
        lines.append(f"| {r['run']} | {r['trials']} | {len(s)} | {right} | {sum(x['on_front_2d'] for x in s)} | "
                     f"{sum(x['on_front_3d'] for x in s)} | {saved:.0f} / {r['finetune_s']:.0f} |")
    lines += ["", "Trials screening would have skipped:", "",
              "| run | trial | predicted ms | measured ms | val % | covered by | its ms | its val % |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for x in r["skipped"]:
            lines.append(f"| {r['run']} | {x['trial']} | {x['predicted_ms']:.4f} | {x['measured_ms']:.4f} | "
                         f"{x['val']:.2f} | {x['covered_by']} | {x['its_ms']:.4f} | {x['its_val']:.2f} |")
    (HERE / "screen_replay.md").write_text("\n".join(lines) + "\n")
    (HERE / "screen_replay.json").write_text(json.dumps({"command": command, "host": host, "results": results},
                                                        indent=1) + "\n")
    print("\n".join(lines))


def main() -> None:
    from autocompress.runtime.device import fingerprint

    runs = [Path(a) for a in sys.argv[1:]] or sorted(
        [p.parent for p in (HERE / "runs").glob("**/trials.csv")] + [HERE.parent / "reports" / "example"])
    t0 = time.perf_counter()
    results = [r for r in (replay(run.resolve()) for run in runs) if r is not None]
    write(results, "python benchmarks/screen_replay.py " + " ".join(sys.argv[1:]), fingerprint(1))
    print(f"({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
