"""The report is built from a run directory's files alone, and flags what users must see."""

from __future__ import annotations

import json

from autocompress.report import write_report
from autocompress.results.rundir import RunDir


def _row(trial, val, test, tval, ttest, ms, size, state="COMPLETE", error=""):
    return {"trial": trial, "kind": "search", "state": state, "val_accuracy": val, "test_accuracy": test,
            "torch_val_accuracy": tval, "torch_test_accuracy": ttest, "latency_ms": ms, "latency_p90_ms": ms * 1.1,
            "size_bytes": size, "onnx": f"models/trial-{trial:04d}.onnx", "int8_requested": 2,
            "int8_on_integer_kernel": 2,
            "error": error, "prune:g": 0.5, "quant:l": "int8", "channels:g": 8}


def _run_dir(path, trials: int) -> tuple[RunDir, dict]:
    """A run directory with the meta a search writes (one group, one layer) and the FP32 baseline's row."""
    rd = RunDir(path)
    rd.write_json(rd.meta, {"run_name": "r", "model": "m", "dataset": "d", "status": "complete",
                            "budget": f"{trials} trials",
                            "space": [{"kind": "group", "name": "g", "channels": 16, "members": ["g"], "choices": []},
                                      {"kind": "layer", "name": "l", "choices": ["fp32", "int8"]}],
                            "device": {"cpu": "cpu", "onnxruntime": "1", "threads": 1}, "latency_settings": {}})
    return rd, _row(-1, 99.0, 98.5, 99.0, 98.5, 1.0, 1_000_000)


def test_report_flags_parity_gaps_and_failures(tmp_path):
    rd, base = _run_dir(tmp_path, 3)
    rd.write_json(rd.baselines_json, {"fp32": base, "int8": {**base, "latency_ms": 0.7}})
    rd.write_table([
        _row(0, 98.0, 98.0, 90.0, 98.2, 0.4, 300_000),   # test gap -0.2: fine (val is not compared)
        _row(1, 92.0, 91.0, 92.0, 98.0, 0.3, 200_000),   # test gap -7.0: flagged
        {"trial": 2, "kind": "search", "state": "FAIL", "error": "RuntimeError: boom", "prune:g": 0.75,
         "quant:l": "fp32"},
    ])
    html = write_report(rd).read_text()
    assert "Parity: 1 trial(s) where ONNX Runtime and PyTorch disagree by more than 0.5 point" in html
    section = html.split("Parity:")[1].split("</table>")[0]
    assert "<td class=''>1</td>" in section and "-7.00" in section and "<td class=''>0</td>" not in section
    assert "Failed and early-stopped trials" in html and "RuntimeError: boom" in html
    pareto = json.loads(rd.pareto_json.read_text())
    assert sorted(p["trial"] for p in pareto) == [0, 1]  # both non-dominated; the failed trial is not a candidate
    assert "| trial 1 |" in rd.report_md.read_text()


def test_report_draws_every_baseline_and_names_pareto_models_a_baseline_dominates(tmp_path):
    rd, base = _run_dir(tmp_path, 2)
    rd.write_json(rd.baselines_json, {
        "fp32": base, "int8": {**base, "latency_ms": 0.7},
        "prune25-int8": {"trial": -1, "state": "FAIL", "error": "RuntimeError: cannot prune"},
        "prune50-int8": {**base, "val_accuracy": 98.5, "latency_ms": 0.35, "size_bytes": 250_000}})
    rd.write_table([_row(0, 98.0, 98.0, 98.1, 98.2, 0.4, 300_000), _row(1, 92.0, 91.0, 92.0, 91.0, 0.3, 200_000)])
    html = write_report(rd).read_text()
    assert html.count("uniform 50% pruned + int8") >= 2  # drawn in the plot and listed in the table
    assert "Pareto models dominated by a baseline: trial 0 by uniform 50% pruned + int8</p>" in html
    assert "baseline prune25-int8 failed: RuntimeError: cannot prune" in html
    assert "| baseline prune25-int8 | failed: RuntimeError: cannot prune" in rd.report_md.read_text()


def test_report_shows_where_the_time_went_and_says_which_latencies_came_from_the_cache(tmp_path):
    rd, base = _run_dir(tmp_path, 2)
    rd.write_json(rd.baselines_json, {"fp32": base})
    stages = {"t_prune": 0.1, "t_finetune": 15.0, "t_export": 0.2, "t_measure": 0.5}
    rd.write_table([{**_row(0, 98.0, 98.0, 98.1, 98.2, 0.4, 300_000), **stages, "latency_source": "measured",
                     "latency_held_s": 0.3},
                    {**_row(1, 97.0, 97.0, 97.1, 97.2, 0.3, 200_000), **stages, "t_measure": 0.0,
                     "latency_source": "cache:0123456789ab", "latency_held_s": 0.0}])
    html = write_report(rd).read_text()
    assert "Where the time went" in html
    # outside the fine-tune: the trial's own stages (0.1 + 0.2) and the time trials were held for latency (mean(0.3, 0))
    assert "fine-tuning 15.0 s; outside it, <b>0.45 s</b>: 0.30 s of the trial's own stages" in html
    assert "0.15 s during which the device held the running trials still" in html
    assert "The latency measurement took 0.2 s of wall time" in html  # mean(0.5, 0.0), overlapping the next trial
    assert "1 of these 2 latencies came from this device's cache" in html


def test_report_names_trials_whose_latency_was_measured_beside_other_load(tmp_path):
    rd, base = _run_dir(tmp_path, 2)
    rd.write_json(rd.baselines_json, {"fp32": base, "int8": {**base, "latency_ms": 0.7, "latency_contended": True}})
    rd.write_table([
        {**_row(0, 98.0, 98.0, 98.1, 98.2, 0.4, 300_000), "latency_contended": False, "latency_other_load_cores": 0.1},
        {**_row(1, 97.0, 97.0, 97.1, 97.2, 0.3, 200_000), "latency_contended": True, "latency_other_load_cores": 1.4},
    ])
    html = write_report(rd).read_text()
    assert "Latency of baseline int8, trial 1 was measured beside other load that did not go away" in html


def test_a_report_shows_the_pruning_criterion_and_the_fp16_layers_a_search_chose(tmp_path):
    """A real short search whose space offers two criteria and fp16 / int8 layers: the report's per-layer table
    names the criterion the trial used and marks its fp16 layers."""
    import sys
    from pathlib import Path

    import autocompress

    sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
    from zoo import SHORT, build, digits_rgb

    space = tmp_path / "space.yaml"
    space.write_text("prune:\n  ratios: [0.25, 0.5]\n  criteria: [l1, taylor]\nquantize:\n  precisions: [fp16, int8]\n")
    train, val, test = digits_rgb()
    # no warm start: the first trial is the sampler's own, a mix of fp16 and int8 layers with one criterion
    result = autocompress.search(build("concat_net").eval(), train, val, test_data=test, out=tmp_path / "run",
                                 space=space, log=lambda s: None, **{**SHORT, "warm_start": False})
    (row,) = result.trials[result.trials["kind"] == "search"].to_dict(orient="records")
    assert row["state"] == "COMPLETE" and row["criterion"] in ("l1", "taylor")
    chosen = {c.split(":", 1)[1]: v for c, v in row.items() if c.startswith("quant:")}
    assert "fp16" in chosen.values()
    page = (tmp_path / "run" / "report.html").read_text()
    assert f"<td class='l'>pruning criterion</td><td>{row['criterion']}</td>" in page
    for layer, precision in chosen.items():
        assert f"<td class='l'>layer <code>{layer}</code></td><td class='{precision}'>{precision}</td>" in page
