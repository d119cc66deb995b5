"""Shared fixtures. Tests use their own baseline cache, so a run never depends on ~/.cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Small, fast settings for end-to-end runs (the defaults train longer and measure latency more carefully).
FAST_CONFIG = Path(__file__).with_name("fast_run.yaml")
FAST_FLAGS = ["--config", str(FAST_CONFIG), "--baseline-epochs", "3", "--finetune-epochs", "0.5", "--no-progress",
              "--no-sensitivity"]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("autocompress-cache")
    old = os.environ.get("AUTOCOMPRESS_CACHE")
    os.environ["AUTOCOMPRESS_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("AUTOCOMPRESS_CACHE", None)
    else:
        os.environ["AUTOCOMPRESS_CACHE"] = old


@pytest.fixture(scope="session")
def digits():
    from autocompress.tasks import load_dataset

    return load_dataset("digits", input_size=32, seed=0)


@pytest.fixture(scope="session")
def trained_resnet20(digits):
    """A ResNet-20 trained briefly on digits (3 epochs: enough to be far above chance)."""
    from autocompress.config import TrainConfig
    from autocompress.pipeline.baseline import get_baseline

    torch.set_num_threads(2)
    model, info = get_baseline(model_name="resnet20", splits=digits, settings=TrainConfig(epochs=3, lr=0.1), seed=0)
    return model


def default_sigint() -> None:
    """For a child process: Ctrl-C reaches a search as Python's KeyboardInterrupt, which Python does not install
    when a process starts with SIGINT ignored, as everything under a shell's background job does
    (`bash .ci/run &`): the child gets the default back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(*args: str) -> subprocess.Popen:
    """`autocompress ARGS` started in a process and process group of its own, stderr piped, Ctrl-C's default
    handling restored (`default_sigint`)."""
    return subprocess.Popen([sys.executable, "-m", "autocompress.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=default_sigint)


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run `autocompress ARGS` in a fresh process, as a user would."""
    return subprocess.run([sys.executable, "-m", "autocompress.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ})
