"""Which ops are quantized together: the regions of non-layer ops between layers, shared by both graphs."""

from __future__ import annotations

from typing import Hashable, TypeVar

_T = TypeVar("_T", bound=Hashable)


def _regions(links: list[tuple[_T, list[_T]]]) -> dict[_T, _T]:
    """Union-find over (item, the items it takes inputs from) pairs: each item -> the representative of its region,
    the items connected to it through inputs (inputs that are not items themselves are ignored). Both halves of the
    quantization use it for the regions of non-layer ops (Add, pooling, ...) between layers:
    `fx_graph._insert_ort_fake_quant` on the torch.fx graph, `ort._nodes_to_exclude` on the ONNX graph, so the
    fine-tune fake-quantizes what ORT quantizes."""
    parent: dict[_T, _T] = {}

    def find(a: _T) -> _T:
        while parent.setdefault(a, a) != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    members = {n for n, _ in links}
    for n, inputs in links:
        find(n)
        for a in inputs:
            if a in members:
                parent[find(n)] = find(a)
    return {n: find(n) for n in members}
