"""Training: the baseline's from-scratch run and each trial's short fine-tune with distillation."""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from autocompress.config import TrainConfig
from autocompress.pipeline.augment import augment
from autocompress.tasks.splitting import Split

__all__ = ["MOMENTUM", "WEIGHT_DECAY", "Trainer", "train", "evaluate", "TrainingDiverged"]

# what every run trains with besides its TrainConfig (epochs, lr, batch size, distillation) and the data's
# augmentation (pipeline/augment.py): SGD with Nesterov momentum and weight decay
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class Trainer:
    """Training in place, one epoch at a time: SGD with Nesterov momentum and a one-cycle cosine schedule over
    `settings.epochs`, the data's augmentation (`augment`), distillation from `teacher` when given. `state_dict()`
    holds everything
    the next epoch depends on (optimizer, schedule, random generator, position), so a run resumed from it goes on
    exactly as the uninterrupted one would."""

    def __init__(self, model: nn.Module, n: int, *, settings: TrainConfig, seed: int,
                 teacher: nn.Module | None = None, device: str = "cpu", augment: str = "shift") -> None:
        """On `device`, the model is moved there for each epoch and back to the CPU after it; the teacher is
        copied there once (another trial may be using the same teacher object)."""
        self.device = torch.device(device)
        if teacher is not None and self.device.type != "cpu":
            teacher = copy.deepcopy(teacher).to(self.device)
        self.model, self.n, self.settings, self.teacher, self.augment = model, n, settings, teacher, augment
        self.gen = torch.Generator().manual_seed(seed)
        steps_per_epoch = max(1, math.ceil(n / settings.batch_size))
        self.total_steps = max(1, round(settings.epochs * steps_per_epoch))
        self.opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                                   nesterov=True)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=settings.lr, total_steps=self.total_steps,
                                                         pct_start=0.15, anneal_strategy="cos")
        self.step, self.epochs_done = 0, 0

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    def epoch(self, data: Split) -> float:
        """One pass over (a permutation of) `data`, or what is left of the schedule; the mean loss."""
        s, teacher = self.settings, self.teacher
        if teacher is not None:
            teacher.eval()
        self.model.to(self.device).train()
        _optimizer_to(self.opt, self.device)
        perm = torch.randperm(self.n, generator=self.gen)
        running, count = 0.0, 0
        for xb, yb in data.batches(s.batch_size, order=perm):
            if self.done:
                break
            xb, yb = augment(xb.to(self.device), self.augment, self.gen), yb.to(self.device)
            logits = self.model(xb)
            loss = F.cross_entropy(logits, yb)
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(xb)
                T = s.temperature
                kd = F.kl_div(F.log_softmax(logits / T, 1), F.softmax(t_logits / T, 1), reduction="batchmean") * T * T
                loss = s.kd_alpha * kd + (1 - s.kd_alpha) * loss
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss.item()} at step {self.step}")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
            self.step += 1
            running += loss.item() * len(yb)
            count += len(yb)
        self.epochs_done += 1
        self.model.to("cpu").eval()
        _optimizer_to(self.opt, torch.device("cpu"))
        return running / max(count, 1)

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict(), "sched": self.sched.state_dict(), "gen": self.gen.get_state(),
                "step": self.step, "epochs_done": self.epochs_done}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.gen.set_state(state["gen"])
        self.step, self.epochs_done = int(state["step"]), int(state["epochs_done"])


def _optimizer_to(opt: torch.optim.Optimizer, device: torch.device) -> None:
    """The optimizer's state (momentum buffers) beside the parameters it updates."""
    for state in opt.state.values():
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                state[k] = v.to(device)


def train(
    model: nn.Module,
    data: Split,
    *,
    settings: TrainConfig,
    seed: int,
    teacher: nn.Module | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    device: str = "cpu",
    augment: str = "shift",
) -> list[float]:
    """Train in place on `data` (a `Trainer` run to its end, on `device`); returns the mean loss per epoch.
    `on_epoch(epoch, loss)` is called after each (with the model back on the CPU)."""
    trainer = Trainer(model, len(data), settings=settings, seed=seed, teacher=teacher, device=device, augment=augment)
    losses: list[float] = []
    while not trainer.done:
        losses.append(trainer.epoch(data))
        if on_epoch:
            on_epoch(trainer.epochs_done - 1, losses[-1])
    model.eval()
    return losses


@torch.no_grad()
def evaluate(model: nn.Module, data: Split, batch_size: int | None = None) -> float:
    """Top-1 accuracy in percent of a PyTorch model on a split (default batch: 256 images of 32 x 32, fewer of
    larger ones, so that activations stay within some hundred MB)."""
    model.eval()
    correct = 0
    if batch_size is None:
        h, w = data.input_shape[-2:]
        batch_size = max(16, min(256, 256 * 32 * 32 // (h * w)))
    for x, y in data.batches(batch_size):
        correct += int((model(x).argmax(1) == y).sum())
    return 100.0 * correct / max(len(data), 1)
