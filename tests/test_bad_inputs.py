"""Every bad input documented in docs/errors.md: exit 2, that exact one line, no traceback, no run directory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.bad_inputs import CASES
from tests.conftest import run_cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


def _documented() -> dict[str, str]:
    """what-is-wrong -> message, from the table in docs/errors.md."""
    out = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\| (.+?) \| `.*` \| `` (.*) `` \|$", line)
        if m:
            out[m.group(1)] = m.group(2).replace("&#124;", "|")
    return out


def test_the_doc_lists_every_case_and_at_least_twelve():
    documented = _documented()
    assert len(documented) >= 12
    assert {what for _, what, _ in CASES} == set(documented)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, case):
    _, what, make_args = case
    out = tmp_path / "run"
    res = run_cli("search", *make_args(tmp_path), "--out", str(out), timeout=600)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr + res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert not out.exists()
    assert lines[0].replace(str(tmp_path), "TMP") == _documented()[what]
