"""Ctrl-C or SIGTERM in any stage of a search: one line naming the stage and how to resume, exit 130 (143 for
SIGTERM), the run marked interrupted; `--resume` goes on from the stage it reached, to the end."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import FAST_CONFIG, default_sigint

# The stages run for real: a baseline trained here (an empty cache), the latency model's table, the scan and the
# funnel, on a small space (two ratios, fp32 or int8), a third of the validation images and 8 funnel candidates,
# so that they stay short.
FLAGS = ["--config", str(FAST_CONFIG), "--baseline-epochs", "3", "--finetune-epochs", "0.5", "--no-progress",
         "--latency-model", "--funnel", "8", "--baselines", "fp32,int8", "--max-images", "val=120"]
SPACE = "prune:\n  ratios: [0.0, 0.5]\nquantize:\n  precisions: [fp32, int8]\n"


class _Search:
    """A search in a process of its own, whose log lines (on stderr, as the CLI writes them) are read as they
    come."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "autocompress.cli", "search", *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                                     preexec_fn=default_sigint)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.all: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.all.append(line)
            self.lines.put(line)
        self.lines.put(None)  # the search ended

    def wait_for(self, start: str, timeout: float = 600) -> None:
        seen = []
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line starting {start!r} within {timeout} s; saw {seen[-5:]}") from None
            if line is None:
                self.proc.wait(timeout=60)
                raise AssertionError(f"the search ended ({self.proc.returncode}) before a line starting {start!r}: "
                                     f"{''.join(self.all)[-2000:]}")
            seen.append(line)
            if line.strip().startswith(start):
                return

    def stop(self, sig: int) -> tuple[int, str]:
        self.proc.send_signal(sig)
        self.proc.wait(timeout=300)
        self.reader.join(timeout=60)
        return self.proc.returncode, "".join(self.all)


def _interrupt(run: Path, env: dict, first: bool, line: str, sig: int) -> tuple[int, str]:
    space = run.parent / "space.yaml"
    space.write_text(SPACE)
    args = (["--budget", "2", "--out", str(run), "--space", str(space), *FLAGS] if first
            else ["--resume", str(run), "--no-progress"])
    search = _Search(args, env)
    search.wait_for(line)
    return search.stop(sig)


@pytest.mark.slow
def test_an_interrupt_in_each_stage_exits_with_one_line_and_resume_completes(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "AUTOCOMPRESS_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    stages = [("baseline: ", signal.SIGINT, 130, "the FP32 baseline"),
              ("baseline fp32:", signal.SIGTERM, 143, "the uniform baselines"),
              ("latency model: timing", signal.SIGINT, 130, "the latency model's layer table"),
              ("sensitivity scan:", signal.SIGINT, 130, "the sensitivity scan")]
    for i, (line, sig, code, stage) in enumerate(stages):
        status, err = _interrupt(run, env, i == 0, line, sig)
        last = err.strip().splitlines()[-1]
        assert status == code, err[-2000:]
        assert last == f"stopped: interrupted during {stage}; continue with: autocompress search --resume {run}"
        assert "Traceback" not in err
        meta = json.loads((run / "meta.json").read_text())
        assert (meta["status"], meta["interrupted_in"]) == ("interrupted", stage)
        assert json.loads((run / "config.json").read_text())["budget"]["trials"] == 2
    done = subprocess.run([sys.executable, "-m", "autocompress.cli", "search", "--resume", str(run), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "complete" and "interrupted_in" not in meta and meta["resumed"] == len(stages)
    assert "slow_choices" in meta and meta["sensitivity"]["allocated"] is not None
    table = pd.read_csv(run / "trials.csv")
    assert table["trial"].is_unique and (table["state"] == "COMPLETE").sum() == 2
    assert set(json.loads((run / "baselines.json").read_text())) == {"fp32", "int8"}
    assert (run / "report.html").is_file()
