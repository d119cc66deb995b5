"""User errors through the real CLI, in a fresh process: exit status 2, one `error: ...` line on stderr that
names the problem, no traceback, nothing written, and no training (every one fails in validation)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli

TIMEOUT = 120  # generous for a loaded machine; a default baseline training alone takes far longer


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    """A cache of our own: a trained baseline would land in cache/baselines."""
    c = tmp_path / "cache"
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(c))
    return c


def _assert_user_error(res, pattern: str, cache: Path) -> str:
    out = res.stdout + res.stderr
    assert "Traceback" not in out, res.stderr[-3000:]
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    line = lines[0]
    assert line.startswith("error: ") and line.strip() != "error:", line
    assert re.search(pattern, line), f"{pattern!r} not in {line!r}"
    assert not (cache / "baselines").exists(), "a baseline was trained before the error"
    return line


def _search(tmp_path: Path, *args: str):
    run = tmp_path / "run"
    t0 = time.perf_counter()
    res = run_cli("search", "--out", str(run), *args, timeout=TIMEOUT)
    seconds = time.perf_counter() - t0
    assert not run.exists(), "a run directory was created"
    return res, seconds


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--budget", "2", "--model", "nosuchnet"],
         r"^error: unknown model 'nosuchnet'; use one of resnet20, resnet56"),
        (["--budget", "2", "--model", "nosuchpkg.mod:build"],
         r"^error: cannot import 'nosuchpkg\.mod' for --model 'nosuchpkg\.mod:build': ModuleNotFoundError"),
        (["--budget", "2", "--dataset", "nosuchdata"],
         r"^error: unknown dataset 'nosuchdata'; "
         r"use one of: digits, cifar10, cifar100, mnist, fashionmnist, svhn, imagefolder$"),
        (["--budget", "abc"], r"^error: --budget 'abc' is neither a trial count nor a duration"),
        (["--budget", "0"], r"^error: --budget must be at least 1 trial, but got '0'"),
        (["--budget", "5x"], r"^error: --budget '5x' is neither a trial count nor a duration"),
        (["--budget", "2", "--ray-address", "127.0.0.1:1"],
         r"^error: cannot reach a Ray cluster at 127\.0\.0\.1:1 .*--ray-address"),
        (["--budget", "2", "--ray-address", "nonsense"], r"^error: --ray-address 'nonsense' is not HOST:PORT"),
        (["--budget", "2", "--sampler", "bayes"], r"^error: sampler in the command line: .*'tpe'.*\(got 'bayes'\)"),
    ],
    ids=["unknown-model", "module-not-importable", "unknown-dataset", "budget-abc", "budget-0", "budget-5x",
         "ray-unreachable", "ray-not-host-port", "bad-sampler"],
)
def test_search_flag_errors(tmp_path, cache, args, pattern):
    res, seconds = _search(tmp_path, *args)
    _assert_user_error(res, pattern, cache)
    assert seconds < 60, f"validation took {seconds:.0f} s"


def test_missing_space_file(tmp_path, cache):
    missing = tmp_path / "nope.yaml"
    res, _ = _search(tmp_path, "--budget", "2", "--space", str(missing))
    line = _assert_user_error(res, r"^error: search space file '.*nope\.yaml' does not exist; pass --space", cache)
    assert str(missing) in line


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("prune:\n  ratios: [0.0, 0.5\n", r"is not valid YAML at line \d+: .*fix the syntax"),
        ("prune:\n  ratios: [0.0, 0.5]\nquantise:\n  precisions: [int8]\n",
         r"quantise in .*: unknown key; allowed keys are prune"),
        ("prune:\n  ratio: [0.5]\n", r"prune\.ratio in .*: unknown key"),
        ("prune:\n  ratios: [0.0, 1.2]\n", r"prune\.ratios in .*: every ratio must be in \[0, 0\.95\], but got 1\.2"),
        ("rules:\n  - match: conv1\n    ratios: [0.0, 1.2]\n",
         r"rules\.0\.ratios in .*: every ratio must be in \[0, 0\.95\], but got 1\.2"),
        ("quantize:\n  precisions: [int2]\n", r"quantize\.precisions\.0 in .*'int2'"),
        ("- prune\n- rules\n", r"must be a mapping with keys prune, quantize, rules, but it holds a list"),
    ],
    ids=["broken-yaml", "unknown-top-key", "unknown-nested-key", "ratio-1.2", "rule-ratio-1.2", "bad-precision",
         "not-a-mapping"],
)
def test_bad_space_file(tmp_path, cache, text, pattern):
    space = tmp_path / "space.yaml"
    space.write_text(text)
    res, seconds = _search(tmp_path, "--budget", "2", "--space", str(space))
    line = _assert_user_error(res, pattern, cache)
    assert str(space) in line  # names the file
    assert seconds < 60, f"validation took {seconds:.0f} s"


def test_space_rule_matching_nothing(tmp_path, cache):
    space = tmp_path / "space.yaml"
    space.write_text("rules:\n  - match: \"layer9.*\"\n    ratios: [0.0]\n")
    res, seconds = _search(tmp_path, "--budget", "2", "--space", str(space))
    line = _assert_user_error(res, r"^error: rule match 'layer9\.\*' in .* selects no group or layer", cache)
    assert str(space) in line
    assert seconds < 60, f"validation took {seconds:.0f} s: the rule must be checked before the baseline trains"


def test_run_dir_that_exists_and_is_not_empty(tmp_path, cache):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("x")
    res = run_cli("search", "--budget", "2", "--out", str(run), timeout=TIMEOUT)
    _assert_user_error(res, r"^error: run directory '.*run' already exists and is not empty", cache)
    assert sorted(p.name for p in run.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("command", ["report", "pick"])
@pytest.mark.parametrize("exists", [True, False], ids=["empty-dir", "no-dir"])
def test_report_and_pick_on_a_directory_that_is_not_a_run(tmp_path, cache, command, exists):
    d = tmp_path / "notarun"
    if exists:
        d.mkdir()
    extra = ["--max-latency-ms", "5"] if command == "pick" else []
    res = run_cli(command, str(d), *extra, timeout=TIMEOUT)
    if exists:
        _assert_user_error(res, r"^error: .*notarun has no meta\.json; "
                                r"is it a run directory written by `autocompress search`\?", cache)
        assert list(d.iterdir()) == []  # nothing written into it
    else:
        _assert_user_error(res, r"^error: run directory '.*notarun' does not exist", cache)
        assert not d.exists()


@pytest.mark.parametrize("value", ["0", "-1"])
def test_pick_max_latency_must_be_positive(tmp_path, cache, value):
    d = tmp_path / "notarun"
    d.mkdir()
    res = run_cli("pick", str(d), "--max-latency-ms", value, timeout=TIMEOUT)
    _assert_user_error(res, rf"^error: --max-latency-ms must be positive, but got {value}(\.0)?$", cache)
    assert list(d.iterdir()) == []


def test_layers_that_cannot_be_quantized_are_left_out_and_listed(tmp_path):
    import json
    from pathlib import Path

    fixture = Path(__file__).parent / "fixtures" / "partial_models.py"
    res = run_cli("search", "--budget", "2", "--model", f"{fixture}:build", "--dry-run", timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr[-2000:]
    plan = json.loads(res.stdout)
    layers = {r["name"] for r in plan["search_space"] if r["kind"] == "layer"}
    assert layers == {"conv1", "fc"}  # the opaque conv gets no precision choice...
    assert "opaque" in plan["excluded_layers"]  # ...and the plan says why
    assert "no Conv/Gemm node" in plan["excluded_layers"]["opaque"]


def test_the_budget_defaults_to_the_search_configs_and_resume_names_a_missing_run(tmp_path, cache):
    import json

    from autocompress.config import SearchConfig

    res = run_cli("search", "--dry-run", "--out", str(tmp_path / "run"), timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["config"]["budget"] == SearchConfig().budget.model_dump(mode="json")
    assert not (tmp_path / "run").exists()
    res = run_cli("search", "--resume", str(tmp_path / "nowhere"), timeout=TIMEOUT)
    _assert_user_error(res, r"^error: --resume '.*nowhere': no such run directory", cache)


def test_verbose_shows_the_traceback_of_the_users_code_then_the_one_line(tmp_path, cache):
    from tests.bad_inputs import RAISING_MODEL

    (tmp_path / "raises.py").write_text(RAISING_MODEL)
    out = tmp_path / "run"
    res = run_cli("search", "--budget", "2", "--model", f"{tmp_path / 'raises.py'}:build", "--out", str(out),
                  "--verbose", timeout=TIMEOUT)
    assert res.returncode == 2 and not out.exists()
    assert "Traceback" in res.stderr and "raise ValueError('no such depth: 7')" in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: --model '.*raises.py:build': build\(\) raised ValueError: no such depth: 7; fix the "
                        r"function \(--verbose shows the traceback\)", last), last


def test_ctrl_c_outside_a_search_exits_130_without_a_traceback(monkeypatch, capfd):
    """The CLI's handler names typer's Abort as typer has it (the click it vendors has none): evaluating the handler
    raised an AttributeError that hid the interrupt, or any error, behind it."""
    import autocompress.tasks.models
    from autocompress.cli import main

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(autocompress.tasks.models, "list_models", interrupted)
    with pytest.raises(SystemExit) as e:
        main(["models"])
    assert e.value.code == 130
    err = capfd.readouterr().err
    assert "Traceback" not in err and "AttributeError" not in err
