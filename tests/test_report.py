"""The report is built from a run directory's files alone, and flags what users must see."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from autocompress.report import write_report
from autocompress.report.data import load_report_data
from autocompress.report.figures import funnel_figure
from autocompress.results.funnel import FunnelBook, Scored
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


def _config(ratio: float, precision: str) -> dict:
    """Optuna params of the test space: its one group and one layer each offer a choice."""
    return {"prune:g": ratio, "quant:l": precision}


def _candidate(number, ratio, precision, predicted, target, origin="sampled", accuracy=None, loss=None, error=""):
    return Scored(number, _config(ratio, precision), key=f"g{ratio}-{precision}", predicted_ms=predicted,
                  target=target, origin=origin, accuracy=accuracy, agreement=accuracy, loss=loss, seconds=0.5,
                  error=error)


def _candidates() -> list[Scored]:
    """Two targets (1.0 and 0.5 ms): the uniform ladder, a scan pick, sampled ones, a repeat, one over the targets and
    one that failed."""
    return [
        _candidate(0, 0.0, "int8", 0.9, 0, "uniform", 97.0, 0.10),
        _candidate(1, 0.5, "int8", 0.45, 1, "uniform", 95.0, 0.20),
        _candidate(2, 0.25, "int8", 0.7, 0, "scan", 98.0, 0.05),  # the best of the slow target
        _candidate(3, 0.25, "fp32", 0.95, 0, "sampled", 96.0, 0.15),
        _candidate(4, 0.75, "int8", 0.3, 1, "sampled", 90.0, 0.40),
        _candidate(5, 0.25, "int8", 0.7, 0, "sampled", 98.0, 0.05, "the model of candidate 2"),
        _candidate(6, 0.0, "fp32", 1.5, None),  # over the slowest target: never built
        _candidate(7, 0.625, "int8", 0.4, 1, error="failed: RuntimeError: boom"),
    ]


def _write_funnel(rd: RunDir, promoted: tuple[int, ...]) -> None:
    """funnel.jsonl and meta.json's `funnel` as engine/funnel.py leaves them after promoting candidates `promoted`."""
    book = FunnelBook.open(rd.funnel_book)
    book.add(_candidates())
    book.add([replace(book.rows[2], short_accuracy=97.5, short_seconds=3.0)])  # its short fine-tune: a later line
    meta = rd.read_json(rd.meta)
    meta["funnel"] = {"targets_ms": [1.0, 0.5], "candidates": 8, "settings": {"bn_images": 64, "val_images": 128},
                      "done": True, "seconds": 12.5, "scored": 6, "proposed": 8, "failed": 1, "over_targets": 1,
                      "promoted": [{"candidate": s.number, "target": s.target, "accuracy": s.accuracy, "loss": s.loss,
                                    "predicted_ms": s.predicted_ms, "origin": s.origin}
                                   for s in (book.rows[n] for n in promoted)]}
    rd.write_json(rd.meta, meta)


def test_the_report_shows_the_funnel_its_promoted_candidates_and_the_trials_that_ran_them(tmp_path):
    rd, base = _run_dir(tmp_path, 3)
    rd.write_json(rd.baselines_json, {"fp32": base})
    _write_funnel(rd, promoted=(2, 1, 0, 4))  # the best of each target first, then the second best
    rd.write_table([
        {**_row(0, 98.0, 98.0, 98.1, 98.2, 0.4, 300_000), "prune:g": 0.25},  # candidate 2: on the front
        {**_row(1, 97.0, 97.0, 97.1, 97.2, 0.45, 300_000), "prune:g": 0.5},  # candidate 1: dominated by trial 0
        {"trial": 2, "kind": "search", "state": "STOPPED", "error": "early stop", "prune:g": 0.0, "quant:l": "int8"},
    ])  # candidate 4 was promoted, but the budget ended before it ran

    page = write_report(rd).read_text()
    line = ("5 candidates scored in 12.5 s (1 failed, 1 predicted over the slowest target, 1 repeat of a model already "
            "scored) → 1 short fine-tunes → 4 promoted, fine-tuned first.")
    assert "<h2>Funnel: score many, fine-tune few</h2>" in page and line in page
    assert "BatchNorm statistics re-estimated on 64 training images" in page
    md = rd.report_md.read_text()
    assert line in md
    # candidate, origin, target, predicted, score, loss, rank in its target, short fine-tune, trial, its val %, its
    # latency, front
    assert "| 2 | scan pick | 1.000 | 0.700 | 98.00 | 0.0500 | 1 of 3 | 97.50 | 0 | 98.00 | 0.400 | yes |" in md
    assert "| 1 | uniform ladder | 0.500 | 0.450 | 95.00 | 0.2000 | 1 of 2 |  | 1 | 97.00 | 0.450 |  |" in md
    assert "| 0 | uniform ladder | 1.000 | 0.900 | 97.00 | 0.1000 | 2 of 3 |  | 2 (stopped) |  |  |  |" in md
    assert "| 4 | sampled | 0.500 | 0.300 | 90.00 | 0.4000 | 2 of 2 |  | not run |  |  |  |" in md
    section = page.split("Funnel: score many")[1].split("<h2>")[0]
    assert "<td class=''>2 (stopped)</td>" in section and "<td class=''>not run</td>" in section

    fig = funnel_figure(load_report_data(rd).funnel)
    traces = {t.name: t for t in fig.data}
    points = {name: sorted(t.x) for name, t in traces.items()}
    # one point per distinct model scored: the repeat, the failed one and the one over the targets are not drawn
    assert points["uniform ladder (every ratio, int8)"] == [0.45, 0.9]
    assert points["sensitivity scan's picks"] == [0.7]
    assert points["sampled"] == [0.3, 0.95]
    assert points["promoted (fine-tuned first)"] == [0.3, 0.45, 0.9]
    assert points["promoted, its trial on the final Pareto front"] == [0.7]
    assert sorted(shape.x0 for shape in fig.layout.shapes) == [0.5, 1.0]  # the ladder's targets
    hover = dict(zip(traces["sensitivity scan's picks"].x, traces["sensitivity scan's picks"].text, strict=True))
    assert "candidate 2 " in hover[0.7] and "loss 0.0500" in hover[0.7]
    assert "fine-tuned as trial 0 (complete): val 98.00%, 0.400 ms" in hover[0.7]
    assert "not fine-tuned" in dict(zip(traces["sampled"].x, traces["sampled"].text, strict=True))[0.95]


@pytest.mark.parametrize("funnel, line", [
    (None, None),  # a run from before the funnel: no section
    ({"off": "off (funnel.candidates: 0)"}, "The funnel was off (funnel.candidates: 0)."),
    ({"targets_ms": [1.0], "error": "RuntimeError: no scorer"},
     "The funnel failed (RuntimeError: no scorer); the trials started from the warm start instead."),
    # failed after it had promoted: the trials ignored the promotion
    ({"targets_ms": [1.0], "done": True, "promoted": [], "error": "KeyError: x"},
     "The funnel failed (KeyError: x); the trials started from the warm start instead."),
    ({"targets_ms": [1.0], "candidates": 40, "settings": {}},
     "0 of 40 candidates scored so far (0 failed, 0 predicted over the slowest target); the funnel had not "
     "finished, so none was promoted yet."),
])
def test_the_report_says_in_one_line_why_a_run_has_no_promoted_candidates(tmp_path, funnel, line):
    rd, base = _run_dir(tmp_path, 1)
    rd.write_json(rd.baselines_json, {"fp32": base})
    if funnel is not None:
        rd.write_json(rd.meta, {**rd.read_json(rd.meta), "funnel": funnel})
    rd.write_table([_row(0, 98.0, 98.0, 98.1, 98.2, 0.4, 300_000)])
    page, md = write_report(rd).read_text(), rd.report_md.read_text()
    if line is None:
        assert "Funnel" not in page and "funnel" not in md.lower()
    else:
        assert f"<p>{line}</p>" in page and f"\n{line}\n" in md
        assert "<table" not in page.split("Funnel")[1].split("<h2>")[0]  # no figure, no promoted table


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
    assert "<h2>Funnel</h2><p>The funnel was off: it needs the latency model" in page  # latency_model=False
    assert f"<td class='l'>pruning criterion</td><td>{row['criterion']}</td>" in page
    for layer, precision in chosen.items():
        assert f"<td class='l'>layer <code>{layer}</code></td><td class='{precision}'>{precision}</td>" in page


def test_a_search_that_ended_before_its_first_trial_still_gets_its_report(tmp_path):
    """A time budget spent before the first trial (on the baselines, the table, the scan): trials.csv is empty."""
    rd, base = _run_dir(tmp_path, 0)
    rd.write_json(rd.baselines_json, {"fp32": base, "int8": {**base, "latency_ms": 0.7}})
    rd.write_table([])
    assert rd.trials_csv.stat().st_size <= 1  # what a search leaves then
    html = write_report(rd).read_text()
    assert "FP32 baseline" in html
    assert json.loads(rd.pareto_json.read_text()) == []
    assert rd.report_md.is_file()
