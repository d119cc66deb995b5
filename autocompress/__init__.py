"""autocompress: search structured pruning and per-layer precision for PyTorch CNNs, measured on the shipped ONNX file."""

from autocompress.config import SearchConfig, parse_budget
from autocompress.errors import AutocompressError

__all__ = ["SearchConfig", "parse_budget", "search", "AutocompressError", "__version__"]
__version__ = "0.1.0"


def search(config: SearchConfig, **kwargs):
    """Run a search (see autocompress.search.runner.search)."""
    from autocompress.search.runner import search as _search

    return _search(config, **kwargs)
