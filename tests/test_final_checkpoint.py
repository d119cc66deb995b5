"""finalize resumes a checkpoint only when it was made for the same trial and settings."""

from __future__ import annotations

import torch

from autocompress.config import TrainConfig
from autocompress.engine.final import resumable


def _plan(trial: int = 3, epochs: float = 5) -> dict:
    return {"trial": trial, "ratios": {"conv1": 0.5}, "precisions": {"conv1": "int8"}, "criterion": "l2", "seed": 0,
            "finetune": TrainConfig(epochs=epochs, lr=0.01).model_dump()}


def test_a_checkpoint_of_the_same_plan_is_resumed_and_another_is_not(tmp_path):
    path = tmp_path / "checkpoint.pt"
    lines: list[str] = []
    assert resumable(path, _plan(), lines.append) is None and lines == []  # nothing to resume
    torch.save({"model": {"w": torch.ones(2)}, "history": [{"epoch": 1}], "plan": _plan()}, path)
    ck = resumable(path, _plan(), lines.append)
    assert ck is not None and ck["history"] == [{"epoch": 1}] and lines == []
    assert resumable(path, _plan(epochs=3), lines.append) is None  # other settings, same --name
    assert resumable(path, _plan(trial=4), lines.append) is None  # another trial, same --name
    assert len(lines) == 2 and all(line.endswith("starting afresh") for line in lines)
    assert "made for trial 3 with other settings than trial 4" in lines[1]
    torch.save({"model": {}, "history": []}, path)  # written before checkpoints named their plan
    assert resumable(path, _plan(), lines.append) is None
