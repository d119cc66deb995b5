"""The precisions, the weight grids ORT quantizes them to, and the integer format (7-bit weights or not) per device."""

from __future__ import annotations

PRECISIONS = ("fp32", "fp16", "int8", "int4")
# Float layers: not quantized by ORT's QDQ pass. An fp16 layer stores its weights in half precision, cast back to
# float32 for the convolution: the file shrinks; whether it runs faster depends on the execution provider.
FLOAT_PRECISIONS = ("fp32", "fp16")
# ORT's symmetric weight ranges: int8 uses the restricted [-127, 127], int4 the full [-8, 7];
# scale = 2 * absmax / (qmax - qmin), zero point 0 (onnxruntime.quantization.quant_utils).
_WEIGHT_RANGE = {"int8": (-127, 127), "int4": (-8, 7)}
_WEIGHT_RANGE_REDUCED = {"int8": (-64, 64), "int4": (-8, 7)}  # reduce_range: 7-bit int8 weights (int4 keeps 4 bits)


def weight_range(precision: str, reduce_range: bool) -> tuple[int, int]:
    return (_WEIGHT_RANGE_REDUCED if reduce_range else _WEIGHT_RANGE)[precision]


def quant_format_for(device: dict) -> dict:
    """The integer format for the target device (recorded in every run's meta.json and report).

    ONNX Runtime's CPU provider runs U8S8 QDQ (uint8 activations, int8 weights) on integer kernels
    (QLinearConv/QGemm) on x86. Without VNNI those kernels multiply-add pairs of u8*s8 products into
    int16 (VPMADDUBSW), which saturates: with full 8-bit weights, a trial on this 2-core AVX2 machine
    lost 3-7 points of accuracy against the very same arithmetic unfused. ORT's documented remedy is
    7-bit weights (reduce_range) on CPUs without VNNI; VNNI and ARM kernels accumulate in int32.
    S8S8 QDQ is not used: on AVX2 it leaves convolutions partly in float and is slower than fp32.
    """
    isa = set(device.get("isa", []))
    machine = str(device.get("machine", "")).lower()
    x86 = machine in ("x86_64", "amd64", "i686", "x86")
    vnni = bool(isa & {"avx512_vnni", "avx_vnni", "amx_int8"})
    reduce_range = x86 and not vnni
    why = ("x86 without VNNI: 7-bit weights avoid int16 saturation in U8S8 kernels" if reduce_range
           else "x86 with VNNI: 8-bit weights" if x86 else "non-x86: 8-bit weights")
    return {"format": "QDQ", "activations": "uint8 asymmetric per-tensor (MinMax)",
            "weights": "int8 symmetric per-channel", "int8_weight_range": list(weight_range("int8", reduce_range)),
            "reduce_range": reduce_range, "why": why}
