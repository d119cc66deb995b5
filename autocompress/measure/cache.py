"""A latency cache keyed by the artifact's graph structure, per device and latency settings.

Latency depends on the graph (operators, attributes, tensor shapes and types), not on weight values,
so two artifacts with the same structure run at the same speed on the same device. The cache lets a
repeated configuration skip a measurement, and gives a repeated search (same seed, same machine) the
same objective values, so the sampler proposes the same configurations. Rows say where a figure
came from (`latency_source`: measured, or cache with the hash of the run that measured it).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import onnx

from autocompress.fileio import atomic_write_text

__all__ = ["cache_dir", "graph_hash", "LatencyCache"]


def cache_dir() -> Path:
    """`$AUTOCOMPRESS_CACHE` or ~/.cache/autocompress: baselines, sensitivity scans, latencies, the probe."""
    root = os.environ.get("AUTOCOMPRESS_CACHE") or Path.home() / ".cache" / "autocompress"
    return Path(root)


def graph_hash(onnx_bytes: bytes) -> str:
    """sha256 of the graph's structure: nodes (op, attributes, wiring), initializer names/dims/types, I/O."""
    proto = onnx.load_from_string(onnx_bytes)
    g = proto.graph
    h = hashlib.sha256()
    for node in g.node:
        attrs = sorted((a.name, onnx.helper.get_attribute_value(a)) for a in node.attribute)
        h.update(repr((node.op_type, node.domain, list(node.input), list(node.output), attrs)).encode())
    for init in g.initializer:
        h.update(repr((init.name, list(init.dims), init.data_type)).encode())
    for vi in list(g.input) + list(g.output):
        h.update(vi.SerializeToString())
    h.update(repr([(o.domain, o.version) for o in proto.opset_import]).encode())
    return h.hexdigest()


class LatencyCache:
    def __init__(self, root: Path, device: dict, settings: dict) -> None:
        # v3: sessions spread out, figures from the quiet ones, sessions beside other load taken again
        key = json.dumps({"device": device, "settings": settings, "v": 3}, sort_keys=True)
        self.dir = root / "latency" / hashlib.sha256(key.encode()).hexdigest()[:16]

    def get(self, ghash: str) -> dict | None:
        path = self.dir / f"{ghash}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def put(self, ghash: str, result: dict) -> None:
        atomic_write_text(self.dir / f"{ghash}.json", json.dumps(result))
