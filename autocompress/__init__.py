"""autocompress: search structured pruning and per-layer precision for PyTorch CNNs, measured on the shipped ONNX file.

    import autocompress
    result = autocompress.search(model, train_data, val_data, budget=20)
    print(result.pareto)
    choice = result.pick(max_latency_ms=0.5)
    final = result.finalize(trial=choice.trial)  # a run searched on objects: also model=, train_data=, val_data=

Types that appear in these signatures load lazily (torch and pandas only when one is used).
"""

from autocompress.api import finalize, load_run, resume, search
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

__version__ = "0.1.0"

_LAZY = {  # public types whose modules import torch or pandas: loaded on first use
    "SearchResult": "autocompress.api._result",
    "PickedModel": "autocompress.results.pick",
    "ModelConfig": "autocompress.results.pick",
    "TrialRecord": "autocompress.results.records",
    "FinalModel": "autocompress.engine.final",
    "Figures": "autocompress.engine.final",
    "Preprocessing": "autocompress.tasks.preprocess",
    "DataLike": "autocompress.tasks.datasets",
}

__all__ = ["search", "resume", "load_run", "finalize", "SearchConfig", "TrainConfig", "LatencyConfig", "Budget",
           "parse_budget", *_LAZY, "AutocompressError", "ConfigError", "DataError", "ModelError", "SpaceError",
           "ClusterError", "RunError", "Interrupted", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autocompress' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
