"""Load user weights (`--weights FILE`): a state_dict, a checkpoint holding one, or a whole saved model."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from autocompress.errors import ModelError

__all__ = ["load_weights"]


def _state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return inner.state_dict()
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise ModelError(
        f"--weights {path} holds a {type(obj).__name__}, not a state_dict or a model; "
        "save model.state_dict() with torch.save"
    )


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load `path` into `model` strictly; a mismatch names the first differing keys and shapes."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"--weights {path} does not exist; pass a file saved with torch.save(model.state_dict(), path)"
        )
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a whole pickled model needs weights_only=False
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise ModelError(
            f"--weights {path} cannot be read by torch.load ({type(e).__name__}); pass a file saved with torch.save"
        ) from None
    sd = {k.removeprefix("module."): v for k, v in _state_dict(obj, path).items()}  # DataParallel checkpoints
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            k = shapes[0]
            parts.append(f"shape of {k} is {list(sd[k].shape)} in the file but {list(own[k].shape)} in the model"
                         + (f" (+{len(shapes) - 1} more)" if len(shapes) > 1 else ""))
        if missing:
            parts.append(
                f"missing keys {', '.join(missing[:3])}" + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else "")
            )
        if unexpected:
            parts.append(
                f"unexpected keys {', '.join(unexpected[:3])}"
                + (f" (+{len(unexpected) - 3} more)" if len(unexpected) > 3 else "")
            )
        raise ModelError(f"--weights {path} do not match the model: {'; '.join(parts)}; pass weights saved from this "
                         "architecture with as many classes as the data")
    model.load_state_dict(sd)
