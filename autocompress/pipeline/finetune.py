"""Training: the baseline's from-scratch run and each trial's short fine-tune with distillation."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from autocompress.config import TrainConfig

__all__ = ["MOMENTUM", "WEIGHT_DECAY", "train", "evaluate", "TrainingDiverged"]

# what every run trains with besides its TrainConfig (epochs, lr, batch size, distillation): SGD with Nesterov momentum
# and weight decay, and random shifts of up to 1/8 of the image side
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    pad = max(1, x.shape[-1] // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
    return padded[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    settings: TrainConfig,
    seed: int,
    teacher: nn.Module | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train in place with SGD + cosine schedule and random shifts; distil from `teacher` when given. Returns mean loss
    per epoch."""
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    n = len(xt)
    steps_per_epoch = max(1, math.ceil(n / settings.batch_size))
    total_steps = max(1, round(settings.epochs * steps_per_epoch))
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                          nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=total_steps,
                                                pct_start=0.15, anneal_strategy="cos")
    if teacher is not None:
        teacher.eval()
    model.train()
    losses: list[float] = []
    step, epoch = 0, 0
    while step < total_steps:
        perm = torch.randperm(n, generator=gen)
        running, count = 0.0, 0
        for i in range(0, n, settings.batch_size):
            if step >= total_steps:
                break
            idx = perm[i : i + settings.batch_size]
            xb, yb = xt[idx], yt[idx]
            xb = _shift(xb, gen)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(xb)
                T = settings.temperature
                kd = F.kl_div(F.log_softmax(logits / T, 1), F.softmax(t_logits / T, 1), reduction="batchmean") * T * T
                loss = settings.kd_alpha * kd + (1 - settings.kd_alpha) * loss
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            running += loss.item() * len(idx)
            count += len(idx)
        losses.append(running / max(count, 1))
        if on_epoch:
            on_epoch(epoch, losses[-1])
        epoch += 1
    model.eval()
    return losses


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent of a PyTorch model."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(torch.from_numpy(x[i : i + batch_size]))
        correct += int((logits.argmax(1).numpy() == y[i : i + batch_size]).sum())
    return 100.0 * correct / max(len(x), 1)
