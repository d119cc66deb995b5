"""Property tests for user-input validation: malformed input must give one clean, one-line error.

Contracts checked (see autocompress/space.py and autocompress/config.py):
- load_space_file(path) returns a SpaceFile or raises SpaceError: non-empty, one line, naming the file.
- SearchConfig.model_validate(dict) is valid, or raises ValidationError that config_error() turns into a
  one-line ConfigError naming the offending field.
- parse_budget(text) returns a Budget (trials >= 1 or seconds > 0) or raises a one-line ConfigError.
- build_space raises SpaceError when a rule's match selects nothing.
Anything else (TypeError, ValueError, yaml errors, RecursionError, ...) is a bug and fails the test.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from autocompress.config import Budget, SearchConfig, config_error, parse_budget
from autocompress.errors import ConfigError, SpaceError
from autocompress.pipeline.prune import PruneGroup
from autocompress.space import SpaceFile, build_space, load_space_file

# database=None: no replay of stale examples while the package is being edited; known bugs are pinned
# with @example instead.
FAST = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _one_line(msg: str) -> None:
    assert msg, "error message is empty"
    assert "\n" not in msg and "\r" not in msg, f"error message spans several lines: {msg!r}"


# ---------------------------------------------------------------------------------------------
# Generic junk values
# ---------------------------------------------------------------------------------------------

_numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63), 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 1e308, 5e-324, 0.95, 0.9500001]),
)
_scalars = st.one_of(st.none(), st.booleans(), _numbers, st.text(max_size=20))
_junk = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(), st.booleans()), inner, max_size=4),
    ),
    max_leaves=12,
)
_unknown_key = st.text(min_size=1, max_size=10)


def _maybe(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Half plausible, half junk."""
    return st.one_of(valid, _junk)


def _with_extra(d: dict, extra: dict) -> dict:
    out = dict(d)
    out.update(extra)
    return out


# ---------------------------------------------------------------------------------------------
# 1. Search-space files
# ---------------------------------------------------------------------------------------------

_ratio = st.one_of(st.floats(min_value=0, max_value=0.95), _numbers, st.text(max_size=5))
_ratios = _maybe(st.lists(_ratio, max_size=5))
_precision = st.one_of(st.sampled_from(["fp32", "int8", "int4", "FP32", "int2", "", "fp16"]), _scalars)
_precisions = _maybe(st.lists(_precision, max_size=4))


def _section(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    return _maybe(
        st.builds(
            _with_extra,
            st.fixed_dictionaries({}, optional=fields),
            st.dictionaries(_unknown_key, _junk, max_size=2) | st.just({}),
        )
    )


_prune = _section({
    "ratios": _ratios,
    "round_to": _maybe(st.integers(min_value=-10, max_value=300)),
    "min_channels": _maybe(st.integers(min_value=-10, max_value=100)),
})
_quantize = _section({"precisions": _precisions})
_rule = _section({
    "match": _maybe(st.sampled_from(["conv1", "layer*", "*", "", "[", "fc"])),
    "ratios": st.one_of(st.none(), _ratios),
    "precisions": st.one_of(st.none(), _precisions),
})
_space_doc = st.one_of(
    _section({"prune": _prune, "quantize": _quantize, "rules": _maybe(st.lists(_rule, max_size=3))}),
    _junk,  # non-mapping top levels, too
)


def _dump(doc) -> str:
    return yaml.safe_dump(doc, allow_unicode=True, default_flow_style=None)


# YAML fragments that exercise the parser and constructors: tags, timestamps, anchors, merges,
# complex keys, flow/block mixes, control characters, BOMs, documents markers...
_FRAGMENTS = [
    "prune:", "quantize:", "rules:", "ratios:", "round_to:", "min_channels:", "precisions:", "match:",
    "\n", "\n  ", "\n    ", "- ", ": ", ", ", "[", "]", "{", "}", "? ", "&a ", "*a", "<<: ", "<<: *a",
    "!!int ", "!!float ", "!!str ", "!!bool ", "!!binary ", "!!timestamp ", "!!set ", "!!omap ", "!!pairs ",
    "!!null ", "!!seq ", "!!map ", "!!merge ", "!!python/object:os.system ",
    "!foo ", "2001-02-30", "2001-12-14", "2001-12-14t21:59:43.10-05:00", "1_000", "0x1F", "0o17", ".nan", ".inf",
    "-.inf", "1e400", "~", "null", "yes", "no", "on", "'", '"', "\\", "#", "---", "...", "|", ">", "%YAML 1.1",
    "\t", "\x00", "\x07", "\x1b", "\ufeff", "\u2028", "\x85", "é", "💥", "fp32", "int8", "int4", "0.5", "-1", "abc",
]
_yaml_text = st.one_of(
    st.lists(st.sampled_from(_FRAGMENTS), max_size=20).map("".join),
    st.text(max_size=60),
    st.builds(lambda doc, junk: _dump(doc) + junk, _space_doc,
              st.lists(st.sampled_from(_FRAGMENTS), max_size=4).map("".join)),
)


@pytest.fixture(scope="module")
def space_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spaces") / "space.yaml"


def _check_load(path: Path, data: bytes):
    path.write_bytes(data)
    try:
        spec = load_space_file(path)
    except SpaceError as e:
        msg = str(e)
        _one_line(msg)
        assert str(path) in msg, f"message does not name the file: {msg!r}"
        return None
    assert isinstance(spec, SpaceFile)
    # A loaded spec must be usable: ratios in range, precisions known, round_to sane.
    assert spec.prune.ratios and all(0.0 <= r <= 0.95 for r in spec.prune.ratios)
    assert 1 <= spec.prune.round_to <= 256 and spec.prune.min_channels >= 1
    assert spec.quantize.precisions and set(spec.quantize.precisions) <= {"fp32", "int8", "int4"}
    for rule in spec.rules:
        assert rule.match
        assert rule.ratios is None or (rule.ratios and all(0.0 <= r <= 0.95 for r in rule.ratios))
        assert rule.precisions is None or (rule.precisions and set(rule.precisions) <= {"fp32", "int8", "int4"})
    return spec


@FAST
@given(doc=_space_doc)
@example(doc={"\n": None})  # unknown key with a newline: the key is printed raw -> two-line message
@example(doc={"prune": {"round_to": "x\ny"}})
def test_space_file_structured_documents(space_path: Path, doc) -> None:
    """Well-formed YAML with wrong types / values / unknown keys at every level."""
    _check_load(space_path, _dump(doc).encode())


@FAST
@given(text=_yaml_text)
@example(text="")  # empty file -> defaults
@example(text="a: 2001-02-30")  # timestamp constructor raises ValueError
@example(text="prune: !!int abc")  # int constructor raises ValueError
@example(text="prune: !!float x")  # float constructor raises ValueError
@example(text="!!int ")  # int/float constructors raise IndexError on an empty scalar
@example(text="!!bool ")  # bool constructor raises KeyError('')
@example(text="!!timestamp ")  # timestamp constructor raises AttributeError
@example(text="\x00")  # yaml.reader.ReaderError, whose str() spans two lines
def test_space_file_random_text(space_path: Path, text: str) -> None:
    """Random and YAML-ish text: syntax errors, tags, timestamps, control characters."""
    _check_load(space_path, text.encode("utf-8", "surrogatepass"))


@FAST
@given(data=st.one_of(st.binary(max_size=64),
                     st.builds(lambda a, b: a + b, _yaml_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
                               st.binary(max_size=8))))
@example(data=b"\xff")  # not UTF-8 -> UnicodeDecodeError from Path.read_text
def test_space_file_binary(space_path: Path, data: bytes) -> None:
    """Binary-ish files (not UTF-8, NUL bytes, BOMs)."""
    _check_load(space_path, data)


@settings(FAST, max_examples=30)
@given(depth=st.integers(min_value=1, max_value=1200), kind=st.sampled_from(["flow_list", "flow_map", "block"]))
@example(depth=1000, kind="flow_list")  # RecursionError from yaml's composer
def test_space_file_deeply_nested(space_path: Path, depth: int, kind: str) -> None:
    if kind == "flow_list":
        text = "prune:\n  ratios: " + "[" * depth + "0.5" + "]" * depth
    elif kind == "flow_map":
        text = "rules: " + "{a: " * depth + "1" + "}" * depth
    else:  # block indentation grows quadratically: keep it small
        depth = min(depth, 150)
        text = "prune:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(depth)) + "  " * (depth + 1) + "x"
    _check_load(space_path, text.encode())


def test_space_file_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpaceError) as ei:
        load_space_file(missing)
    _one_line(str(ei.value))
    assert str(missing) in str(ei.value)


def test_default_space_loads() -> None:
    assert isinstance(load_space_file(None), SpaceFile)


# build_space: a rule whose match selects nothing is a SpaceError; otherwise a consistent space.

_names = st.text(alphabet="abcdefghij0123456789._", min_size=1, max_size=8)


@FAST
@given(
    group_names=st.lists(_names, max_size=4, unique=True),
    layers=st.lists(_names, max_size=4, unique=True),
    matches=st.lists(st.one_of(_names, st.sampled_from(["*", "?", "a*", "[", "[!a]*", "conv*"])),
                     min_size=1, max_size=3),
    channels=st.integers(min_value=1, max_value=512),
)
def test_build_space_rule_matching_nothing(group_names, layers, matches, channels) -> None:
    import fnmatch

    groups = [PruneGroup(name=n, channels=channels, members=(n,)) for n in group_names] if group_names else []
    spec = SpaceFile.model_validate({"rules": [{"match": m, "ratios": [0.0, 0.5]} for m in matches]})
    names = group_names + layers
    dead = [m for m in matches if not any(fnmatch.fnmatchcase(n, m) for n in names)]
    try:
        space = build_space(spec, groups, layers, source="space.yaml")
    except SpaceError as e:
        assert dead, f"SpaceError although every rule matches something: {e}"
        _one_line(str(e))
        assert "space.yaml" in str(e) and repr(dead[0]) in str(e)
        return
    assert not dead, f"rule(s) {dead} select nothing but build_space did not raise"
    assert [g.name for g in space.groups] == group_names and [l.name for l in space.layers] == layers
    for g in space.groups:
        assert g.ratios and len(g.ratios) == len(g.kept) and all(1 <= k <= g.channels for k in g.kept)


# ---------------------------------------------------------------------------------------------
# 2. SearchConfig + config_error
# ---------------------------------------------------------------------------------------------

_train = _section({
    "epochs": _maybe(st.floats(min_value=-1, max_value=2000)),
    "lr": _maybe(st.floats(min_value=-1, max_value=20)),
    "batch_size": _maybe(st.integers(min_value=-1, max_value=5000)),
    "kd_alpha": _maybe(st.floats(min_value=-1, max_value=2)),
    "temperature": _maybe(st.floats(min_value=-1, max_value=200)),
})
_latency = _section({
    "batch": _maybe(st.integers(min_value=-1, max_value=2000)),
    "threads": _maybe(st.integers(min_value=-1, max_value=300)),
    "warmup": _maybe(st.integers(min_value=-5, max_value=100)),
    "min_reps": _maybe(st.integers(min_value=-5, max_value=100)),
    "max_reps": _maybe(st.integers(min_value=-5, max_value=2000)),
    "ci_target": _maybe(st.floats(min_value=-1, max_value=2)),
    "sessions": _maybe(st.integers(min_value=-1, max_value=30)),
    "max_seconds": _maybe(st.floats(min_value=-1, max_value=100)),
})
_budget = st.one_of(
    _section({
        "trials": _maybe(st.integers(min_value=-5, max_value=100)),
        "seconds": _maybe(st.floats(min_value=-5, max_value=1e6)),
    }),
    st.integers(min_value=-5, max_value=100),  # a count or a duration, as on the CLI: SearchConfig(budget=12)
    st.sampled_from(["30m", "1h30m", "90s", "5x", "0", "", "12"]),
)
_config = st.one_of(
    _section({
        "model": _maybe(st.sampled_from(["resnet20", "mobilenetv2", ""])),
        "dataset": _maybe(st.sampled_from(["digits", "cifar10", ""])),
        "input_size": _maybe(st.integers(min_value=0, max_value=2000)),
        "data_dir": _maybe(st.sampled_from([None, "data", ""])),
        "download": _maybe(st.booleans()),
        "latency_cache": _maybe(st.booleans()),
        "space": _maybe(st.sampled_from([None, "search_spaces/int8-only.yaml", "", "a\x00b"])),
        "budget": _budget,
        "out": _maybe(st.sampled_from([None, "reports/x", ""])),
        "run_name": _maybe(st.one_of(st.none(), st.text(max_size=10))),
        "seed": _junk,
        "ray_address": _maybe(st.sampled_from([None, "auto", "127.0.0.1:6379"])),
        "concurrency": _maybe(st.integers(min_value=-1, max_value=300)),
        "sampler": _maybe(st.sampled_from(["tpe", "nsga2", "random", "TPE", "grid"])),
        "warm_start": _maybe(st.booleans()),
        "baseline": _train,
        "finetune": _train,
        "latency": _latency,
        "trial_timeout_s": _maybe(st.floats(min_value=-10, max_value=1e5)),
    }),
    _junk,
)


@FAST
@given(cfg=_config)
@example(cfg={"budget": {}})
@example(cfg={"budget": {"trials": 3, "seconds": 5.0}})
@example(cfg={"budget": "5x"})
@example(cfg={"budget": True})
@example(cfg={"finetune": {"epochs": 2}})  # a partial section keeps the other defaults
@example(cfg={5: 1})
@example(cfg=[])
@example(cfg={False: None})
@example(cfg={"a\nb": 1})  # unknown key with a newline -> two-line ConfigError
@example(cfg={"latency": {"x\ny": 1}})
@example(cfg={9223372036854775808: None})  # pydantic reports a key past int64 as a string
@example(cfg={-9223372036854775809: None})
def test_search_config_validation(cfg) -> None:
    try:
        parsed = SearchConfig.model_validate(cfg)
    except ValidationError as e:
        err = config_error(e, "cfg.yaml")
        assert isinstance(err, ConfigError)
        msg = str(err)
        _one_line(msg)
        assert " in cfg.yaml: " in msg, msg
        where = msg.split(" in cfg.yaml: ", 1)[0]
        assert where, msg
        if where != "(top level)":
            assert isinstance(cfg, dict), msg
            # pydantic reports a bool key as its int (False -> 0); keys may also be shown as repr().
            names = {str(k) for k in cfg} | {repr(k) for k in cfg} | {str(int(k)) for k in cfg if isinstance(k, bool)}
            assert any(where == n or where.startswith(n + ".") for n in names), (
                f"message names {where!r}, which is not a key of the input: {msg!r}")
        return
    assert isinstance(parsed, SearchConfig)
    b = parsed.budget
    assert (b.trials is None) != (b.seconds is None)
    assert (b.trials is not None and b.trials >= 1) or (b.seconds is not None and b.seconds > 0)


# ---------------------------------------------------------------------------------------------
# 3. parse_budget
# ---------------------------------------------------------------------------------------------

_budget_text = st.one_of(
    st.text(max_size=20),
    st.integers(),
    st.from_regex(r"\A\s*\d{0,4}(\.\d{0,3})?[hms]?(\d{0,3}(\.\d{0,2})?[ms]?)?\s*\Z"),
    st.lists(st.sampled_from(list("0123456789hmsHMS. \t-+e_") + ["²", "٣", "½", "Ⅻ", "１", "\u00a0", "\x00", "\n"]),
             max_size=12).map("".join),
    st.builds(lambda n, unit: "9" * n + unit, st.integers(min_value=1, max_value=6000),
              st.sampled_from(["", "s", "m", "h"])),
)


@FAST
@given(text=_budget_text)
@example(text="0")
@example(text="")
@example(text="1h30m")
@example(text="²")  # str.isdigit() is true, int() rejects it -> ValueError
@example(text="9" * 5000)  # int() refuses > 4300 digits -> ValueError
@example(text="9" * 400 + "h")  # float overflows to inf -> Budget(seconds=inf), str(budget) raises OverflowError
def test_parse_budget(text) -> None:
    try:
        budget = parse_budget(text)
    except ConfigError as e:
        _one_line(str(e))
        return
    assert isinstance(budget, Budget)
    if budget.trials is not None:
        assert budget.seconds is None and budget.trials >= 1
    else:
        assert budget.seconds is not None and budget.seconds > 0
        assert math.isfinite(budget.seconds), f"parse_budget({text!r}) gave an infinite wall-clock budget"
    str(budget)  # the CLI prints it


@pytest.mark.parametrize("text,expected", [("40", Budget(trials=40)), ("90s", Budget(seconds=90)),
                                           ("10m", Budget(seconds=600)), ("1h30m", Budget(seconds=5400))])
def test_parse_budget_accepts_documented_forms(text: str, expected: Budget) -> None:
    assert parse_budget(text) == expected
