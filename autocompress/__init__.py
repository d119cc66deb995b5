"""autocompress: search structured pruning and per-layer precision for PyTorch CNNs, measured on the shipped ONNX file.

    import autocompress
    result = autocompress.search(model, train_data, val_data, budget=20)
    print(result.pareto)
    choice = result.pick(max_latency_ms=0.5)
"""

from autocompress.config import Budget, LatencyConfig, SearchConfig, TrainConfig, parse_budget
from autocompress.errors import (
    AutocompressError,
    ClusterError,
    ConfigError,
    DataError,
    Interrupted,
    ModelError,
    RunError,
    SpaceError,
)

__all__ = ["search", "load_run", "SearchConfig", "TrainConfig", "LatencyConfig", "Budget", "parse_budget",
           "SearchResult", "PickedModel", "AutocompressError", "ConfigError", "DataError", "ModelError", "SpaceError",
           "ClusterError", "RunError", "Interrupted", "__version__"]
__version__ = "0.1.0"

from autocompress.api import load_run, search  # noqa: E402


def __getattr__(name: str):
    if name in ("SearchResult", "PickedModel"):  # pandas loads only when these are used
        from autocompress.api import _result
        from autocompress.results import pick

        return getattr(_result if name == "SearchResult" else pick, name)
    raise AttributeError(f"module 'autocompress' has no attribute {name!r}")
