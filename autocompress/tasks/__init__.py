"""What is being compressed: models, datasets, and the trained FP32 baseline."""

from autocompress.tasks.data import Splits, load_dataset
from autocompress.tasks.models import build_model, list_models, register_model

__all__ = ["Splits", "load_dataset", "build_model", "list_models", "register_model"]
