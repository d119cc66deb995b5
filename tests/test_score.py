"""The cheap score of a candidate (pipeline/score.py): a small BatchNorm CNN trained on digits in the test, scored for
real (no mocks): pruned, fake-quantized, BatchNorm recalibrated, evaluated on a fixed validation sample."""

from __future__ import annotations

import copy
from dataclasses import asdict, replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.parametrize as P

from autocompress.config import TrainConfig
from autocompress.pipeline.finetune import evaluate, train
from autocompress.pipeline.prune import find_groups
from autocompress.pipeline.score import (
    ScoreSettings,
    recalibrate_batchnorm,
    reference_logits,
    score_candidate,
    score_sample,
)
from autocompress.pipeline.trial import TrialSpec, run_pipeline
from autocompress.tasks import load_dataset

LAYERS = ("conv1", "conv2", "conv3", "fc")
FP32 = {name: "fp32" for name in LAYERS}
INT8 = {name: "int8" for name in LAYERS}
DEFAULT = ScoreSettings()
NO_BN = ScoreSettings(bn_images=0)  # the baseline's statistics kept: the control


class SmallNet(nn.Module):
    """Three conv + BatchNorm stages, dropout before the classifier (it must stay off while BatchNorm recalibrates)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32)
        self.conv3, self.bn3 = nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(self.drop(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


@pytest.fixture(scope="module")
def digits8():
    return load_dataset("digits", input_size=8, seed=0)  # 360 validation images: the sample is all of them


@pytest.fixture(scope="module")
def net(digits8) -> nn.Module:
    torch.manual_seed(0)
    model = SmallNet()
    train(model, digits8.train, settings=TrainConfig(epochs=10, lr=0.05), seed=0, augment="none")
    return model.eval()


def _score(model, data, ratios=None, precisions=FP32, settings=DEFAULT, round_to=8, min_channels=8, **kw):
    return score_candidate(model, data, ratios or {}, precisions, criterion="l2", round_to=round_to,
                           min_channels=min_channels, reduce_range=False, settings=settings, **kw)


def _all_groups(model, data, ratio: float) -> dict[str, float]:
    return {g.name: ratio for g in find_groups(model, data.val.images(1))}


def _figures(score) -> dict:
    return {k: v for k, v in asdict(score).items() if k != "seconds"}


def test_unpruned_fp32_candidate_scores_the_baselines_own_accuracy(net, digits8):
    base = evaluate(net, digits8.val)
    assert base > 95  # a trained model, so that the comparisons below mean something
    kept = _score(net, digits8, settings=NO_BN)
    assert kept.accuracy == pytest.approx(base) and kept.agreement == 100.0 and kept.bn_batches == 0
    logits = reference_logits(net, digits8, NO_BN)
    assert kept.loss == pytest.approx(float(F.cross_entropy(logits, torch.from_numpy(digits8.val.labels))))
    # recalibrated on 256 training images: the statistics are estimated again, the model is the same
    recal = _score(net, digits8, _all_groups(net, digits8, 0.0))
    assert recal.bn_batches == 4  # 256 images in batches of 64
    assert abs(recal.accuracy - base) <= 2.0 and recal.agreement >= 97.0
    assert recal.kept == {"conv1": (16, 16), "conv2": (32, 32), "conv3": (32, 32)}
    assert recal.parameters == sum(p.numel() for p in net.parameters())


def test_a_pruned_candidate_is_really_pruned_and_a_heavily_pruned_one_drops(net, digits8):
    full = _score(net, digits8)
    half = _score(net, digits8, _all_groups(net, digits8, 0.5))
    assert half.kept == {"conv1": (16, 8), "conv2": (32, 16), "conv3": (32, 16)}
    assert half.parameters < 0.4 * full.parameters
    heavy = _score(net, digits8, _all_groups(net, digits8, 0.9), round_to=1, min_channels=1)
    assert heavy.kept == {"conv1": (16, 2), "conv2": (32, 3), "conv3": (32, 3)}
    assert heavy.accuracy < full.accuracy - 20 and heavy.agreement < full.agreement - 20
    assert heavy.loss > full.loss


def test_recalibration_sets_the_running_statistics_to_the_batch_statistics():
    torch.manual_seed(0)
    model = SmallNet().eval()
    with torch.no_grad():
        model.bn1.running_mean.fill_(5.0)  # stale statistics the recalibration must replace
        model.bn1.running_var.fill_(9.0)
    seen: list[bool] = []
    model.drop.register_forward_hook(lambda m, i, o: seen.append(m.training))
    a, b = torch.randn(32, 1, 16, 16), torch.randn(16, 1, 16, 16) * 2 + 1
    assert recalibrate_batchnorm(model, [a, b]) == 2
    with torch.no_grad():
        ha, hb = model.conv1(a), model.conv1(b)
    # momentum None: the plain average of the two batches' statistics (variance unbiased, as BatchNorm keeps it)
    mean = (ha.mean((0, 2, 3)) + hb.mean((0, 2, 3))) / 2
    var = (ha.var((0, 2, 3), unbiased=True) + hb.var((0, 2, 3), unbiased=True)) / 2
    assert torch.allclose(model.bn1.running_mean, mean, atol=1e-5)
    assert torch.allclose(model.bn1.running_var, var, rtol=1e-4)
    assert seen == [False, False]  # dropout stayed in eval mode during the passes
    assert not model.training and not model.bn1.training and model.bn1.momentum == 0.1  # as it was
    before = model.bn1.running_mean.clone()
    assert recalibrate_batchnorm(model, []) == 0 and torch.equal(model.bn1.running_mean, before)


def test_recalibration_improves_a_pruned_model_and_replaces_stale_statistics(net, digits8):
    ratios = _all_groups(net, digits8, 0.5)
    without, with_bn = _score(net, digits8, ratios, settings=NO_BN), _score(net, digits8, ratios)
    # half the channels gone: the next BatchNorm's statistics no longer fit, re-estimated they do
    assert with_bn.accuracy > without.accuracy + 10 and with_bn.loss < without.loss
    stale = copy.deepcopy(net)
    with torch.no_grad():  # statistics that no longer describe the activations: what BatchNorm sees after pruning
        for bn in (stale.bn1, stale.bn2, stale.bn3):
            bn.running_mean.add_(3.0)
            bn.running_var.mul_(25.0)
    stale_without, stale_with = _score(stale, digits8, ratios, settings=NO_BN), _score(stale, digits8, ratios)
    assert stale_without.bn_batches == 0 and stale_with.bn_batches == 4
    assert stale_without.accuracy < 20  # chance: the stale statistics ruin the model
    # recalibrated, the score does not depend on the statistics the baseline came with
    assert (stale_with.accuracy, stale_with.loss) == (with_bn.accuracy, with_bn.loss)


def test_int8_candidate_is_calibrated_like_the_artifact(net, digits8):
    fp32 = _score(net, digits8)
    int8 = _score(net, digits8, precisions=INT8)
    # activation ranges calibrated after the BatchNorm passes: int8 costs the trained net little
    assert abs(int8.accuracy - fp32.accuracy) <= 3.0 and int8.agreement >= 95.0
    assert int8.accuracy > 95


def test_without_recalibration_the_score_is_the_untuned_artifacts_accuracy(net, digits8):
    ratios = _all_groups(net, digits8, 0.5)
    score = _score(net, digits8, ratios, INT8, settings=NO_BN)
    out = run_pipeline(net, digits8, TrialSpec(ratios, INT8, None, round_to=8, min_channels=8))  # no fine-tune
    # the same model as the trial builds (ranges calibrated on other images, BatchNorm not folded): within 2 images
    assert score.kept == out.kept
    assert abs(score.accuracy - out.val_accuracy) <= 200 / len(digits8.val)


def test_the_score_is_deterministic_and_the_sample_fixed(net, digits8):
    ratios = _all_groups(net, digits8, 0.5)
    settings = ScoreSettings(val_images=200, seed=3)
    sample = score_sample(digits8, settings)
    again = score_sample(digits8, settings)
    assert torch.equal(sample.val_x, again.val_x) and torch.equal(sample.train_x, again.train_x)
    other = score_sample(digits8, replace(settings, seed=4))
    assert len(sample.val_y) == 200 and not torch.equal(sample.val_x, other.val_x)
    logits = reference_logits(net, sample, settings)
    first = _score(net, digits8, ratios, INT8, settings)
    assert _figures(_score(net, digits8, ratios, INT8, settings)) == _figures(first)
    assert _figures(_score(net, sample, ratios, INT8, settings, teacher_logits=logits)) == _figures(first)


def test_the_baseline_is_not_modified(net, digits8):
    state = {k: v.clone() for k, v in net.state_dict().items()}
    modes = [m.training for m in net.modules()]
    momenta = [m.momentum for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    _score(net, digits8, _all_groups(net, digits8, 0.5), INT8)
    reference_logits(net, digits8, ScoreSettings())
    assert net.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert [m.training for m in net.modules()] == modes
    assert [m.momentum for m in net.modules() if isinstance(m, nn.BatchNorm2d)] == momenta
    assert not any(P.is_parametrized(m) for m in net.modules())
    assert net.conv1.out_channels == 16


def test_bad_settings_and_mismatched_inputs_are_refused(net, digits8):
    with pytest.raises(ValueError, match=r"ScoreSettings.bn_batch must be an integer of at least 2, but got 1"):
        ScoreSettings(bn_batch=1)
    with pytest.raises(ValueError, match=r"ScoreSettings.val_images must be an integer of at least 1"):
        ScoreSettings(val_images=0)
    sample = score_sample(digits8, ScoreSettings(val_images=100))
    with pytest.raises(ValueError, match=r"the sample was drawn with .* draw it with score_sample"):
        _score(net, sample, settings=ScoreSettings())
    with pytest.raises(ValueError, match=r"teacher_logits have shape \(5, 10\), but the sample's logits \(100, 10\)"):
        _score(net, sample, settings=ScoreSettings(val_images=100), teacher_logits=torch.zeros(5, 10))
