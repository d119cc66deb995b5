"""fp16 as a precision choice: the layer's weights are stored in half precision in the shipped file and cast back
to float32 for the convolution (ONNX Runtime's CPU provider has no fp16 convolution on x86: the file halves, the
speed is measured like any other choice)."""

from __future__ import annotations

import io

import onnx
import pytest

from autocompress.pipeline.trial import TrialSpec, run_pipeline


def _layers(model) -> list[str]:
    import torch.nn as nn

    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_fp16_layers_halve_the_file_and_the_artifact_predicts_like_its_pytorch_model(trained_resnet20, digits):
    layers = _layers(trained_resnet20)
    fp32 = run_pipeline(trained_resnet20, digits, TrialSpec({}, {l: "fp32" for l in layers}, None))
    half = run_pipeline(trained_resnet20, digits, TrialSpec({}, {l: "fp16" for l in layers}, None))
    assert half.size_bytes < 0.55 * fp32.size_bytes
    weights = {i.name: i.data_type for i in onnx.load_model(io.BytesIO(half.onnx_bytes)).graph.initializer}
    assert all(weights[f"{l}.weight.fp16"] == onnx.TensorProto.FLOAT16 for l in layers)
    assert set(half.float_layers) == set(layers) and not half.integer_layers
    # the PyTorch model rounds its weights to fp16 as the file does: both give the same test accuracy
    assert half.test_accuracy == pytest.approx(half.torch_test_accuracy, abs=0.3)
    assert half.test_accuracy == pytest.approx(fp32.test_accuracy, abs=1.0)


def test_fp16_mixes_with_int8_layers_on_integer_kernels(trained_resnet20, digits):
    layers = _layers(trained_resnet20)
    precisions = {l: ("fp16" if i % 3 == 0 else "int8") for i, l in enumerate(layers)}
    out = run_pipeline(trained_resnet20, digits, TrialSpec({}, precisions, None))
    assert set(out.integer_layers) == {l for l, p in precisions.items() if p == "int8"}
    assert set(out.float_layers) == {l for l, p in precisions.items() if p == "fp16"}
    assert out.test_accuracy == pytest.approx(out.torch_test_accuracy, abs=0.6)
