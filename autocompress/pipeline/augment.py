"""Augmentation of training batches, on whatever device the batch is on (one home for every training loop).

- `shift`: the whole batch moved by up to 1/8 of the image side (edges replicated): for digits, which must not be
  flipped, and the built-in demo.
- `crop-flip`: per image, a random crop of 35-100% of the area (aspect 3/4-4/3) resized back, and a horizontal
  flip half of the time: the usual augmentation for natural images (torchvision's RandomResizedCrop + flip).
- `none`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["AUGMENTS", "augment"]

AUGMENTS = ("shift", "crop-flip", "none")
_SCALE = (0.35, 1.0)  # share of the area a random crop keeps
_RATIO = (3 / 4, 4 / 3)


def augment(x: torch.Tensor, policy: str, gen: torch.Generator) -> torch.Tensor:
    """`x` (N x C x H x W) augmented by `policy`; random draws come from `gen` (a CPU generator), so a resumed
    training run repeats them."""
    if policy == "shift":
        return _shift(x, gen)
    if policy == "crop-flip":
        return _crop_flip(x, gen)
    if policy == "none":
        return x
    raise ValueError(f"unknown augmentation {policy!r}; use one of {', '.join(AUGMENTS)}")


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    pad = max(1, x.shape[-1] // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
    return padded[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]


def _crop_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random resized crop + horizontal flip of each image, as one affine resampling of the batch."""
    n = x.shape[0]
    area = torch.empty(n).uniform_(*_SCALE, generator=gen)
    log_ratio = torch.empty(n).uniform_(math.log(_RATIO[0]), math.log(_RATIO[1]), generator=gen)
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width / image width
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - w)  # crop centre, in [-1, 1] coordinates
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
