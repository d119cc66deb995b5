"""The device: a Ray actor that measures latency, one measurement at a time, on the node that runs it.

Isolation: while it measures, every trial worker on its node is paused (SIGSTOP, then SIGCONT), so a
latency figure is never taken beside a fine-tune, whatever the concurrency. Ray titles a worker
process `ray::<task name>` while it runs a task, which is how trial workers are found; several searches
on one machine therefore also pause each other's trials while they measure.

Placement: `--device local` pins the actor to the driver's node. `--device NAME` places it on the node
that carries the Ray custom resource NAME (e.g. an ARM board joined with
`ray start --address=HEAD --num-cpus=0 --resources='{"NAME": 1}'`), one search per device at a time.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import signal
from typing import Iterator

import ray

from autocompress.config import LatencyConfig
from autocompress.measure.latency import LatencyMeter

__all__ = ["Device", "fingerprint", "TRIAL_TASK_NAME", "paused_trials", "trial_pids"]

TRIAL_TASK_NAME = "autocompress_trial"  # the name of the Ray task that runs a trial (see executor.py)


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
    known = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "neon", "asimd")
    isa = [f for f in known if f in flags]
    return {
        "host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "isa": isa, "machine": platform.machine(),
        "onnxruntime": ort.__version__, "threads": threads, "provider": "CPUExecutionProvider",
        "python": platform.python_version(),
    }


def trial_pids() -> list[int]:
    """Processes on this node that are running a trial right now."""
    title = f"ray::{TRIAL_TASK_NAME}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read(len(title) + 1)
        except OSError:
            continue
        if cmd.rstrip(b"\0") == title or cmd.startswith(title + b"\0"):
            pids.append(int(entry))
    return pids


@contextlib.contextmanager
def paused_trials(enabled: bool = True) -> Iterator[list[int]]:
    """Within the block, the trials running on this node are stopped; they continue on exit."""
    stopped: list[int] = []
    try:
        if enabled:
            for pid in trial_pids():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGSTOP)
                    stopped.append(pid)
        yield stopped
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGCONT)


@ray.remote(num_cpus=0, max_concurrency=1)
class Device:
    def __init__(self, settings: LatencyConfig | dict, pause_trials: bool = True) -> None:
        # one meter for the actor's life: its reference probe and its no-long-wait guard span the whole search
        self.meter = LatencyMeter(settings if isinstance(settings, LatencyConfig) else LatencyConfig(**settings))
        self.pause_trials = pause_trials

    def fingerprint(self) -> dict:
        return fingerprint(self.meter.settings.threads)

    def time_graphs(self, graphs: list[tuple[bytes, tuple[int, ...]]]) -> list[float]:
        """Quick timings (ms) of small graphs: the latency model's layer table (latency_model/model.py)."""
        from autocompress.latency_model.layers import time_graph

        s = self.meter.settings
        out = []
        for data, shape in graphs:
            with paused_trials(self.pause_trials):
                out.append(time_graph(data, shape, threads=s.threads, batch=s.batch))
        return out

    def measure(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> dict:
        # trials are paused during each session and run on in the gaps between sessions
        quiet = functools.partial(paused_trials, self.pause_trials)
        return self.meter.measure(onnx_bytes, input_shape, quiet=quiet).as_dict()
