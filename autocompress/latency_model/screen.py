"""Screening proposals before they are built: a configuration the latency model predicts slower than a model
already measured that keeps at least its channels in every group, each layer at least as precise, cannot be
more accurate (it has less of everything) and would be slower, so it is skipped without a fine-tune.

This is how the latency model lets the sampler propose many candidates cheaply and fine-tune only those that can
still reach the accuracy-latency front: a skip costs a prediction (milliseconds), a trial a fine-tune (seconds to
minutes). The file-size objective is given up for it: a skipped model may have been smaller than any measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable

__all__ = ["Dominator", "dominator", "covers", "PRECISION_RANK", "SCREEN_SLACK"]

# a layer's precisions from the least to the most accurate (int4 weights lose more than int8's)
PRECISION_RANK = {"-": -1, "int4": 0, "int8": 1, "fp16": 2, "fp32": 3}  # "-": in a removed block
# a proposal is skipped only when predicted this much slower than the measured model that covers it: the latency
# model's target worst error. A wrong skip loses a model for good, a wrong build costs one fine-tune (docs/latency.md)
SCREEN_SLACK = 0.25


@dataclass(frozen=True)
class Dominator:
    """The measured model that a skipped proposal could not beat."""

    owner: int | str  # a trial number, or a baseline's name
    latency_ms: float

    def text(self) -> str:
        return f"trial {self.owner}" if isinstance(self.owner, int) else f"baseline {self.owner}"


def covers(big: dict, small: dict) -> bool:
    """Whether model `big` keeps at least `small`'s channels in every group and holds every layer at least as
    precisely (both are `space.keys.model_key` identities, parsed)."""
    return (all(big["kept"].get(g, 0) >= n for g, n in small["kept"].items())
            and all(PRECISION_RANK.get(big["precision"].get(layer, "fp32"), 3) >= PRECISION_RANK.get(p, 3)
                    for layer, p in small["precision"].items()))


def dominator(key: str, predicted: float | None, measured: Iterable[tuple[str, int | str, float]],
              slack: float = SCREEN_SLACK) -> Dominator | None:
    """The fastest of the `measured` models (model key, owner, latency ms) that covers the proposal `key` and is
    faster than its `predicted` latency by more than `slack`; None when there is none (or no prediction): the
    proposal is built."""
    if predicted is None:
        return None
    small = json.loads(key)
    found = [Dominator(owner, ms) for k, owner, ms in measured
             if predicted > ms * (1 + slack) and covers(json.loads(k), small)]
    return min(found, key=lambda d: d.latency_ms, default=None)
