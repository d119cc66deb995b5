"""The preprocessing a model expects of its input: resize, center crop, scale to [0, 1], normalize.

One record (`Preprocessing`) says it; the data readers apply it to every image they decode, `meta.json` and the report
show it, and `pick --export` writes it beside the ONNX file, because the deployed model needs the same steps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Iterable, Literal

import numpy as np
import torch
import torch.nn.functional as F

from autocompress.errors import ConfigError
from autocompress.results.preprocessing import describe_preprocessing

__all__ = ["Preprocessing", "PreprocessOptions", "Normalize", "IMAGENET_MEAN", "IMAGENET_STD",
           "resolve_normalization", "resize_crop", "channel_stats", "STATS_IMAGES"]

Normalize = Literal["dataset", "imagenet", "none"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Training images that the per-channel mean/std of `normalize: dataset` is taken over (a seeded sample): more
# changes the figures in the fourth decimal, and reading them is the cost of starting a search.
STATS_IMAGES = 2000


@dataclass(frozen=True)
class PreprocessOptions:
    """What the user asked for (`--input-size/--crop`, `--resize`, `--normalize`, `--mean/--std`)."""

    crop: int = 32  # the model's input side (the latency input shape follows it)
    resize: int | None = None  # short side before the center crop (None: the crop itself)
    normalize: Normalize = "dataset"
    mean: list[float] | None = None
    std: list[float] | None = None
    stats_workers: int = 0  # reader processes while taking the dataset's mean/std
    recorded: Preprocessing | None = None  # a run's own (finalize): used as recorded, its mean/std not taken again


@dataclass(frozen=True)
class Preprocessing:
    """Pixels (0-`scale`) -> the model's input: resize so the short side is `resize`, center-crop `crop` x `crop`
    (bilinear, antialiased), divide by `scale`, subtract `mean` and divide by `std` per channel."""

    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int  # 1 (grayscale) or 3 (RGB)
    normalize: str = "dataset"  # where mean/std came from: dataset / imagenet / none / given
    scale: float = 255.0  # the largest pixel value (the built-in digits: 16)

    def as_dict(self) -> dict:
        """What a deployment needs, in the order it applies it."""
        d = asdict(self)
        d.update(mean=[round(float(v), 6) for v in self.mean], std=[round(float(v), 6) for v in self.std],
                 color="grayscale" if self.channels == 1 else "RGB", interpolation="bilinear (antialiased)",
                 pixels=f"0-{self.scale:g}, divided by {self.scale:g}", layout="NCHW float32",
                 input_shape=[self.channels, self.crop, self.crop])
        return d

    def describe(self) -> str:
        """One line for logs and the report."""
        return describe_preprocessing(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        """The record `as_dict` wrote (meta.json), or a user's dict of resize, crop, mean, std (channels: one per
        mean value)."""
        return cls(resize=int(d["resize"]), crop=int(d["crop"]), mean=tuple(float(v) for v in d["mean"]),
                   std=tuple(float(v) for v in d["std"]), channels=int(d.get("channels", len(d["mean"]))),
                   normalize=str(d.get("normalize", "given")), scale=float(d.get("scale", 255.0)))

    def with_stats(self, mean: Iterable[float], std: Iterable[float]) -> "Preprocessing":
        return replace(self, mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """float C x H x W in [0, 1] -> the normalized C x crop x crop input."""
        x = resize_crop(x, self.resize, self.crop)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(-1, 1, 1)
        return (x - mean) / std


def resize_crop(x: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    """C x H x W: short side to `resize` (aspect kept), then the center `crop` x `crop`."""
    h, w = x.shape[-2:]
    if (h, w) != (crop, crop):
        scale = resize / min(h, w)
        size = (max(crop, round(h * scale)), max(crop, round(w * scale)))
        if size != (h, w):
            x = F.interpolate(x.unsqueeze(0), size=size, mode="bilinear", align_corners=False,
                              antialias=True).squeeze(0)
        top, left = (x.shape[-2] - crop) // 2, (x.shape[-1] - crop) // 2
        x = x[..., top:top + crop, left:left + crop]
    return x


def resolve_normalization(normalize: Normalize, mean: list[float] | None, std: list[float] | None,
                          channels: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) the user fixed (`--mean/--std` or `--normalize imagenet|none`), or None when they are
    the training split's own (`--normalize dataset`, computed by the caller)."""
    if (mean is None) != (std is None):
        raise ConfigError("--mean and --std go together; give both (one value per channel, e.g. "
                          "--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225)")
    if mean is not None and std is not None:
        for name, v in (("--mean", mean), ("--std", std)):
            if len(v) not in (1, channels):
                raise ConfigError(f"{name} has {len(v)} values but the images have {channels} channel(s); "
                                  f"give {channels} values (or 1 for all)")
        if any(s <= 0 for s in std):
            raise ConfigError(f"--std {','.join(map(str, std))} has a value <= 0; give positive values")
        return _per_channel(mean, channels), _per_channel(std, channels)
    if normalize == "imagenet":
        if channels != 3:
            raise ConfigError(f"--normalize imagenet needs RGB images, but these have {channels} channel(s); "
                              "use --normalize dataset or give --mean/--std")
        return IMAGENET_MEAN, IMAGENET_STD
    if normalize == "none":
        return (0.0,) * channels, (1.0,) * channels
    return None


def _per_channel(v: list[float], channels: int) -> tuple[float, ...]:
    return tuple(float(x) for x in (v * channels if len(v) == 1 else v))


def channel_stats(batches: Iterable[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over image batches (N x C x H x W), in float64; a constant channel gets std 1."""
    total, total_sq, count = None, None, 0
    for x in batches:
        x = x.double()
        s, sq = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = (total / count).numpy()
    var = np.maximum((total_sq / count).numpy() - mean * mean, 0.0)
    std = np.sqrt(var)
    return mean, np.where(std < 1e-6, 1.0, std)
