"""Accuracy of the ONNX artifact itself, under ONNX Runtime (not of the PyTorch model it came from)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Protocol

from autocompress.measure.latency import make_session

if TYPE_CHECKING:
    import torch

__all__ = ["onnx_accuracy", "Batched"]


class Batched(Protocol):
    """A labelled split (tasks.splitting.Split is one): its length and its batches of (images, labels)."""

    def __len__(self) -> int: ...

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


def onnx_accuracy(path: str | Path | bytes, splits: dict[str, Batched], *, threads: int = 1,
                  batch_size: int = 128) -> dict[str, float]:
    """Top-1 accuracy in percent on each named split."""
    sess = make_session(path, threads=threads)
    name = sess.get_inputs()[0].name
    out = {}
    for split, data in splits.items():
        correct = 0
        for x, y in data.batches(batch_size):
            logits = sess.run(None, {name: x.numpy()})[0]
            correct += int((logits.argmax(1) == y.numpy()).sum())
        out[split] = 100.0 * correct / max(len(data), 1)
    return out
