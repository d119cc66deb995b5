"""The report's "How these numbers were measured" list: device, latency method, confirmation rounds, contended
measurements, splits (and where validation came from), quantization format and excluded layers."""

from __future__ import annotations

import html
import statistics

from autocompress.report.data import ReportData
from autocompress.results.preprocessing import recorded_preprocessing


def measurement_notes(data: ReportData, rounds: int) -> list[str]:
    """One HTML fragment per bullet, in the order the report lists them."""
    notes = [_device_note(data.device), _latency_method_note(data.meta.get("latency_settings", {}))]
    confirmed = _confirmation_note(data, rounds)
    if confirmed:
        notes.append(confirmed)
    contended = _contended_note(data)
    if contended:
        notes.append(contended)
    notes.append("The search ranks on the validation split; the test split is reported only. Accuracy is the ONNX "
                 "Runtime artifact's; 'PyTorch test %' is the fake-quantized PyTorch model it was exported from.")
    split = _split_note(data.meta)
    if split:
        notes.append(split)
    preprocessing = recorded_preprocessing(data.meta)
    if preprocessing:
        notes.append(html.escape(preprocessing))
    notes.append(_quant_format_note(data))
    if data.meta.get("pruning_limits"):
        notes.append("Pruning limited (each group was pruned alone before the search; what failed to run or export "
                     "is not offered): " + ", ".join(f"<code>{html.escape(k)}</code> ({html.escape(v)})"
                                                    for k, v in data.meta["pruning_limits"].items()))
    if data.meta.get("excluded_layers"):
        notes.append("Excluded from quantization: " + ", ".join(f"<code>{html.escape(k)}</code> ({html.escape(v)})"
                                                                 for k, v in data.meta["excluded_layers"].items()))
    return notes


def _device_note(dev: dict) -> str:
    return ("Every figure is measured on the ONNX file listed, under ONNX Runtime "
            f"{html.escape(str(dev.get('onnxruntime', '?')))} on <b>{html.escape(str(dev.get('cpu', '?')))}</b> "
            f"({dev.get('cores', '?')} cores, ISA {', '.join(dev.get('isa', [])) or 'n/a'}), "
            f"{dev.get('threads', '?')} intra-op thread(s).")


def _latency_method_note(ls: dict) -> str:
    """The latency settings in words; the clauses about contention name only the guards this run had."""
    return (f"Latency: batch {ls.get('batch')}, {ls.get('warmup')} warm-up runs, repetitions until the median's "
            f"95% CI is within {100 * ls.get('ci_target', 0):.0f}% (at least {ls.get('min_reps')}, at most "
            f"{ls.get('max_reps')}), median over {ls.get('sessions')} fresh sessions (up to "
            f"{ls.get('max_sessions', ls.get('sessions'))} while their medians disagree by more "
            f"than {200 * ls.get('ci_target', 0):.0f}%); trials on the device's node are paused while it measures"
            + (", and a session taken beside other load on the machine is discarded and taken again"
               if "max_contended" in ls else "")
            + (", as is one beside a slow reference probe (a burst of interference from outside the VM)"
               if ls.get("probe") else "")
            + (f" ({ls['max_contended']} times, or for {ls['burst_wait_s']:g} s of pauses if that is longer)"
               if "burst_wait_s" in ls and "max_contended" in ls else "")
            + ".")


def _confirmation_note(data: ReportData, rounds: int) -> str:
    """How the end-of-run re-measurement worked and how far it moved the figures; "" when there was none."""
    confirmed = [b for b in data.baselines.values() if b.get("latency_confirm_ms")]
    done = data.done
    if len(done) and "latency_confirm_ms" in done.columns:
        confirmed += [r for _, r in done.iterrows()
                      if isinstance(r["latency_confirm_ms"], str) and r["latency_confirm_ms"]]
    if not confirmed:
        return ""
    moved = [abs(float(r["latency_ms"]) / float(r["search_latency_ms"]) - 1)
             for r in confirmed if r.get("search_latency_ms")]
    return ("When the budget was spent, the Pareto models and the baselines were measured again, together, "
            f"in {rounds} round(s) (each round every model once, in fresh sessions; up to 2 more for a model "
            "whose rounds disagree by over 4%): their latency is the median of those rounds not flagged "
            "contended, so the speed-ups compare figures taken minutes apart at most, not across the whole "
            "run (column latency_confirm_ms holds the rounds, search_latency_ms the figure the search "
            "ranked on"
            + (f"; they moved by {100 * statistics.median(moved):.1f}% in the median, "
               f"{100 * max(moved):.1f}% at most" if moved else "")
            + ").")


def _contended_note(data: ReportData) -> str:
    """Names the latencies taken beside load that never went away; "" when there are none."""
    spoilt = [f"baseline {k}" for k, b in data.baselines.items() if b.get("latency_contended")]
    done = data.done
    if len(done) and "latency_contended" in done.columns:
        spoilt += [f"trial {int(t)}" for t in done[done["latency_contended"].fillna(False).astype(bool)]["trial"]]
    if not spoilt:
        return ""
    return (f"<span class='bad'>Latency of {', '.join(spoilt)} was measured beside other load that did not "
            "go away (column latency_other_load_cores): re-measure before relying on it.</span>")


def _split_note(meta: dict) -> str:
    """Where the validation images came from, and the warning when they look like training images; "" for a run
    from before the rule was recorded."""
    rule, warning = meta.get("split_rule"), meta.get("split_warning")
    if not rule and not warning:
        return ""
    text = f"Validation split: {html.escape(rule)}." if rule else ""
    if warning:
        text += f" <span class='bad'>Warning: {html.escape(warning)}.</span>"
    return text.strip()


def _quant_format_note(data: ReportData) -> str:
    """What int8 means on this run's device, and why int4 gave no speed-up when any trial used it."""
    table = data.table
    int4_used = (any(str(v) == "int4" for c in table.columns if c.startswith("quant:") for v in table[c].dropna())
                 if len(table) else False)
    qf = data.meta.get("quant_format") or {}
    return ("int8 = int8 per-channel weights with uint8 activations (QDQ, fuses into QLinearConv on x86)"
            + (f"; weights on [{qf['int8_weight_range'][0]}, {qf['int8_weight_range'][1]}] "
               f"({html.escape(qf['why'])})" if qf else "")
            + ". "
            + ("int4 weights are stored packed (ONNX INT4): on ORT's CPU provider they run as DequantizeLinear + "
               "float Conv, so int4 gives a smaller file but no speed-up here." if int4_used else ""))
