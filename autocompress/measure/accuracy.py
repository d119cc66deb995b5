"""Accuracy of the ONNX artifact itself, under ONNX Runtime (not of the PyTorch model it came from)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autocompress.measure.latency import make_session

__all__ = ["onnx_accuracy"]


def onnx_accuracy(path: str | Path | bytes, splits: dict[str, tuple[np.ndarray, np.ndarray]], *,
                  threads: int = 1, batch_size: int = 128) -> dict[str, float]:
    """Top-1 accuracy in percent for each named (x, y) split."""
    sess = make_session(path, threads=threads)
    name = sess.get_inputs()[0].name
    out = {}
    for split, (x, y) in splits.items():
        correct = 0
        for i in range(0, len(x), batch_size):
            logits = sess.run(None, {name: x[i : i + batch_size]})[0]
            correct += int((logits.argmax(1) == y[i : i + batch_size]).sum())
        out[split] = 100.0 * correct / max(len(x), 1)
    return out
