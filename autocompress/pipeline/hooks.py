"""One forward pass with temporary hooks: how the pipeline learns which layer feeds which."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.hooks import RemovableHandle

__all__ = ["run_hooked"]


def run_hooked(model: nn.Module, example: torch.Tensor, hooks: list[RemovableHandle]):
    """The output of one eval-mode, no-grad forward pass of `model` with `hooks` registered; the hooks are removed
    afterwards, whatever happens."""
    try:
        with torch.no_grad():
            return model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
