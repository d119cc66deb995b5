"""The model zoo (issue 16): fifteen architectures, each through a short search, and what the search found in them.

Per model: the prunable channel groups torch-pruning traced, those the pre-search check limited or left out (and
why), the quantizable layers, the first trial's outcome (uniform 50% pruning + int8; channels before -> after)
and the wall time of the whole search (baseline measurement included). The same runs are tests/test_zoo.py.

`--default-path`: five of them (a ResNet, MobileNetV2, an option-A ResNet, DenseNet, ShuffleNetV2) through the
default search (latency model, sensitivity scan, uniform baselines), 3 trials: zoo_default.md.

    python benchmarks/zoo.py [--models resnet18,se_resnet] [--default-path]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import ray

from autocompress.runtime.device import fingerprint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fixtures"))
import zoo  # noqa: E402

HERE = Path(__file__).parent


def _limits(row: zoo.ZooRow) -> str:
    if not row.limits:
        return "none"
    reasons: dict[str, list[str]] = {}
    for group, why in row.limits.items():
        reasons.setdefault(why.split(": ", 1)[-1][:120], []).append(group)
    return "; ".join(f"{len(g)} ({', '.join(g[:2])}{', ...' if len(g) > 2 else ''}): {why}"
                     for why, g in reasons.items()).replace("|", "/")


def table(rows: list[zoo.ZooRow]) -> list[str]:
    lines = ["| model | params | groups found | searched | limited or left out, why | quantizable layers "
             "| trial | channels (50% trial) | search s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.model} | {r.params / 1e6:.2f} M | {r.groups_found} | {r.groups_searched} | {_limits(r)} "
                     f"| {r.layers_quantizable} | {r.trial_state}{': ' + r.error[:60] if r.error else ''} "
                     f"| {r.channels_before} -> {r.channels_after} | {r.seconds:.1f} |")
    return lines


def default_table(rows: list[dict]) -> list[str]:
    lines = ["| model | groups searched | uniform baselines | latency model | sensitivity scan | trials "
             "| search s | run |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        error = f": {r['error'][:60]}" if r.get("error") else ""
        lines.append(f"| {r['model']} | {r['groups_searched']} | {r['baselines']} | {r['latency_model']} | {r['scan']} "
                     f"| {r['trial_states']}{error} | {r['seconds']:.1f} | {r['date']} |")
    return lines


def default_path(names: list[str], command: str) -> None:
    """The default search on each model; zoo_default.md / .json rewritten after each, keeping the rows of models
    an earlier run measured on this host (a run that does not fit a session goes on with --models)."""
    done = HERE / "zoo_default.json"
    host = fingerprint(1)
    earlier = json.loads(done.read_text()) if done.is_file() else {}
    rows = {r["model"]: r for r in earlier.get("rows", [])} if earlier.get("host") == host else {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            rows[name] = {**asdict(zoo.run(name, Path(tmp) / name, zoo.DEFAULT_PATH)), "command": command,
                          "date": f"{dt.datetime.now():%Y-%m-%d %H:%M}"}
            shutil.rmtree(Path(tmp) / name, ignore_errors=True)
            ordered = [rows[m] for m in zoo.DEFAULT_FIVE if m in rows] + [
                r for m, r in rows.items() if m not in zoo.DEFAULT_FIVE]
            _write_default(ordered, host)
            print(default_table([rows[name]])[-1], flush=True)


def _write_default(rows: list[dict], host: dict) -> None:
    commands = sorted({r["command"] for r in rows})
    md = [f"# The model zoo on the default search ({rows[-1]['date'][:10]})", "",
          f"{'; '.join(f'`{c}`' for c in commands)} on {host['cpu']} ({host['cores']} cores, ISA "
          f"{', '.join(host['isa'])}), ONNX Runtime {host['onnxruntime']}; each row says when it ran.", "",
          f"Each model is untrained at {zoo.INPUT}x{zoo.INPUT} on scikit-learn's digits as 3-channel images (256 "
          "training, 128 validation, 128 test). The search runs with its default settings (latency model with its "
          "table, proxies and allocation; sensitivity scan; screening; the uniform baselines; default latency "
          f"measurement), shortened only by `{zoo.DEFAULT_PATH}` (`DEFAULT_PATH` in `tests/fixtures/zoo.py`). "
          "*Latency model* is the fit's error on the trials it predicted (the others reused a baseline's model), "
          "measured on the exported files. What is under test is that each stage completes on each architecture; "
          "*search s* is wall time on a shared machine (other jobs may have run beside a row).", "",
          *default_table(rows), "", f"Total {sum(r['seconds'] for r in rows):.0f} s for {len(rows)} models."]
    (HERE / "zoo_default.md").write_text("\n".join(md) + "\n")
    (HERE / "zoo_default.json").write_text(json.dumps({"host": host, "rows": rows}, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=None, help="comma-separated, from: " + ", ".join(zoo.ZOO))
    ap.add_argument("--default-path", action="store_true",
                    help="the default search (latency model, scan) on " + ", ".join(zoo.DEFAULT_FIVE))
    args = ap.parse_args()
    if args.default_path:
        names = args.models.split(",") if args.models else list(zoo.DEFAULT_FIVE)
        default_path(names, "python benchmarks/zoo.py --default-path" + (f" --models {args.models}"
                                                                        if args.models else ""))
        return
    names = args.models.split(",") if args.models else list(zoo.ZOO)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows, started = [], dt.datetime.now()
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            rows.append(zoo.run(name, Path(tmp) / name))
            print(table(rows)[-1], flush=True)
            shutil.rmtree(Path(tmp) / name, ignore_errors=True)
    ray.shutdown()
    host = fingerprint(1)
    command = "python benchmarks/zoo.py" + ("" if names == list(zoo.ZOO) else f" --models {args.models}")
    md = [f"# The model zoo ({started:%Y-%m-%d})", "", f"`{command}` on {host['cpu']} ({host['cores']} cores, ISA "
          f"{', '.join(host['isa'])}), ONNX Runtime {host['onnxruntime']}, with `tests/test_zoo.py` running the same "
          "searches in the suite.", "",
          f"Each model is untrained (the structure is under test) at {zoo.INPUT}x{zoo.INPUT} on scikit-learn's digits "
          "as 3-channel images: 256 training, 128 validation, 128 test images; a 1-trial search (the uniform "
          "50%-pruned + int8 configuration), 1 fine-tuning epoch, light latency settings, only the FP32 baseline, no "
          "sensitivity scan (`SHORT` in `tests/fixtures/zoo.py`). *Search s* is the whole `autocompress.search` "
          "call: the group check, the FP32 baseline and the trial.", "", *table(rows), "",
          f"Total {sum(r.seconds for r in rows):.0f} s for {len(rows)} models."]
    (HERE / "zoo.md").write_text("\n".join(md) + "\n")
    (HERE / "zoo.json").write_text(json.dumps({"command": command, "host": host, "date": f"{started:%Y-%m-%d %H:%M}",
                                               "rows": [asdict(r) for r in rows]}, indent=1) + "\n")
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
