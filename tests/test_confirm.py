"""The end-of-search re-measurement's bookkeeping: which files, which round is reported, newcomers to the front.
(tests/test_search_e2e.py runs it for real, through the device actor.)"""

from __future__ import annotations

from autocompress.search.confirm import confirm_latencies


def _row(n: int, acc: float, ms: float, state: str = "COMPLETE") -> dict:
    return {"trial": n, "kind": "search", "state": state, "val_accuracy": acc, "latency_ms": ms, "size_bytes": 1000,
            "onnx": f"models/trial-{n:04d}.onnx", "latency_source": "measured", "latency_held_s": 0.4}


def test_the_median_of_agreeing_rounds_is_reported_and_a_newcomer_to_the_front_is_confirmed_too(tmp_path):
    (tmp_path / "models").mkdir()
    for name in ("trial-0000", "trial-0001", "trial-0002", "baseline-fp32"):
        (tmp_path / "models" / f"{name}.onnx").write_bytes(name.encode())
    # the search's front: trial 0 (95%, 0.8 ms) and trial 1 (98%, 1.2 ms); trial 2 (94%, 0.9 ms) is dominated by trial 0
    rows = {0: _row(0, 95.0, 0.8), 1: _row(1, 98.0, 1.2), 2: _row(2, 94.0, 0.9),
            3: {**_row(0, 95.0, 0.8), "trial": 3, "state": "DUPLICATE", "duplicate_of": 0}}
    baselines = {"fp32": {**_row(-1, 99.0, 2.0), "onnx": "models/baseline-fp32.onnx"},
                 "int8": {"trial": -1, "state": "FAIL", "error": "boom"}}
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

    chosen = confirm_latencies(rows, baselines, tmp_path, measure, rounds=2, log=lambda s: None)
    assert sorted(chosen) == ["models/baseline-fp32.onnx", "models/trial-0000.onnx", "models/trial-0001.onnx",
                              "models/trial-0002.onnx"]
    # rounds that agree within 4% stop at 2; trial 0's disagreed (a burst: 1.3) and got 2 more; trial 2's first round
    # was contended, so it needed a third to have two that agree
    assert len(calls) == 2 + 4 + 2 + 3
    assert rows[0]["latency_ms"] == 1.015 and rows[0]["search_latency_ms"] == 0.8  # the median; the search's kept
    assert rows[0]["latency_confirm_ms"] == "1.0000 1.3000 1.0200 1.0100" and rows[0]["latency_p90_ms"] == 1.1165
    assert rows[3]["latency_ms"] == 1.015  # a duplicate shares its original's file and figure
    assert rows[1]["latency_ms"] == 1.21 and baselines["fp32"]["latency_ms"] == 2.02 and "latency_ms" not in baselines["int8"]
    assert rows[2]["latency_ms"] == 0.91 and rows[2]["search_latency_ms"] == 0.9 and not rows[2]["latency_contended"]
    assert rows[0]["latency_source"] == "measured" and rows[0]["latency_held_s"] == 0.4  # the search's cost stays
    # the order alternates between rounds: a slow spell does not always fall on the same model
    assert calls[:3] == [b"baseline-fp32", b"trial-0000", b"trial-0001"] and calls[3:6] == calls[:3][::-1]
    assert calls[6:8] == [b"trial-0000"] * 2


def test_off_and_a_failing_measurement_change_nothing(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "trial-0000.onnx").write_bytes(b"x")
    rows = {0: _row(0, 95.0, 0.8)}
    assert confirm_latencies(rows, {}, tmp_path, lambda d: {}, rounds=0) == {} and rows[0]["latency_ms"] == 0.8

    def broken(data: bytes) -> dict:
        raise RuntimeError("device gone")

    try:
        confirm_latencies(rows, {}, tmp_path, broken, rounds=3, log=lambda s: None)
    except RuntimeError:
        pass
    assert rows[0] == _row(0, 95.0, 0.8)

    calls = []

    def fails_late(data: bytes) -> dict:  # the first round goes through, the second fails
        calls.append(data)
        if len(calls) > 1:
            raise RuntimeError("device gone")
        return {"median_ms": 0.5, "p90_ms": 0.6, "p99_ms": 0.7, "reps": 10, "contended": False}

    try:
        confirm_latencies(rows, {}, tmp_path, fails_late, rounds=2, log=lambda s: None)
    except RuntimeError:
        pass
    assert len(calls) == 2 and rows[0] == _row(0, 95.0, 0.8)  # nothing half-applied
