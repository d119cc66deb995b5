"""Where fine-tuning runs: the GPU when there is one (`train_device: auto`), else the CPU.

Only training moves. Export, quantization, accuracy and latency stay on the CPU, which is the device the
latency is measured for (ONNX Runtime's CPU execution provider).
"""

from __future__ import annotations

from typing import Literal

from autocompress.errors import ConfigError

__all__ = ["TrainDevice", "resolve_train_device", "trial_resources"]

TrainDevice = Literal["auto", "cpu", "cuda"]


def resolve_train_device(setting: TrainDevice, gpus_seen: float) -> str:
    """`cuda` or `cpu` for a setting, given the GPUs the trials can get (torch's on this machine, or a Ray
    cluster's)."""
    if setting == "cpu":
        return "cpu"
    if setting == "cuda" and gpus_seen <= 0:
        raise ConfigError("--train-device cuda, but no GPU is visible (torch.cuda on this machine, or the Ray "
                          "cluster's GPU resources); use --train-device auto or cpu")
    return "cuda" if gpus_seen > 0 else "cpu"


def trial_resources(train_device: str, threads: int, gpus_per_trial: float) -> dict[str, float]:
    """The Ray resources one trial asks for: its CPU threads, and a GPU share when it fine-tunes on CUDA (a
    fraction lets several trials share one GPU)."""
    return {"num_cpus": threads, "num_gpus": gpus_per_trial if train_device == "cuda" else 0}
