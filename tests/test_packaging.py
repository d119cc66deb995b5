"""What a user gets from `pip install`: the default search space ships inside the package, and a non-editable
install runs a search from anywhere. The example spaces in search_spaces/ are valid."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autocompress.space import DEFAULT_SPACE, load_space_file
from tests.conftest import FAST_FLAGS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "search_spaces").glob("*.yaml"))


def test_the_default_space_is_package_data_and_not_copied_at_top_level():
    assert Path(str(DEFAULT_SPACE)).is_relative_to(ROOT / "autocompress")
    assert load_space_file(None) == load_space_file(DEFAULT_SPACE)
    assert not (ROOT / "search_spaces" / "default.yaml").exists()  # one copy, inside the package
    assert (ROOT / "search_spaces" / "README.md").is_file()


def test_the_example_spaces_are_valid_and_differ_from_the_default_where_they_say():
    default = load_space_file(None)
    examples = {p.stem: load_space_file(p) for p in EXAMPLES}
    assert set(examples) == {"int8-only", "prune-only", "keep-stem"}
    assert examples["int8-only"].quantize.precisions == ["fp32", "int8"]
    assert examples["prune-only"].quantize.precisions == ["fp32"]
    assert [(r.match, r.ratios) for r in examples["keep-stem"].rules] == [("conv1", [0.0])]
    for spec in examples.values():  # keys left out take the default's values
        assert spec.prune == default.prune
    readme = (ROOT / "search_spaces" / "README.md").read_text()
    assert all(f"`{p.name}`" in readme for p in EXAMPLES)


def test_the_example_spaces_apply_to_the_demo_network():
    import torch

    from autocompress.pipeline.prune import channel_counts, find_groups
    from autocompress.space import build_space
    from autocompress.tasks.models import build_model

    model = build_model("resnet20", num_classes=10, in_channels=1).eval()
    groups, layers = find_groups(model, torch.randn(1, 1, 32, 32)), list(channel_counts(model))
    spaces = {p.stem: build_space(load_space_file(p), groups, layers, source=str(p)) for p in EXAMPLES}
    stem = {name: next(g for g in space.groups if g.name == "conv1") for name, space in spaces.items()}
    assert stem["keep-stem"].ratios == [0.0] and len(stem["int8-only"].ratios) > 1
    assert {p for layer in spaces["int8-only"].layers for p in layer.precisions} == {"fp32", "int8"}
    assert not any(k.startswith("quant:") for k in spaces["prune-only"].params())


def _site_dirs() -> list[str]:
    """This interpreter's site-packages directories (torch, ray, ... live there)."""
    return [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]


@pytest.mark.slow
def test_a_non_editable_install_runs_a_search_from_outside_the_repository(tmp_path):
    """pip-install a copy of the package (not -e) into a fresh venv and run its `autocompress` entry point.

    The venv is made without system site-packages; a .pth file appends this interpreter's site-packages so torch
    and the other dependencies need not be installed again. Directories added by a .pth line do not get their own
    .pth files processed, so the editable install's finder there stays inactive: `autocompress` can only come from
    the venv. The search uses the test session's cache ($AUTOCOMPRESS_CACHE, tests/conftest.py)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "zz_system_site_packages.pth").write_text("\n".join(_site_dirs()) + "\n")
    # what a source distribution holds (the build writes build/ and *.egg-info beside its sources: not in the repo)
    src = tmp_path / "src"
    shutil.copytree(ROOT / "autocompress", src / "autocompress", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    res = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(src)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(py), "-c", "import autocompress; print(autocompress.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(ROOT), where
    assert (Path(where).parent / "search_spaces" / "default.yaml").is_file()

    res = subprocess.run([str(venv / "bin" / "autocompress"), "search", "--budget", "2", "--out", "run", *FAST_FLAGS],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
    assert (elsewhere / "run" / "report.html").is_file()
