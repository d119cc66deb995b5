"""The end-of-search re-measurement's bookkeeping: which files, which round is reported, newcomers to the front.
(tests/test_search_e2e.py runs it for real, through the device actor.)"""

from __future__ import annotations

import pytest

from autocompress.engine.confirm import apply_confirmed, confirm_latencies
from autocompress.results.records import ArtifactFigures, LatencyFigures, TrialRecord, TrialState


def _rec(n: int, acc: float, ms: float, state: TrialState = TrialState.COMPLETE, onnx: str | None = None,
         duplicate_of: int | None = None) -> TrialRecord:
    art = ArtifactFigures(acc, acc, acc, 1000, "x", onnx or f"models/trial-{n:04d}.onnx", 0, 0, "")
    lat = LatencyFigures(ms, ms, ms, 100, source="measured", held_s=0.4)
    return TrialRecord(n, state, {}, artifact=art, latency=lat, duplicate_of=duplicate_of)


def _confirm_rows(records: dict, baselines: dict, confirmed: dict) -> tuple[dict, dict]:
    """The rows the run writes after the confirmation: new records, the originals untouched."""
    rows = {n: apply_confirmed(r, confirmed).to_row() for n, r in records.items()}
    return rows, {k: apply_confirmed(b, confirmed).to_row() for k, b in baselines.items()}


def test_the_median_of_agreeing_rounds_is_reported_and_a_newcomer_to_the_front_is_confirmed_too(tmp_path):
    (tmp_path / "models").mkdir()
    for name in ("trial-0000", "trial-0001", "trial-0002", "baseline-fp32"):
        (tmp_path / "models" / f"{name}.onnx").write_bytes(name.encode())
    # the search's front: trial 0 (95%, 0.8 ms) and trial 1 (98%, 1.2 ms); trial 2 (94%, 0.9 ms) is dominated by trial 0
    records = {0: _rec(0, 95.0, 0.8), 1: _rec(1, 98.0, 1.2), 2: _rec(2, 94.0, 0.9),
               3: _rec(3, 95.0, 0.8, TrialState.DUPLICATE, onnx="models/trial-0000.onnx", duplicate_of=0)}
    base_records = {"fp32": _rec(-1, 99.0, 2.0, onnx="models/baseline-fp32.onnx"),
                    "int8": TrialRecord(-1, TrialState.FAIL, {}, error="boom")}
    # re-measured, trial 0 turns out slower than trial 2: trial 2 joins the front and is measured too. A value with
    # "c" is a round flagged contended by the measurement.
    truth = {b"baseline-fp32": [2.0, 2.04], b"trial-0000": [1.0, 1.3, 1.02, 1.01], b"trial-0001": [1.2, 1.22],
             b"trial-0002": [(0.8, "c"), 0.9, 0.92]}
    calls: list[bytes] = []

    def measure(data: bytes) -> dict:
        calls.append(data)
        v = truth[data][sum(c == data for c in calls) - 1]
        ms, contended = (v[0], True) if isinstance(v, tuple) else (v, False)
        return {"median_ms": ms, "p90_ms": ms * 1.1, "p99_ms": ms * 1.2, "reps": 100, "other_load_cores": 0.0,
                "contended": contended, "probe_vs_best": 1.05}

    chosen = confirm_latencies(records, base_records, tmp_path, measure, rounds=2, log=lambda s: None)
    assert records[0].latency.median_ms == 0.8  # the records are not touched: the run writes new ones
    rows, baselines = _confirm_rows(records, base_records, chosen)
    assert sorted(chosen) == ["models/baseline-fp32.onnx", "models/trial-0000.onnx", "models/trial-0001.onnx",
                              "models/trial-0002.onnx"]
    # rounds that agree within 4% stop at 2; trial 0's disagreed (a burst: 1.3) and got 2 more; trial 2's first round
    # was contended, so it needed a third to have two that agree
    assert len(calls) == 2 + 4 + 2 + 3
    assert rows[0]["latency_ms"] == 1.015 and rows[0]["search_latency_ms"] == 0.8  # the median; the search's kept
    assert rows[0]["latency_confirm_ms"] == "1.0000 1.3000 1.0200 1.0100" and rows[0]["latency_p90_ms"] == 1.1165
    assert rows[3]["latency_ms"] == 1.015  # a duplicate shares its original's file and figure
    assert (rows[1]["latency_ms"] == 1.21 and baselines["fp32"]["latency_ms"] == 2.02
            and "latency_ms" not in baselines["int8"])
    assert rows[2]["latency_ms"] == 0.91 and rows[2]["search_latency_ms"] == 0.9 and not rows[2]["latency_contended"]
    assert rows[0]["latency_source"] == "measured" and rows[0]["latency_held_s"] == 0.4  # the search's cost stays
    # the order alternates between rounds: a slow spell does not always fall on the same model
    assert calls[:3] == [b"baseline-fp32", b"trial-0000", b"trial-0001"] and calls[3:6] == calls[:3][::-1]
    assert calls[6:8] == [b"trial-0000"] * 2


def test_off_and_a_failing_measurement_change_nothing(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "trial-0000.onnx").write_bytes(b"x")
    records = {0: _rec(0, 95.0, 0.8)}
    assert confirm_latencies(records, {}, tmp_path, lambda d: {}, rounds=0) == {}

    def broken(data: bytes) -> dict:
        raise RuntimeError("device gone")

    with pytest.raises(RuntimeError):  # the caller keeps the search's figures
        confirm_latencies(records, {}, tmp_path, broken, rounds=3, log=lambda s: None)
    assert records[0] == _rec(0, 95.0, 0.8)

    calls = []

    def fails_late(data: bytes) -> dict:  # the first round goes through, the second fails
        calls.append(data)
        if len(calls) > 1:
            raise RuntimeError("device gone")
        return {"median_ms": 0.5, "p90_ms": 0.6, "p99_ms": 0.7, "reps": 10, "contended": False}

    with pytest.raises(RuntimeError):
        confirm_latencies(records, {}, tmp_path, fails_late, rounds=2, log=lambda s: None)
    assert len(calls) == 2 and records[0] == _rec(0, 95.0, 0.8)  # nothing half-applied
