"""The search space: the model's real prunable groups (each checked) and quantizable layers, with choices from YAML
rules, and the sensitivity scan that narrows them."""

from autocompress.space._space import (
    DEFAULT_SPACE,
    DROP,
    KEEP,
    BlockChoice,
    GroupChoice,
    LayerChoice,
    SearchSpace,
    SpaceFile,
    build_space,
    load_space_file,
)

__all__ = ["SpaceFile", "SearchSpace", "GroupChoice", "LayerChoice", "BlockChoice", "KEEP", "DROP", "load_space_file",
           "build_space", "DEFAULT_SPACE"]
