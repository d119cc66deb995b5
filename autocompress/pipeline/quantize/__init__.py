"""Per-layer precision: fake quantization for the fine-tune, ONNX Runtime static quantization for the artifact.

Precisions: `fp32` (left in float), `int8` (int8 per-channel symmetric weights, uint8 activations:
the U8S8 QDQ format that fuses into QLinearConv on x86), `int4` (int4 per-channel weights stored
packed as ONNX INT4, uint8 activations; on ORT's CPU provider this runs as DequantizeLinear + float
Conv, so it buys size, not speed).

Modules: `format` (the device's integer format, weight grids), `quantizers` (the fake quantizers),
`fx_graph` (where ORT quantizes activations, mirrored on a torch.fx trace), `regions` (which ops are quantized
together), `fake` (the PyTorch side: fake_quantized, calibrate_activations), `ort` (the ONNX Runtime side).
"""

from autocompress.pipeline.quantize.fake import calibrate_activations, fake_quantized
from autocompress.pipeline.quantize.format import PRECISIONS, quant_format_for, weight_range
from autocompress.pipeline.quantize.ort import quantize_static_onnx, quiet_ort_quantization

__all__ = ["PRECISIONS", "fake_quantized", "calibrate_activations", "quantize_static_onnx", "quant_format_for",
           "quiet_ort_quantization", "weight_range"]
