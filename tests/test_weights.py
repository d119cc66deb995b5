"""`load_weights` reads checkpoints as they exist in the wild into a model built by name (issue 16)."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
import torch.nn as nn

from autocompress.errors import ModelError
from autocompress.tasks.models import build_model
from autocompress.tasks.weights import load_weights

BATCH_COUNT = "num_batches_tracked"


def _resnet20(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet20", num_classes=10, in_channels=1).eval()


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    """A resnet20 whose BatchNorm statistics differ from a fresh one's, as after training."""
    model = _resnet20(0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.num_batches_tracked.fill_(7)
    return model


def _x() -> torch.Tensor:
    return torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(2))


def _assert_same(model: nn.Module, original: nn.Module, skip: str = "\0") -> None:
    got, want = model.state_dict(), original.state_dict()
    assert list(got) == list(want)
    for key, value in want.items():
        if not key.endswith(skip):
            assert torch.equal(got[key], value), key
    with torch.no_grad():
        assert torch.equal(model.eval()(_x()), original.eval()(_x()))


def _load(tmp_path, obj, original: nn.Module) -> nn.Module:
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    fresh = _resnet20(3)
    load_weights(fresh, path)
    _assert_same(fresh, original)
    return fresh


def test_plain_state_dict(tmp_path, trained):
    _load(tmp_path, trained.state_dict(), trained)


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict", "net", "params"])
def test_checkpoint_wrapper_with_other_entries(tmp_path, trained, key):
    opt = torch.optim.SGD(trained.parameters(), lr=0.1, momentum=0.9)
    ckpt = {"epoch": 90, "best_acc": 91.5, "optimizer": opt.state_dict(), key: trained.state_dict()}
    _load(tmp_path, ckpt, trained)


def test_checkpoint_wrapper_holding_a_whole_model(tmp_path, trained):
    _load(tmp_path, {"epoch": 3, "model": trained}, trained)


@pytest.mark.parametrize("wrap", [
    pytest.param(nn.DataParallel, id="module."),
    pytest.param(torch.compile, id="_orig_mod."),
    pytest.param(lambda m: torch.compile(nn.DataParallel(m)), id="_orig_mod.module."),
    pytest.param(lambda m: nn.DataParallel(torch.compile(m)), id="module._orig_mod."),
])
def test_dataparallel_and_compile_prefixes_are_stripped(tmp_path, trained, wrap):
    sd = wrap(trained).state_dict()  # the real wrappers' keys; torch.compile compiles nothing until called
    assert all(k.startswith(("module.", "_orig_mod.")) for k in sd)
    _load(tmp_path, {"state_dict": sd}, trained)


def test_prefix_is_kept_when_the_model_has_it(tmp_path, trained):
    path = tmp_path / "dp.pt"
    torch.save(nn.DataParallel(trained).state_dict(), path)
    fresh = nn.DataParallel(_resnet20(3))
    load_weights(fresh, path)
    _assert_same(fresh.module, trained)


def test_old_pytorch_checkpoint_without_num_batches_tracked(tmp_path, trained):
    sd = {k: v for k, v in nn.DataParallel(trained).state_dict().items() if not k.endswith(BATCH_COUNT)}
    assert len(sd) < len(trained.state_dict())
    path = tmp_path / "old.pt"
    torch.save(sd, path)
    fresh = _resnet20(3)
    load_weights(fresh, path)
    _assert_same(fresh, trained, skip=BATCH_COUNT)
    counts = [v for k, v in fresh.state_dict().items() if k.endswith(BATCH_COUNT)]
    assert counts and all(int(c) == 0 for c in counts)  # the model's own counters, as PyTorch's BatchNorm keeps


def test_whole_pickled_model(tmp_path, trained):
    _load(tmp_path, trained, trained)


def test_torchscript_file(tmp_path, trained):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.trace(trained, _x()), str(path))
    fresh = _resnet20(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither torch.load's TorchScript dispatch nor jit's deprecation warns
        load_weights(fresh, path)
    _assert_same(fresh, trained)


def test_another_architecture_names_keys_and_shapes(tmp_path):
    torch.manual_seed(0)
    other = build_model("resnet56", num_classes=10, in_channels=3)
    path = tmp_path / "resnet56.pt"
    torch.save({"state_dict": nn.DataParallel(other).state_dict()}, path)
    expected = re.escape(
        f"--weights {path} do not match the model: shape of conv1.weight is [16, 3, 3, 3] in the file but "
        "[16, 1, 3, 3] in the model; unexpected keys layer1.3.conv1.weight, layer1.3.bn1.weight, layer1.3.bn1.bias"
    )
    with pytest.raises(ModelError, match=expected):
        load_weights(_resnet20(3), path)


def test_a_dict_without_a_state_dict_is_named(tmp_path):
    path = tmp_path / "stats.pt"
    torch.save({"epoch": 3, "optimizer": {}}, path)
    with pytest.raises(ModelError, match=r"holds a dict, not a state_dict or a model"):
        load_weights(_resnet20(3), path)


def test_an_old_dataparallel_checkpoint_loads_through_the_cli(tmp_path, trained):
    """As a user brings it: saved by an older PyTorch (no num_batches_tracked) from a DataParallel model, wrapped
    with training state. --dry-run loads the weights (and checks them) without searching."""
    import json

    from tests.conftest import run_cli

    sd = {k: v for k, v in nn.DataParallel(trained).state_dict().items() if not k.endswith(BATCH_COUNT)}
    path = tmp_path / "old.pth"
    torch.save({"epoch": 90, "best_acc": 91.3, "state_dict": sd}, path)
    res = run_cli("search", "--budget", "1", "--weights", str(path), "--out", str(tmp_path / "run"), "--dry-run",
                  timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["config"]["weights"] == str(path)
    assert not (tmp_path / "run").exists()
