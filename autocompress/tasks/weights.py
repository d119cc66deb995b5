"""Load user weights (`--weights FILE`) into a model built by name.

Formats: a plain state_dict; a checkpoint dict holding one (or a model) under `state_dict`, `model`,
`model_state_dict`, `net` or `params`, next to other entries (epoch, optimizer, ...); keys prefixed `module.`
(DataParallel/DDP) and/or `_orig_mod.` (torch.compile); old-PyTorch BatchNorm without `num_batches_tracked`;
a whole pickled model (torch.save(model)); a TorchScript file (torch.jit.save).
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

from autocompress.errors import ModelError

__all__ = ["load_weights"]

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "params")
KEY_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile
BATCH_COUNT = "num_batches_tracked"  # a BatchNorm buffer older PyTorch versions did not save


def _is_torchscript(path: Path) -> bool:
    """A torch.jit.save archive holds `<archive>/constants.pkl`; a torch.save one does not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(name.count("/") == 1 and name.endswith("/constants.pkl") for name in z.namelist())


def _read(path: Path):
    """The object saved in `path`: a TorchScript module, or whatever torch.load returns."""
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():  # torch.jit is deprecated, but the user's file is TorchScript
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise ModelError(
                f"--weights {path} cannot be read by torch.jit.load ({type(e).__name__}); "
                "pass a file saved with torch.save"
            ) from None
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a whole pickled model needs weights_only=False
            return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise ModelError(
            f"--weights {path} cannot be read by torch.load ({type(e).__name__}); pass a file saved with torch.save"
        ) from None


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    """The state_dict in what was saved: itself, a module's, or one held under a wrapper key."""
    if isinstance(obj, nn.Module):  # TorchScript modules are nn.Modules too
        return obj.state_dict()
    if _is_state_dict(obj):
        return obj
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return inner.state_dict()
            if _is_state_dict(inner):
                return inner
    raise ModelError(
        f"--weights {path} holds a {type(obj).__name__}, not a state_dict or a model; "
        "save model.state_dict() with torch.save"
    )


def _own_key(key: str, own: dict) -> str:
    """`key` without the wrapper prefixes (`module.`, `_orig_mod.`, in any order) the model's keys lack."""
    while key not in own:
        prefix = next((p for p in KEY_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            break
        key = key.removeprefix(prefix)
    return key


def _fill_batch_counts(sd: dict[str, torch.Tensor], own: dict) -> None:
    """Old checkpoints lack BatchNorm's `num_batches_tracked`: keep the model's (as PyTorch's BatchNorm does)."""
    for key, value in own.items():
        if (key == BATCH_COUNT or key.endswith("." + BATCH_COUNT)) and key not in sd:
            sd[key] = value


def _first(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _check_fits(sd: dict[str, torch.Tensor], own: dict, path: Path) -> None:
    """Raise a ModelError naming the first differing keys and shapes, if `sd` does not fit the model."""
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if shapes:
        k = shapes[0]
        parts.append(f"shape of {k} is {list(sd[k].shape)} in the file but {list(own[k].shape)} in the model"
                     + (f" (+{len(shapes) - 1} more)" if len(shapes) > 1 else ""))
    if missing:
        parts.append(f"missing keys {_first(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {_first(unexpected)}")
    raise ModelError(f"--weights {path} do not match the model: {'; '.join(parts)}; pass weights saved from this "
                     "architecture with as many classes as the data")


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load `path` into `model` strictly; a mismatch names the first differing keys and shapes."""
    path = Path(path)
    if path.is_dir():
        raise ModelError(f"--weights {path} is a directory; pass the checkpoint file in it (saved with torch.save)")
    if not path.is_file():
        raise ModelError(
            f"--weights {path} does not exist; pass a file saved with torch.save(model.state_dict(), path)"
        )
    own = model.state_dict()
    sd = {_own_key(k, own): v for k, v in _state_dict(_read(path), path).items()}
    _fill_batch_counts(sd, own)
    _check_fits(sd, own, path)
    model.load_state_dict(sd)
