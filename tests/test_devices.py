"""Where trials fine-tune (`--train-device auto|cpu|cuda`) and what they ask Ray for. This machine has no GPU:
the choice and the Ray request are checked here; a fine-tune on CUDA runs where torch sees one."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from autocompress.config import TrainConfig
from autocompress.errors import ConfigError
from autocompress.pipeline.devices import resolve_train_device, trial_resources
from autocompress.pipeline.finetune import Trainer
from autocompress.tasks.splitting import Split, TensorImages
from tests.conftest import run_cli


@pytest.mark.parametrize("setting,gpus,expected", [("auto", 0, "cpu"), ("auto", 1, "cuda"), ("auto", 0.5, "cuda"),
                                                   ("cpu", 4, "cpu"), ("cuda", 2, "cuda")])
def test_the_train_device_follows_the_setting_and_the_gpus_seen(setting, gpus, expected):
    assert resolve_train_device(setting, gpus) == expected


def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ConfigError, match="no GPU is visible.*use --train-device auto or cpu"):
        resolve_train_device("cuda", 0)


def test_a_trial_asks_ray_for_a_gpu_share_only_when_it_fine_tunes_on_cuda():
    assert trial_resources("cuda", 2, 0.5) == {"num_cpus": 2, "num_gpus": 0.5}
    assert trial_resources("cpu", 2, 0.5) == {"num_cpus": 2, "num_gpus": 0}


def test_ray_grants_a_trial_those_resources():
    import ray

    from autocompress.runtime.executor import RayExecutor

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)  # a logical GPU: Ray's view
    try:
        ex = RayExecutor(nn.Linear(2, 2), None, 1, None, (1, 8, 8), trial_resources("cuda", 1, 0.5))

        def granted() -> dict:
            return ray.get_runtime_context().get_assigned_resources()

        # the executor's trial task is submitted with ex.resources: a task with them gets half the GPU
        got = ray.get(ray.remote(granted).options(**ex.resources).remote())
        assert got == {"CPU": 1.0, "GPU": 0.5}
    finally:
        ray.shutdown()


def test_cli_train_device_errors_are_one_line_and_exit_2(tmp_path):
    for value, words in (("tpu", "train_device"), ("cuda" if not torch.cuda.is_available() else "tpu", "GPU")):
        if value == "tpu" and words == "GPU":
            continue
        res = run_cli("search", "--budget", "1", "--train-device", value, "--out", str(tmp_path / value))
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and words in res.stderr, res.stderr
        assert not (tmp_path / value).exists()


def _epoch_on(device: str) -> tuple[float, str]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 3))
    x, y = torch.randn(64, 1, 8, 8), torch.arange(64) % 3
    trainer = Trainer(model, 64, settings=TrainConfig(epochs=1, lr=0.05, batch_size=16), seed=0,
                      teacher=model, device=device)
    loss = trainer.epoch(Split(TensorImages(x, y), y.numpy()))
    return loss, str(next(model.parameters()).device)


def test_an_epoch_on_the_cpu_leaves_the_model_on_the_cpu():
    loss, where = _epoch_on("cpu")
    assert where == "cpu" and loss == loss  # finite


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_an_epoch_on_cuda_trains_there_and_gives_the_model_back_on_the_cpu():
    loss, where = _epoch_on("cuda")
    assert where == "cpu" and torch.isfinite(torch.tensor(loss))
    assert abs(loss - _epoch_on("cpu")[0]) < 0.05  # the same training, up to float differences
