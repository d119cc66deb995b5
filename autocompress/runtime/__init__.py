"""Where work runs: the Ray cluster (local or joined), the trial executor and the device actor that measures latency."""
