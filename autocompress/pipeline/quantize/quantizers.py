"""The fake quantizers: torch modules that compute ONNX Runtime's weight and activation quantization arithmetic."""

from __future__ import annotations

import torch
import torch.nn as nn


class _WeightFakeQuant(nn.Module):
    """Symmetric per-output-channel fake quantization on ORT's grid, with a straight-through gradient."""

    def __init__(self, qmin: int, qmax: int) -> None:
        super().__init__()
        self.qmin, self.qmax = qmin, qmax
        self.enabled = True

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return w
        # ORT's arithmetic, so ties round the same way: scale computed in float64 and stored as float32,
        # q = round_half_even(w / scale) in float32 (torch.fake_quantize multiplies by 1/scale instead).
        amax = w.detach().abs().flatten(1).amax(1).clamp_min(1e-8)
        scale = (2 * amax.double() / (self.qmax - self.qmin)).float().reshape(-1, *([1] * (w.dim() - 1)))
        q = torch.clamp(torch.round(w.detach() / scale), self.qmin, self.qmax)
        return w + (q * scale - w).detach()  # straight-through gradient


class _HalfWeight(nn.Module):
    """Weights rounded to float16 (what an fp16 layer's file holds), with a straight-through gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.enabled = True

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return w
        return w + (w.detach().half().float() - w.detach())


class _ActFakeQuant(nn.Module):
    """uint8 asymmetric per-tensor fake quantization of one activation tensor (ORT's QuantizeLinear).

    While training the range follows an EMA of batch ranges; `calibrate_activations` then replaces it
    with the min/max over the calibration split, as ORT's MinMax calibration does for the artifact.
    Used as a module inserted in the traced graph, or as a forward pre-hook on a layer.
    """

    def __init__(self, momentum: float = 0.1) -> None:
        super().__init__()
        self.lo: float | None = None
        self.hi: float | None = None
        self.momentum = momentum
        self.calibrating = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            lo, hi = (float(v) for v in torch.aminmax(x.detach()))
            self.lo = lo if self.lo is None else min(self.lo, lo)
            self.hi = hi if self.hi is None else max(self.hi, hi)
            return x  # observe only, like ORT's calibration pass on the float model
        if self.training or self.lo is None:
            mn, mx = torch.aminmax(x.detach())
            lo, hi = min(float(mn), 0.0), max(float(mx), 0.0)
            if self.lo is None:
                self.lo, self.hi = lo, hi
            else:
                self.lo += self.momentum * (lo - self.lo)
                self.hi += self.momentum * (hi - self.hi)
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)  # ORT's range always contains 0
        scale = max((hi - lo) / 255.0, 1e-8)
        zero = int(min(255, max(0, round(-lo / scale))))
        # QuantizeLinear then DequantizeLinear (round half to even, saturate to uint8), with a straight-through
        # gradient; in-place on a detached copy, which is much faster on CPU than torch.fake_quantize_per_tensor_affine
        with torch.no_grad():
            delta = torch.div(x, scale).round_().add_(zero).clamp_(0, 255).sub_(zero).mul_(scale).sub_(x)
        return x + delta

    def pre_hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        self.train(module.training)
        return (self(inputs[0]),) + tuple(inputs[1:])
