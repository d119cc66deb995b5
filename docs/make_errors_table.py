"""Render docs/errors.md: every documented bad input, run through the real CLI, with the exact message.

    python docs/make_errors_table.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.bad_inputs import CASES  # noqa: E402


def run_case(make_args, tmp: Path) -> tuple[list[str], int, str, Path]:
    """Set the case up in `tmp`, run `autocompress search ARGS --out tmp/run`: (args, exit status, stderr, run dir)."""
    out = tmp / "run"
    args = make_args(tmp)
    res = subprocess.run([sys.executable, "-m", "autocompress.cli", "search", *args, "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    return args, res.returncode, res.stderr.strip(), out


def main() -> None:
    rows = ["# Bad inputs and what autocompress says", "",
            "Each row was produced by `python docs/make_errors_table.py`, which runs the command through the real CLI;",
            ("`tests/test_bad_inputs.py` checks that each still exits with status 2, "
             "prints exactly this one line and no"),
            ("traceback, and leaves no run directory. "
             "`TMP` stands for the temporary directory the case was built in."), "",
            "| what is wrong | command (after `autocompress search`) | message (stderr, exit status 2) |",
            "|---|---|---|"]
    for cid, what, make_args in CASES:
        with tempfile.TemporaryDirectory() as t:
            tmp = Path(t)
            args, code, err, out = run_case(make_args, tmp)
            assert code == 2 and not out.exists(), (cid, code, err)
            shown_args = " ".join(a.replace(t, "TMP") for a in args)
            msg = err.replace(t, "TMP").replace("|", "&#124;")
            rows.append(f"| {what} | `{shown_args}` | `` {msg} `` |")
    (ROOT / "docs" / "errors.md").write_text("\n".join(rows) + "\n")
    print(f"{len(CASES)} cases written to docs/errors.md")


if __name__ == "__main__":
    main()
