"""End-to-end searches through the CLI: a local Ray, and an existing Ray head joined by --ray-address."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from tests.conftest import FAST_CONFIG, FAST_FLAGS, run_cli

ALL = "fp32,int8,prune25-int8,prune50-int8"  # every baseline (FAST_CONFIG measures only fp32)


def _check_run(run, n_trials: int) -> None:
    table = pd.read_csv(run / "trials.csv")
    assert len(table) == n_trials
    assert sorted(table["trial"]) == list(range(n_trials))  # one row per trial, each once
    assert (table["state"] == "COMPLETE").all(), table["error"].tolist()
    for col in ("val_accuracy", "test_accuracy", "latency_ms", "size_bytes", "sha256"):
        assert table[col].notna().all()
    assert (table["latency_ms"] > 0).all()
    # every row's ONNX file is there, and its hash is the one in the table
    import hashlib
    for _, r in table.iterrows():
        data = (run / r["onnx"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r["sha256"]
        assert len(data) == r["size_bytes"]
    # optuna storage holds the same trials
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    storage = JournalStorage(JournalFileBackend(str(run / "optuna.log")))
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert len(study.trials) == n_trials
    html = (run / "report.html").read_text()
    assert "Pareto models" in html and "plotly" in html.lower() and "FP32 baseline" in html
    assert not re.search(r"<script[^>]+src=", html)  # the page works offline: plotly.js is inlined
    pareto = json.loads((run / "pareto.json").read_text())
    assert 1 <= len(pareto) <= n_trials
    baselines = json.loads((run / "baselines.json").read_text())
    assert list(baselines) == json.loads((run / "config.json").read_text())["baselines"]
    for name in baselines:
        assert (run / "models" / f"baseline-{name}.onnx").is_file()


@pytest.mark.slow
def test_search_local_ray_then_report_and_pick(tmp_path):
    run = tmp_path / "run"
    # measured, not taken from the latency cache (earlier tests may have measured the same graphs); with
    # --multi-fidelity at a margin no trial falls short of (every trial runs in full), and 1.5 fine-tune epochs so
    # that there is a halfway point (after the first epoch) to check; the funnel the latency model enables scores 16
    # candidates on Ray (its default size, 20 per trial, would add time and nothing to check)
    res = run_cli("search", "--budget", "4", "--out", str(run), "--no-latency-cache", *FAST_FLAGS, "--baselines", ALL,
                  "--confirm-rounds", "2", "--latency-model", "--multi-fidelity", "100", "--finetune-epochs", "1.5",
                  "--funnel", "16")
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"report: {run / 'report.html'}" in res.stdout
    _check_run(run, 4)
    baselines = json.loads((run / "baselines.json").read_text())
    assert list(baselines) == ALL.split(",")
    # the end: every Pareto model and baseline measured again in 2 rounds (up to 4 while they disagree), their median
    # reported, the search's own
    # figure kept beside it; the same in trials.csv, the per-trial files a resume reads, and the report
    front = json.loads((run / "pareto.json").read_text())
    for r in [*front, *baselines.values()]:
        rounds = [float(v) for v in r["latency_confirm_ms"].split()]
        assert 2 <= len(rounds) <= 4 and min(rounds) - 1e-4 <= r["latency_ms"] <= max(rounds) + 1e-4, r
        assert r["search_latency_ms"] > 0
    for r in front:
        assert (json.loads((run / "trials" / f"{r['trial']:04d}.json").read_text())["latency_confirm_ms"]
                == r["latency_confirm_ms"])
    assert "measured again, together, in 2 round(s)" in (run / "report.html").read_text()
    # a finished trial's latency is measured while the next trial fine-tunes, which the device holds still only
    # within its sessions: the next trial was paused, and for less time than the measurement took
    rows = pd.read_csv(run / "trials.csv")
    overlapped = rows[(rows["latency_source"] == "measured") & (rows["latency_paused_trials"] >= 1)]
    assert len(overlapped), rows[["trial", "reused", "latency_source", "latency_paused_trials"]].to_string()
    assert (overlapped["latency_held_s"] > 0).all() and (overlapped["latency_held_s"] < overlapped["t_measure"]).all()
    # each measured row says how long its measurement paused, waiting for other load to pass (0 when it never had to)
    assert rows.loc[rows["latency_source"] == "measured", "latency_burst_wait_s"].ge(0).all()

    # every trial's latency was predicted before it trained, by a model fitted on the baselines and 12 untrained
    # random configurations; the margin only catches a broken model (a wrong layer's channels or a lost table entry)
    lm = json.loads((run / "meta.json").read_text())["latency_model"]
    assert lm["entries"] > 50 and lm["proxies"] == 12 and lm["fit"]["anchors"] >= 4 + 12
    assert rows["latency_predicted_ms"].gt(0).all(), rows.get("latency_predicted_ms")
    assert lm["errors"]["n"] >= 1 and lm["errors"]["worst_pct"] < 50, lm
    assert "Latency model: predicted vs measured" in (run / "report.html").read_text()
    # --multi-fidelity: every trial that fine-tuned recorded its validation accuracy halfway
    tuned = rows[rows["reused"].isna()] if "reused" in rows.columns else rows
    assert len(tuned) and tuned["halfway_accuracy"].between(0, 100).all(), rows.get("halfway_accuracy")

    # report rebuilds from stored files alone
    (run / "report.html").unlink()
    res = run_cli("report", str(run))
    assert res.returncode == 0, res.stderr
    assert (run / "report.html").is_file()

    # pick with a loose limit returns a Pareto model whose ONNX file runs in a plain session
    res = run_cli("pick", str(run), "--max-latency-ms", "1000", "--json", "--export", str(tmp_path / "chosen.onnx"))
    assert res.returncode == 0, res.stderr
    chosen = json.loads(res.stdout)
    assert set(chosen) >= {"trial", "accuracy", "latency_ms", "size_bytes", "onnx", "baseline"}
    assert set(chosen["baseline"]) >= {"accuracy", "latency_ms", "size_bytes", "onnx"}
    pareto_trials = {r["trial"] for r in json.loads((run / "pareto.json").read_text())}
    assert chosen["trial"] in pareto_trials
    sess = ort.InferenceSession(str(tmp_path / "chosen.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": np.zeros((1, 1, 32, 32), np.float32)})[0]
    assert out.shape == (1, 10)

    # an impossible constraint: says so, shows the nearest, exits 1
    res = run_cli("pick", str(run), "--max-latency-ms", "0.000001")
    assert res.returncode == 1
    assert "no Pareto model meets the constraints" in res.stderr and "trial" in res.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_search_through_existing_ray_head(tmp_path):
    port = _free_port()
    ray_bin = [sys.executable, "-m", "ray.scripts.scripts"]
    # Ray's Unix socket paths must stay under 107 bytes: pytest's tmp_path is too deep
    env_tmp = tempfile.mkdtemp(prefix="acray", dir="/tmp")
    start = subprocess.run([*ray_bin, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                            "--num-cpus=2", '--resources={"edgebox": 1}', "--include-dashboard=false",
                            f"--temp-dir={env_tmp}", "--disable-usage-stats"],
                           capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        run = tmp_path / "run"
        # latency measured on the node that carries the device's custom resource
        res = run_cli("search", "--budget", "2", "--out", str(run), "--ray-address", f"127.0.0.1:{port}",
                      "--device", "edgebox", *FAST_FLAGS)
        assert res.returncode == 0, res.stderr[-3000:]
        _check_run(run, 2)
        meta = json.loads((run / "meta.json").read_text())
        assert meta["ray"]["address"] == f"127.0.0.1:{port}"
        assert meta["device"]["name"] == "edgebox" and meta["device"]["onnxruntime"] == ort.__version__
    finally:
        subprocess.run([*ray_bin, "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(env_tmp, ignore_errors=True)


@pytest.mark.slow
def test_baselines_are_fp32_int8_and_uniformly_pruned_int8_whatever_the_space_allows(tmp_path):
    import onnx

    space = tmp_path / "half.yaml"
    space.write_text("prune:\n  ratios: [0.5]\nquantize:\n  precisions: [int8]\n")
    run = tmp_path / "run"
    res = run_cli("search", "--budget", "1", "--space", str(space), "--out", str(run), *FAST_FLAGS, "--baselines", ALL)
    assert res.returncode == 0, res.stderr[-3000:]

    def dims(path, name):
        inits = {i.name: list(i.dims) for i in onnx.load(str(path)).graph.initializer}
        return inits.get(name) or inits.get(f"{name}_quantized")

    assert dims(run / "models" / "baseline-fp32.onnx", "conv1.weight") == [16, 1, 3, 3]
    assert dims(run / "models" / "baseline-int8.onnx", "conv1.weight") == [16, 1, 3, 3]
    assert dims(run / "models" / "baseline-prune50-int8.onnx", "conv1.weight") == [8, 1, 3, 3]
    assert dims(run / "models" / "baseline-prune25-int8.onnx", "layer3.0.conv1.weight")[0] < 64
    # the only configuration this space has is the uniform 50% + int8 baseline's model: the trial reuses it
    table = pd.read_csv(run / "trials.csv")
    (row,) = table.to_dict("records")
    assert row["state"] == "COMPLETE" and row["reused"] == "baseline-prune50-int8" and row["duration_s"] == 0
    assert row["onnx"] == "models/baseline-prune50-int8.onnx" and not (run / "models" / "trial-0000.onnx").exists()
    baselines = json.loads((run / "baselines.json").read_text())
    assert baselines["fp32"]["int8_requested"] == 0 and baselines["int8"]["int8_requested"] == 22
    for name in ("prune25-int8", "prune50-int8"):  # fine-tuned like a trial, and every int8 layer on an integer kernel
        b = baselines[name]
        assert b["state"] == "COMPLETE" and b["int8_on_integer_kernel"] == b["int8_requested"] == 22
        assert b["t_finetune"] > 0 and b["latency_ms"] < baselines["fp32"]["latency_ms"]
    # the table records fixed choices too, and the kept channels of every group
    table = pd.read_csv(run / "trials.csv")
    prune_cols = [c for c in table.columns if c.startswith("prune:")]
    assert len(prune_cols) == 12 and (table[prune_cols] == 0.5).all().all()
    assert (table[[c for c in table.columns if c.startswith("quant:")]] == "int8").all().all()
    channels = table[[c for c in table.columns if c.startswith("channels:")]]
    assert channels.shape[1] == 12 and channels.notna().all().all()


@pytest.mark.slow
def test_identical_configurations_are_not_run_twice(tmp_path):
    """A space with two configurations and a budget of three: two trials run, repeats reuse their results."""
    space = tmp_path / "two.yaml"
    space.write_text("prune:\n  ratios: [0.5]\nrules:\n  - match: '*'\n    precisions: [fp32]\n"
                     "  - match: fc\n    precisions: [fp32, int8]\n")
    run = tmp_path / "run"
    res = run_cli("search", "--budget", "3", "--space", str(space), "--out", str(run), *FAST_FLAGS)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "space looks exhausted" in res.stdout + res.stderr
    assert re.search(r"2 trials done, 0 failed, \d+ Pareto models "
                     r"\(\d+ repeated configurations reused earlier results\)", res.stdout)
    table = pd.read_csv(run / "trials.csv")
    ran = table[table["state"] == "COMPLETE"]
    assert len(ran) == 2 and set(ran["quant:fc"]) == {"fp32", "int8"}
    repeats = table[table["state"] == "DUPLICATE"]
    assert len(repeats) >= 1
    for _, r in repeats.iterrows():
        src = table[table["trial"] == r["duplicate_of"]].iloc[0]
        assert src["state"] == "COMPLETE" and src["quant:fc"] == r["quant:fc"] and src["sha256"] == r["sha256"]
    meta = json.loads((run / "meta.json").read_text())
    assert meta["space_exhausted"] and meta["status"] == "complete" and meta["trials_complete"] == 2
    pareto = {p["trial"] for p in json.loads((run / "pareto.json").read_text())}
    assert pareto and pareto <= set(ran["trial"])  # repeats are never Pareto candidates of their own


@pytest.mark.slow
def test_a_trial_far_below_fp32_after_one_epoch_is_stopped_early(tmp_path):
    run = tmp_path / "run"
    # --early-stop 0.001: any trial not at FP32's accuracy after its first epoch stops
    res = run_cli("search", "--budget", "3", "--out", str(run), "--early-stop", "0.001", "--no-sensitivity",
                  "--config", str(FAST_CONFIG), "--baseline-epochs", "3", "--finetune-epochs", "2", "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    table = pd.read_csv(run / "trials.csv")
    stopped = table[table["state"] == "STOPPED"]
    assert len(stopped) >= 1 and stopped["error"].str.contains("fine-tune epoch").all()
    assert len(table) == 3  # stopped trials count in the budget
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    storage = JournalStorage(JournalFileBackend(str(run / "optuna.log")))
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials) == len(stopped)
    assert json.loads((run / "meta.json").read_text())["trials_stopped_early"] == len(stopped)
    assert "stopped early" in (run / "report.html").read_text()
