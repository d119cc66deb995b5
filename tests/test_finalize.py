"""`autocompress finalize`: a searched model rebuilt from the baseline, fine-tuned for longer, shipped and measured
like a trial; resumable after Ctrl-C or a kill; one clear line for a trial it cannot finalize."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import onnx
import pytest

from autocompress.measure.verify import kernel_report
from tests.conftest import FAST_FLAGS, run_cli, start_cli


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    """A 1-trial demo search: trial 0 is the uniform 50%-pruned + int8 configuration (the warm start)."""
    run = tmp_path_factory.mktemp("finalize") / "run"
    res = run_cli("search", "--budget", "1", "--out", str(run), *FAST_FLAGS)
    assert res.returncode == 0, res.stderr[-3000:]
    return run


def _trial(run: Path, n: int) -> dict:
    return json.loads((run / "trials" / f"{n:04d}.json").read_text())


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    return {i.name: tuple(i.dims) for i in onnx.load(str(path)).graph.initializer}


@pytest.mark.slow
def test_finalize_rebuilds_the_trials_architecture_and_precisions_exactly(searched):
    res = run_cli("finalize", str(searched), "--trial", "0", "--epochs", "2", "--rounds", "1", "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    out = searched / "final" / "trial0"
    final = json.loads((out / "final.json").read_text())
    trial = _trial(searched, 0)
    searched_onnx, final_onnx = searched / trial["onnx"], out / "model.onnx"
    # the same channels in every layer and the same precisions: every initializer has the trial's shape ...
    assert _shapes(final_onnx) == _shapes(searched_onnx)
    assert any(g["kept"] < g["channels"] for g in final["config"]["groups"].values())  # really pruned
    for group, g in final["config"]["groups"].items():
        assert g["kept"] == trial[f"channels:{group}"]
    # ... and the same layers run on integer kernels after ONNX Runtime's optimization
    integer = kernel_report(final_onnx)["integer_layers"]
    assert integer and integer == kernel_report(searched_onnx)["integer_layers"]
    assert final["epochs_done"] == 2 and [h["epoch"] for h in final["history"]] == [1, 2]
    assert "baseline: the run's own" in res.stderr  # the model the run trained, not one trained again
    assert not (out / "checkpoint.pt").exists()  # finished: nothing left to resume
    assert "Finalized models" in (searched / "report.html").read_text()
    assert "Final model `trial0`" in (searched / "report.md").read_text()
    picked = json.loads(run_cli("pick", str(searched), "--json").stdout)  # pick may choose the final model
    assert picked["trial"] in (0, "final-trial0", "baseline-fp32")


@pytest.mark.slow
def test_a_trial_that_does_not_exist_or_did_not_complete_is_one_line_and_exit_2(searched, tmp_path):
    res = run_cli("finalize", str(searched), "--trial", "99")
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "trial 99 does not exist" in res.stderr and "its trials are 0-0" in res.stderr
    broken = tmp_path / "run"
    shutil.copytree(searched, broken, ignore=shutil.ignore_patterns("final"))
    row = _trial(broken, 0)
    row.update(state="FAIL", error="RuntimeError: out of memory")
    (broken / "trials" / "0000.json").write_text(json.dumps(row))
    res = run_cli("finalize", str(broken), "--trial", "0")
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "trial 0 of" in res.stderr and "did not complete (FAIL: RuntimeError: out of memory)" in res.stderr
    assert not (broken / "final").exists()
    gone = tmp_path / "gone"
    shutil.copytree(searched, gone, ignore=shutil.ignore_patterns("final"))
    meta = json.loads((gone / "meta.json").read_text())
    meta["baseline"]["path"] = str(tmp_path / "evicted.pt")  # the cache entry of the run's baseline was removed
    (gone / "meta.json").write_text(json.dumps(meta))
    res = run_cli("finalize", str(gone), "--trial", "0")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "is no longer at" in res.stderr, res.stderr
    assert not (gone / "final").exists()


_start = start_cli


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.time()
    while not pred():
        assert proc.poll() is None, f"finalize exited early ({proc.returncode}): {proc.stderr.read()[-2000:]}"
        assert time.time() - t0 < timeout, "timed out waiting"
        time.sleep(0.1)


@pytest.mark.slow
def test_ctrl_c_stops_and_a_kill_resumes_from_the_last_epoch(searched):
    args = ("finalize", str(searched), "--trial", "0", "--epochs", "5", "--rounds", "1", "--name", "long")
    ck = searched / "final" / "long" / "checkpoint.pt"
    proc = _start(*args)
    _wait_for(ck.exists, proc)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: stops, keeps the checkpoint of the last epoch done
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "stopped after epoch" in err and "run the same command again" in err, err
    assert ck.exists()
    stamp = ck.stat().st_mtime_ns
    proc = _start(*args)
    _wait_for(lambda: ck.stat().st_mtime_ns != stamp, proc)  # resumed, and one more epoch saved
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed after epoch" in res.stderr
    final = json.loads((searched / "final" / "long" / "final.json").read_text())
    # every epoch exactly once across the three processes; the last epoch's weights shipped, no epoch chosen on
    # validation (the figure pick ranks finalized models by)
    assert [h["epoch"] for h in final["history"]] == [1, 2, 3, 4, 5]
    assert final["epochs_done"] == 5 and "best_epoch" not in final


@pytest.mark.slow
def test_a_run_searched_on_a_model_object_asks_for_it_again(searched, tmp_path):
    import autocompress
    from autocompress.errors import ConfigError

    run = tmp_path / "run"
    shutil.copytree(searched, run, ignore=shutil.ignore_patterns("final"))
    meta = json.loads((run / "meta.json").read_text())
    meta["baseline"]["path"] = "(the model object given)"  # what autocompress.search(model, ...) records
    (run / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="searched on a model object: pass the same trained model again"):
        autocompress.load_run(run).finalize(trial=0)
    assert not (run / "final").exists()
