"""Model registry: built-in CIFAR-style ResNets, torchvision names, and `module:function` builders."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from autocompress.errors import ModelError

__all__ = ["register_model", "list_models", "build_model", "ModelSpec", "resnet20", "resnet56"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    description: str


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, description: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder `fn(num_classes, in_channels) -> nn.Module` under `name` (raises on duplicates)."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(name, fn, description)
        return fn

    return deco


def list_models() -> list[ModelSpec]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


# ---------------------------------------------------------------- CIFAR-style ResNet (He et al. 2016, option B)
class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("depth must be 6n+2")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, planes, 2 if (i > 0 and j == 0) else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register_model("resnet20", "CIFAR-style ResNet-20 (0.27M params), the demo network")
def resnet20(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarResNet(20, num_classes, in_channels)


@register_model("resnet56", "CIFAR-style ResNet-56 (0.86M params)")
def resnet56(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarResNet(56, num_classes, in_channels)


# ---------------------------------------------------------------- resolution
def _torchvision_names() -> set[str]:
    from torchvision import models as tvm

    return set(tvm.list_models(module=tvm))


def _load_callable(ref: str) -> Callable[..., nn.Module]:
    target, _, fn_name = ref.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise ModelError(f"model file {target!r} does not exist; pass --model path/to/file.py:function")
            mod_name = f"_autocompress_user_{path.stem}"
            spec = importlib.util.spec_from_file_location(mod_name, path)
            assert spec and spec.loader
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - any import failure is the user's module
        raise ModelError(
            f"cannot import {target!r} for --model {ref!r}: {type(e).__name__}: {e}; check the path and that it imports"
        ) from e
    # Ray workers cannot import a module loaded from a file path (or one off their sys.path):
    # have cloudpickle ship the model's classes by value.
    try:
        import ray.cloudpickle as cloudpickle

        cloudpickle.register_pickle_by_value(module)
    except Exception:  # noqa: BLE001 - without Ray's cloudpickle, by-reference pickling still works locally
        pass
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ModelError(
            f"{target!r} has no callable {fn_name!r} for --model {ref!r}; name a function that returns an nn.Module"
        )
    return fn


def _call_builder(fn: Callable[..., nn.Module], ref: str, num_classes: int) -> nn.Module:
    """The user's function, called with num_classes= when it takes it; what it raises is one ModelError line (the
    traceback stays attached as the cause, for --verbose)."""
    try:
        params = inspect.signature(fn).parameters.values()
        takes_classes = any(p.name == "num_classes" or p.kind is p.VAR_KEYWORD for p in params)
    except (TypeError, ValueError):  # a callable without a signature: try it both ways
        takes_classes = True
    try:
        return fn(num_classes=num_classes) if takes_classes else fn()
    except Exception as e:  # noqa: BLE001 - any failure here is in the user's own code
        where = getattr(fn, "__name__", ref.rpartition(":")[2])
        text = " ".join(str(e).split())[:300]
        raise ModelError(f"--model {ref!r}: {where}() raised {type(e).__name__}: {text}; fix the function "
                         "(--verbose shows the traceback)") from e


def build_model(name: str, *, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build a model by registry name, torchvision name, or `module:function` / `file.py:function`."""
    if name in _REGISTRY:
        return _REGISTRY[name].builder(num_classes=num_classes, in_channels=in_channels)
    if ":" in name:
        model = _call_builder(_load_callable(name), name, num_classes)
        if not isinstance(model, nn.Module):
            raise ModelError(f"--model {name!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model
    if name in _torchvision_names():
        from torchvision import models as tvm

        model = tvm.get_model(name, weights=None, num_classes=num_classes)
        if in_channels != 3:
            raise ModelError(
                f"torchvision model {name!r} takes 3 input channels but the data has {in_channels}; "
                "use a 3-channel dataset"
            )
        return model
    known = ", ".join(sorted(_REGISTRY))
    raise ModelError(
        f"unknown model {name!r}; use one of {known}, a torchvision classification model name, or module:function "
        "(run `autocompress models` to list them)"
    )
