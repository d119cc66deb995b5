"""Bad input found by machine: generated bad command lines and bad keyword arguments of `autocompress.search` each
get one line (exit 2 on the CLI, an AutocompressError in Python), never a traceback, and write nothing.

Every input generated here is bad by construction (a value outside its documented range, a word where a number
goes, an unknown key), so no generated case can start a search. The search-space YAML, config values and budgets
are covered further by tests/test_validation_properties.py.
"""

from __future__ import annotations

import contextlib
import io
import os
import string
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset

import autocompress
from autocompress.cli import main
from autocompress.config import SearchConfig

FAST = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

_WORDS = st.text(alphabet="bcdegjklopqrtuvwxyz", min_size=1, max_size=8)  # no number, no unit, not nan/inf
_NON_POSITIVE = st.integers(max_value=0)


def _text(ints: st.SearchStrategy[int]) -> st.SearchStrategy[str]:
    return ints.map(str)


_SPLITS = ("train", "val", "test", "calib")
_BAD_CAPS = st.one_of(
    st.tuples(_WORDS.filter(lambda w: w not in _SPLITS), st.integers(1, 100)).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.tuples(st.sampled_from(_SPLITS), st.one_of(_text(_NON_POSITIVE), _WORDS.filter(lambda w: w not in ("all",))))
    .map(lambda kv: f"{kv[0]}={kv[1]}"),
)

# (flag, a bad value): each outside what the flag documents
BAD_FLAGS = st.one_of(
    st.tuples(st.just("--budget"), st.one_of(_text(_NON_POSITIVE), _WORDS)),
    st.tuples(st.just("--concurrency"), st.one_of(_text(_NON_POSITIVE), _text(st.integers(min_value=257)), _WORDS)),
    st.tuples(st.just("--seed"), _WORDS),
    st.tuples(st.just("--max-images"), _BAD_CAPS),
    st.tuples(st.sampled_from(["--mean", "--std"]), _WORDS),
    st.tuples(st.just("--finetune-epochs"), st.one_of(st.floats(max_value=-1e-6).map(repr),
                                                      st.floats(min_value=1000.5, max_value=1e9).map(repr), _WORDS)),
    st.tuples(st.just("--input-size"), st.one_of(_text(st.integers(max_value=7)),
                                                 _text(st.integers(min_value=1025)))),
    st.tuples(st.just("--data-workers"), st.one_of(_text(st.integers(max_value=-1)),
                                                   _text(st.integers(min_value=65)))),
    st.tuples(st.just("--confirm-rounds"), _text(st.integers(min_value=21))),
    st.tuples(st.just("--target-latency-ms"), st.floats(max_value=0).map(repr)),
    st.tuples(st.just("--sampler"), _WORDS.filter(lambda w: w not in ("tpe", "nsga2", "random", "grid"))),
    st.tuples(st.just("--augment"), _WORDS.filter(lambda w: w not in ("auto", "shift", "none"))),
    st.tuples(st.sampled_from(["--baseline-epochs", "--early-stop", "--multi-fidelity"]), _WORDS),
)


@contextlib.contextmanager
def _empty_dir():
    """A fresh working directory for one example: whatever the command writes lands here."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory() as d:
        os.chdir(d)
        try:
            yield Path(d)
        finally:
            os.chdir(old)


def _one_error_line(text: str) -> None:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    assert "Traceback" not in text


@FAST
@given(bad=BAD_FLAGS, first=st.booleans())
def test_a_bad_flag_is_one_line_exit_2_and_writes_nothing(bad, first):
    flag, value = bad
    args = ["search", f"{flag}={value}", "--no-progress"] if first else ["search", "--no-progress", f"{flag}={value}"]
    err = io.StringIO()
    with _empty_dir() as d, contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
        try:
            main(args)
        finally:
            written = list(d.iterdir())
    assert e.value.code == 2, err.getvalue()
    _one_error_line(err.getvalue())
    assert written == []


@FAST
@given(junk=st.text(alphabet=string.ascii_letters + ":[]{}-, ", min_size=1, max_size=40))
def test_a_config_file_of_junk_is_one_line_exit_2(junk):
    err = io.StringIO()
    with _empty_dir() as d, contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
        (d / "c.yaml").write_text(f"{junk}: 1\nbudget: 0\n")  # budget 0: bad whatever the first key reads as
        main(["search", "--config", str(d / "c.yaml"), "--no-progress"])
    assert e.value.code == 2, err.getvalue()
    _one_error_line(err.getvalue())


def _tiny() -> tuple[nn.Module, TensorDataset]:
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    return model, TensorDataset(torch.randn(16, 1, 12, 12), torch.arange(16) % 4)


_FIELDS = tuple(SearchConfig.model_fields)
# keyword arguments of autocompress.search that are bad by construction
BAD_OVERRIDES = st.one_of(
    st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True).filter(lambda k: k not in _FIELDS + ("model",)),
                    st.integers(), min_size=1, max_size=2),
    st.fixed_dictionaries({"concurrency": st.one_of(_NON_POSITIVE, st.integers(min_value=257), _WORDS)}),
    st.fixed_dictionaries({"budget": st.one_of(_NON_POSITIVE, _WORDS)}),
    st.fixed_dictionaries({"finetune": st.one_of(
        st.fixed_dictionaries({"epochs": st.floats(max_value=-1e-6)}),
        st.dictionaries(_WORDS.filter(lambda w: w not in ("epochs", "lr")), st.integers(), min_size=1, max_size=2),
        _WORDS)}),
    st.fixed_dictionaries({"max_images": st.one_of(
        st.fixed_dictionaries({"train": _NON_POSITIVE}), st.dictionaries(_WORDS, st.integers(1, 9), min_size=1),
        _WORDS)}),
    st.fixed_dictionaries({"input_size": st.one_of(st.integers(max_value=7), st.integers(min_value=1025))}),
    st.fixed_dictionaries({"sampler": _WORDS.filter(lambda w: w not in ("tpe", "nsga2", "random", "grid"))}),
    st.fixed_dictionaries({"config": st.one_of(st.integers(), _WORDS, st.dictionaries(_WORDS, st.integers()))}),
)


@FAST
@given(overrides=BAD_OVERRIDES)
def test_bad_keyword_arguments_of_search_are_one_line_and_write_nothing(overrides):
    model, data = _tiny()
    with _empty_dir() as d:
        with pytest.raises(autocompress.AutocompressError) as e:
            autocompress.search(model, data, data, out=d / "run", progress=False, log=lambda _: None, **overrides)
        assert list(d.iterdir()) == []
    assert str(e.value) and "\n" not in str(e.value)
