"""The model zoo (issue 16): fifteen architectures, each through a short search, and what the search found in them.

Per model: the prunable channel groups torch-pruning traced, those the pre-search check limited or left out (and
why), the quantizable layers, the first trial's outcome (uniform 50% pruning + int8; channels before -> after)
and the wall time of the whole search (baseline measurement included). The same runs are tests/test_zoo.py.

    python benchmarks/zoo.py [--models resnet18,se_resnet]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(zoo.ZOO), help="comma-separated, from: " + ", ".join(zoo.ZOO))
    args = ap.parse_args()
    names = args.models.split(",")
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
