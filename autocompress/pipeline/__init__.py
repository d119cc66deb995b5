"""The trial pipeline: prune -> quantize-aware fine-tune (KD) -> export -> ORT static quantization."""
