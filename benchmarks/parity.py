"""Parity: accuracy of the ONNX Runtime artifact vs the fake-quantized PyTorch model it came from.

Runs N random mixed configurations (per-group prune ratio, per-layer fp32/int8/int4) of the demo ResNet-20
through the real trial pipeline and prints a table; the latest results are written to benchmarks/parity.md.

    python benchmarks/parity.py [--configs 8] [--seed 0] [--finetune-epochs 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
from pathlib import Path

import numpy as np
import torch

from autocompress.config import TrainConfig
from autocompress.pipeline.baseline import get_baseline
from autocompress.pipeline.prune import channel_counts, find_groups
from autocompress.pipeline.quantize import quant_format_for
from autocompress.pipeline.trial import TrialSpec, run_pipeline
from autocompress.runtime.device import fingerprint
from autocompress.tasks import load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--finetune-epochs", type=float, default=2.0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    splits = load_dataset("digits")
    base, _ = get_baseline(model_name="resnet20", splits=splits, settings=TrainConfig(epochs=15, lr=0.1), seed=0)
    example = splits.val.images(1)
    groups, layers = find_groups(base, example), list(channel_counts(base))
    reduce_range = bool(quant_format_for(fingerprint(1))["reduce_range"])  # the format a search here uses
    rng = random.Random(args.seed)
    rows = []
    for i in range(args.configs):
        ratios = {g.name: rng.choice([0.0, 0.25, 0.5, 0.625]) for g in groups}
        prec = {l: rng.choice(["fp32", "int8", "int4"]) for l in layers}
        finetune = TrainConfig(epochs=args.finetune_epochs, lr=0.02, kd_alpha=0.9)
        out = run_pipeline(base, splits, TrialSpec(ratios, prec, finetune, reduce_range=reduce_range, parity_val=True),
                           threads=2)
        ort_acc = (out.val_accuracy + out.test_accuracy) / 2
        pt_acc = (out.torch_val_accuracy + out.torch_test_accuracy) / 2
        n8, n4 = sum(p == "int8" for p in prec.values()), sum(p == "int4" for p in prec.values())
        rows.append((i, n8, n4, ort_acc, pt_acc, ort_acc - pt_acc))
        print(f"config {i}: int8 {n8:2d} int4 {n4:2d}  ORT {ort_acc:6.2f}%  PyTorch {pt_acc:6.2f}%  "
              f"gap {ort_acc - pt_acc:+.2f}", flush=True)
    gaps = np.array([r[5] for r in rows])
    lines = [f"# Parity: ONNX Runtime artifact vs PyTorch fake-quant model ({dt.date.today()})", "",
             f"`python benchmarks/parity.py --configs {args.configs} --seed {args.seed} "
             f"--finetune-epochs {args.finetune_epochs:g}`;"
             " accuracy over val + test (720 digits images), demo ResNet-20, "
             f"int8 weights {'7-bit (reduce_range, this CPU has no VNNI)' if reduce_range else '8-bit'}.", "",
             "| config | int8 layers | int4 layers | ORT % | PyTorch % | gap (points) |", "|---|---|---|---|---|---|"]
    lines += [f"| {i} | {n8} | {n4} | {o:.2f} | {p:.2f} | {g:+.2f} |" for i, n8, n4, o, p, g in rows]
    lines += ["", f"max |gap| {np.abs(gaps).max():.2f} points, mean {gaps.mean():+.2f}"]
    Path(__file__).with_name("parity.md").write_text("\n".join(lines) + "\n")
    print(lines[-1])


if __name__ == "__main__":
    main()
