"""The documented bad inputs: each case, how to set it up, and the command. Shared by
tests/test_bad_inputs.py (every case: exit 2, one line, no traceback, no run directory, the documented
message) and docs/make_errors_table.py (which renders docs/errors.md from real runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _weights(d: Path, classes: int) -> str:
    import torch

    from autocompress.tasks.models import build_model

    path = d / f"weights{classes}.pt"
    torch.save(build_model("resnet20", num_classes=classes, in_channels=1).state_dict(), path)
    return str(path)


def _imagefolder(d: Path, broken: bool) -> str:
    from PIL import Image

    root = d / "images"
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / "train" / cls).mkdir(parents=True, exist_ok=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "train" / cls / f"{i}.png")
    if broken:
        (root / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    return str(root)


RAISING_MODEL = "def build(num_classes=10):\n    raise ValueError('no such depth: 7')\n"


def _file(d: Path, name: str, text: str) -> str:
    (d / name).write_text(text)
    return str(d / name)


# (id, what is wrong, function(tmp dir) -> CLI args before --out)
CASES = [
    ("unknown-model", "unknown model name", lambda d: ["--budget", "2", "--model", "nosuchnet"]),
    ("module-not-importable", "a module path that does not import",
     lambda d: ["--budget", "2", "--model", "nosuchpkg.models:build"]),
    ("no-such-function", "a model file without the named function",
     lambda d: ["--budget", "2", "--model", f"{_file(d, 'm.py', 'x = 1')}:build"]),
    ("weights-mismatch", "weights that do not match the model",
     lambda d: ["--budget", "2", "--weights", _weights(d, 5)]),
    ("weights-missing", "a weights file that does not exist",
     lambda d: ["--budget", "2", "--weights", str(d / "none.pt")]),
    ("no-data-dir", "a file-based dataset without --data-dir", lambda d: ["--budget", "2", "--dataset", "cifar10"]),
    ("missing-data-dir", "a data directory that does not exist",
     lambda d: ["--budget", "2", "--dataset", "cifar10", "--data-dir", str(d / "nowhere")]),
    ("empty-data-dir", "an empty data directory",
     lambda d: ["--budget", "2", "--dataset", "imagefolder", "--data-dir", str((d / "empty").mkdir() or d / "empty")]),
    ("undecodable-images", "undecodable image files",
     lambda d: ["--budget", "2", "--dataset", "imagefolder", "--data-dir", _imagefolder(d, True)]),
    ("class-count", "a class count that does not match the data", lambda d: ["--budget", "2", "--num-classes", "5"]),
    ("input-the-model-cannot-take", "an input the model cannot take",
     lambda d: ["--budget", "2", "--model", "resnet18"]),
    ("ray-unreachable", "an unreachable --ray-address", lambda d: ["--budget", "2", "--ray-address", "127.0.0.1:1"]),
    ("device-unknown", "a --device no Ray node carries", lambda d: ["--budget", "2", "--device", "jetson"]),
    ("device-name", "a --device name that is not a resource name", lambda d: ["--budget", "2", "--device", "my board"]),
    ("budget-malformed", "a malformed budget", lambda d: ["--budget", "5x"]),
    ("budget-zero", "a zero budget", lambda d: ["--budget", "0"]),
    ("space-bad-yaml", "a search space that is not YAML",
     lambda d: ["--budget", "2", "--space", _file(d, "s.yaml", "prune: [1, 2\n")]),
    ("space-ratio-range", "a prune ratio out of range",
     lambda d: ["--budget", "2", "--space", _file(d, "s.yaml", "prune:\n  ratios: [0.5, 1.2]\n")]),
    ("space-unknown-key", "an unknown key in the search space",
     lambda d: ["--budget", "2", "--space", _file(d, "s.yaml", "prune:\n  ratio: [0.5]\n")]),
    ("space-rule-selects-nothing", "a rule that selects no layer",
     lambda d: ["--budget", "2", "--space", _file(d, "s.yaml", "rules:\n  - match: 'layer9.*'\n    ratios: [0.0]\n")]),
    ("config-unknown-key", "an unknown key in a config file",
     lambda d: ["--config", _file(d, "run.yaml", "budget: 2\nmodle: resnet20\n")]),
    ("config-bad-value", "a config value out of range",
     lambda d: ["--config", _file(d, "run.yaml", "budget: 2\nfinetune: {epochs: -1}\n")]),
    ("sampler", "an unknown sampler", lambda d: ["--budget", "2", "--sampler", "bayes"]),
    ("baselines-no-fp32", "baselines without fp32", lambda d: ["--budget", "2", "--baselines", "int8,prune50-int8"]),
    ("target-without-model", "a latency target without the latency model",
     lambda d: ["--budget", "2", "--target-latency-ms", "1", "--no-latency-model"]),
    ("multi-fidelity-without-model", "multi-fidelity without the latency model",
     lambda d: ["--budget", "2", "--multi-fidelity", "1", "--no-latency-model"]),
    ("multi-fidelity-grid", "multi-fidelity with the grid sampler",
     lambda d: ["--budget", "2", "--multi-fidelity", "1", "--sampler", "grid"]),
    ("model-function-raises", "a model function that raises",
     lambda d: ["--budget", "2", "--model", f"{_file(d, 'raises.py', RAISING_MODEL)}:build"]),
    ("weights-directory", "a --weights path that is a directory", lambda d: ["--budget", "2", "--weights", str(d)]),
    ("space-directory", "a --space path that is a directory", lambda d: ["--budget", "2", "--space", str(d)]),
    ("config-directory", "a --config path that is a directory", lambda d: ["--config", str(d)]),
]
