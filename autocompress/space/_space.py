"""Search space: the model's real prunable groups and quantizable layers, with choices from YAML rules."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from autocompress.errors import SpaceError, location
from autocompress.pipeline.prune import PruneGroup, kept_channels
from autocompress.yamlio import read_yaml

__all__ = ["SpaceFile", "SearchSpace", "GroupChoice", "LayerChoice", "BlockChoice", "KEEP", "DROP", "load_space_file",
           "build_space", "DEFAULT_SPACE"]

# shipped inside the package (package data), so a non-editable install has it too; examples to copy: search_spaces/
DEFAULT_SPACE = files("autocompress") / "search_spaces" / "default.yaml"
Precision = Literal["fp32", "fp16", "int8", "int4"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ratios(v: list[float]) -> list[float]:
    if not v:
        raise ValueError("must list at least one ratio, e.g. [0.0, 0.5]")
    bad = [r for r in v if not 0.0 <= r <= 0.95]
    if bad:
        raise ValueError(f"every ratio must be in [0, 0.95], but got {bad[0]}")
    return sorted(set(v))


def _check_precisions(v: list[str]) -> list[str]:
    if not v:
        raise ValueError("must list at least one precision of fp32, fp16, int8, int4")
    return list(dict.fromkeys(v))


class PruneSection(_Strict):
    ratios: list[float] = Field(default=[0.0, 0.25, 0.375, 0.5, 0.625, 0.75])
    # how channels are ranked (pipeline.prune.CRITERIA); more than one: the search picks one per trial
    criteria: list[Literal["l2", "l1", "bn", "taylor"]] = Field(default=["l2"], min_length=1)
    round_to: int = Field(default=8, ge=1, le=256)
    min_channels: int = Field(default=8, ge=1)

    _ratios = field_validator("ratios")(classmethod(lambda cls, v: _check_ratios(v)))


class QuantizeSection(_Strict):
    precisions: list[Precision] = Field(default=["fp32", "int8", "int4"])

    _prec = field_validator("precisions")(classmethod(lambda cls, v: _check_precisions(v)))


class Rule(_Strict):
    match: str = Field(min_length=1)
    ratios: list[float] | None = None
    precisions: list[Precision] | None = None

    @field_validator("ratios")
    @classmethod
    def _r(cls, v: list[float] | None) -> list[float] | None:
        return None if v is None else _check_ratios(v)

    @field_validator("precisions")
    @classmethod
    def _p(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _check_precisions(v)


class DepthSection(_Strict):
    # offer removing whole residual blocks whose shortcut is the identity (pipeline/blocks.py): on small inputs
    # latency follows the number of operators, and only fewer blocks make such a network faster
    blocks: bool = False


class SpaceFile(_Strict):
    prune: PruneSection = PruneSection()
    quantize: QuantizeSection = QuantizeSection()
    depth: DepthSection = DepthSection()
    rules: list[Rule] = Field(default_factory=list)


def _where(err: dict) -> str:
    return location(err["loc"])


def load_space_file(path: str | Path | None) -> SpaceFile:
    """Parse and validate a search-space YAML; every problem is one SpaceError line naming the key and file."""
    path = Path(path) if path is not None else DEFAULT_SPACE
    if path.is_dir():
        raise SpaceError(f"--space {path} is a directory; pass a search-space YAML file, e.g. "
                         "search_spaces/int8-only.yaml")
    if not path.is_file():
        raise SpaceError(f"search space file {str(path)!r} does not exist; pass --space with a search-space YAML file "
                         "(without --space the default shipped in the package is used: "
                         "autocompress/search_spaces/default.yaml)")
    raw = read_yaml(path, SpaceError, "search space") or {}
    if not isinstance(raw, dict):
        raise SpaceError(f"{path} must be a mapping with keys prune, quantize, rules, "
                         f"but it holds a {type(raw).__name__}")
    try:
        return SpaceFile.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = ("unknown key; allowed keys are prune (ratios, round_to, min_channels, criteria), "
                   "quantize (precisions), depth (blocks), rules (match, ratios, precisions)")
        raise SpaceError(f"{_where(err)} in {path}: {msg} (got {err.get('input')!r})") from None


# The space and its choices are frozen: a step that narrows the space (the group checks, the slow channel counts,
# the sensitivity scan) returns a new one, so no step depends on another having changed it first.
@dataclass(frozen=True)
class GroupChoice:
    name: str
    channels: int
    members: tuple[str, ...]
    ratios: list[float]  # one ratio per distinct kept-channel count
    kept: list[int]
    channel_groups: int = 1  # see pipeline.prune.kept_channels


@dataclass(frozen=True)
class LayerChoice:
    name: str
    precisions: list[str]


@dataclass(frozen=True)
class BlockChoice:
    """A residual block the search may remove whole (its layers go with it)."""

    name: str
    layers: tuple[str, ...]


KEEP, DROP = "keep", "drop"


@dataclass(frozen=True)
class SearchSpace:
    groups: list[GroupChoice]
    layers: list[LayerChoice]
    round_to: int
    min_channels: int
    excluded: dict[str, str] = field(default_factory=dict)  # layer -> why it is not searched
    pruning_limits: dict[str, str] = field(default_factory=dict)  # group -> which ratios it lost, and why
    criteria: list[str] = field(default_factory=lambda: ["l2"])  # pruning criteria; one is chosen per trial
    blocks: list[BlockChoice] = field(default_factory=list)  # removable residual blocks (depth: blocks: true)

    def params(self) -> dict[str, list]:
        """Optuna parameter name -> choices, for every choice with more than one option."""
        out: dict[str, list] = {}
        if len(self.criteria) > 1:
            out["criterion"] = list(self.criteria)
        for g in self.groups:
            if len(g.ratios) > 1:
                out[f"prune:{g.name}"] = list(g.ratios)
        for l in self.layers:
            if len(l.precisions) > 1:
                out[f"quant:{l.name}"] = list(l.precisions)
        for b in self.blocks:
            out[f"depth:{b.name}"] = [KEEP, DROP]
        return out

    def dropped(self, params: dict) -> tuple[str, ...]:
        """The blocks Optuna params (or a row's choice columns) remove."""
        return tuple(b.name for b in self.blocks if params.get(f"depth:{b.name}") == DROP)

    def complete(self, params: dict) -> dict:
        """`params` with every block it does not mention kept: configurations made without the blocks in mind (the
        scan's, the allocation's) are enqueued whole, not with their depth left to the sampler."""
        return {**{f"depth:{b.name}": KEEP for b in self.blocks}, **params}

    def decode(self, params: dict) -> tuple[dict[str, float], dict[str, str]]:
        """Optuna params -> (ratio per group, precision per layer), filling fixed choices."""
        ratios = {g.name: float(params.get(f"prune:{g.name}", g.ratios[0])) for g in self.groups}
        precisions = {l.name: str(params.get(f"quant:{l.name}", l.precisions[0])) for l in self.layers}
        return ratios, precisions

    def criterion(self, params: dict) -> str:
        """The pruning criterion of Optuna params (or a row's choice columns)."""
        return str(params.get("criterion", self.criteria[0]))

    def uniform(self, ratio: float, precision: str) -> dict:
        """Params of the uniform configuration closest to (ratio, precision) that the space allows."""
        params = {}
        for g in self.groups:
            if len(g.ratios) > 1:  # the allowed choice that keeps the closest channel count to `ratio`'s own
                target = kept_channels(g.channels, ratio, round_to=self.round_to, min_channels=self.min_channels,
                                        channel_groups=g.channel_groups)
                k, r = min(zip(g.kept, g.ratios, strict=True), key=lambda kr: (abs(kr[0] - target), -kr[0]))
                params[f"prune:{g.name}"] = r
        for l in self.layers:
            if len(l.precisions) > 1:
                params[f"quant:{l.name}"] = precision if precision in l.precisions else l.precisions[0]
        return self.complete(params)

    def describe(self) -> list[dict]:
        rows = [{"kind": "group", "name": g.name, "channels": g.channels, "members": list(g.members),
                 "choices": [f"{r:g}->{k}ch" for r, k in zip(g.ratios, g.kept, strict=True)]} for g in self.groups]
        rows += [{"kind": "layer", "name": l.name, "choices": list(l.precisions)} for l in self.layers]
        if self.criteria != ["l2"]:  # (the default adds no row: the keys of cached scans stay as they were)
            rows.append({"kind": "criterion", "name": "criterion", "choices": list(self.criteria)})
        rows += [{"kind": "block", "name": b.name, "members": list(b.layers), "choices": [KEEP, DROP]}
                 for b in self.blocks]
        return rows


def build_space(spec: SpaceFile, groups: list[PruneGroup], layers: list[str], *, source: str = "",
                blocks: list | tuple = ()) -> SearchSpace:
    """Apply the YAML rules to the model's groups and layers; `blocks` (pipeline.blocks.Block) are offered when the
    YAML's `depth: blocks` is on."""
    def rule_for(name: str, attr: str, default: list):
        value = default
        for rule in spec.rules:
            if fnmatch.fnmatchcase(name, rule.match) and getattr(rule, attr) is not None:
                value = getattr(rule, attr)
        return value

    for rule in spec.rules:
        names = [g.name for g in groups] + layers
        if not any(fnmatch.fnmatchcase(n, rule.match) for n in names):
            raise SpaceError(
                f"rule match {rule.match!r} in {source or 'the search space'} selects no group or layer; "
                f"names look like {', '.join(names[:3])} (`autocompress search --dry-run` lists them)"
            )
    out_groups = []
    for g in groups:
        seen: dict[int, float] = {}
        for r in rule_for(g.name, "ratios", spec.prune.ratios):
            k = kept_channels(g.channels, r, round_to=spec.prune.round_to, min_channels=spec.prune.min_channels,
                              channel_groups=g.channel_groups)
            seen.setdefault(k, r)
        kept = sorted(seen, reverse=True)
        out_groups.append(GroupChoice(g.name, g.channels, g.members, [seen[k] for k in kept], kept, g.channel_groups))
    out_layers = [LayerChoice(l, list(rule_for(l, "precisions", spec.quantize.precisions))) for l in layers]
    out_blocks = [BlockChoice(b.name, tuple(b.layers)) for b in blocks] if spec.depth.blocks else []
    return SearchSpace(out_groups, out_layers, spec.prune.round_to, spec.prune.min_channels,
                       criteria=list(dict.fromkeys(spec.prune.criteria)), blocks=out_blocks)
