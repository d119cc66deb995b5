"""The device: a Ray actor that measures latency, one measurement at a time.

The search never submits a measurement while a trial of its own is fine-tuning on the same cores
(see runner.py), so a latency figure is never taken beside a training process.
"""

from __future__ import annotations

import os
import platform

import ray

from autocompress.measure.latency import LatencySettings, measure_latency

__all__ = ["Device", "fingerprint"]


def fingerprint(threads: int) -> dict:
    import onnxruntime as ort

    cpu, flags = platform.processor() or "unknown", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and cpu in ("unknown", "", platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "neon", "asimd") if f in flags]
    return {
        "host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "isa": isa, "machine": platform.machine(),
        "onnxruntime": ort.__version__, "threads": threads, "provider": "CPUExecutionProvider",
        "python": platform.python_version(),
    }


@ray.remote(num_cpus=0, max_concurrency=1)
class Device:
    def __init__(self, settings: dict) -> None:
        self.settings = LatencySettings(**settings)

    def fingerprint(self) -> dict:
        return fingerprint(self.settings.threads)

    def measure(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> dict:
        return measure_latency(onnx_bytes, input_shape, self.settings).as_dict()
