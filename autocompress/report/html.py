"""report.html: one self-contained page (plotly.js inlined, so it opens offline), one function per section."""

from __future__ import annotations

import html
from collections.abc import Callable

import pandas as pd

from autocompress.report.data import (
    BASELINE_LABELS,
    PARITY_LIMIT,
    PROMOTED_HEADINGS,
    ReportData,
    TrialLookup,
    completed,
    dominated_by_baselines,
    funnel_summary,
    pareto_config,
    promoted_cells,
)
from autocompress.report.figures import (
    funnel_figure,
    hypervolume_figure,
    pareto_scatter,
    prediction_figure,
    stage_figure,
)
from autocompress.report.notes import measurement_notes
from autocompress.results.pareto import fastest_within
from autocompress.results.records import Allocated, SlowChoice

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;color:#222;
padding:0 16px}
h1{margin-bottom:4px} h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin-top:0} table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right} th{background:#f5f5f5} td.l,th.l{text-align:left}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{border:1px solid #ddd;border-radius:6px;padding:10px 14px;min-width:170px}
.card b{font-size:20px;display:block}.warn{color:#b45309}.bad{color:#b91c1c}.ok{color:#15803d}
td.fp32{background:#e5e7eb}td.fp16{background:#fde68a}td.int8{background:#bfdbfe}td.int4{background:#c4b5fd}.scroll{overflow-x:auto}
code{background:#f3f4f6;padding:1px 4px;border-radius:3px}
"""

Column = tuple[str, str, Callable[[pd.Series], str]]  # (key, heading, cell text of a row)


def report_page(data: ReportData, rounds: int) -> str:
    """The whole page; `rounds` is the run's latency confirmation rounds, named in the notes."""
    run_name = html.escape(data.meta["run_name"])
    meta = data.meta
    cols = _model_columns(data)
    return "\n".join([
        f'<!doctype html><html><head><meta charset="utf-8"><title>autocompress · {run_name}</title>',
        f"<style>{_CSS}</style></head><body>",
        f'<h1>autocompress report</h1><p class="sub">{run_name} · model <code>{html.escape(meta["model"])}</code> on',
        f"<code>{html.escape(meta['dataset'])}</code> · started {html.escape(str(meta.get('started', '')))} · "
        f"status {html.escape(str(meta.get('status', '')))}</p>",
        f'<div class="cards">{_summary_cards(data)}</div>',
        '<h2>Accuracy vs latency</h2><p class="sub">Marker area is proportional to file size. Blue: Pareto-optimal '
        "over (validation accuracy, latency, size).</p>",
        _pareto_plot(data),
        _search_quality(data) + _where_the_time_went(data),  # one block of the page: no newline between them
        _latency_model(data),
        _funnel_section(data),
        f"<h2>Pareto models</h2>{_pareto_table(data, cols)}",
        '<h2>Baselines</h2><p class="sub">Measured exactly like the trials. The uniformly pruned ones get the trials\' '
        f"own fine-tune.</p>{_baselines_table(data, cols)}",
        f'<p class="sub">Choose one with <code>autocompress pick {html.escape(str(data.path))} '
        "--max-latency-ms X</code>.</p>",
        _finals_section(data),
        f"<h2>Per-layer configuration of the Pareto models</h2>{_layer_table(data)}",
        _parity_section(data),
        _failures_section(data),
        "<h2>How these numbers were measured</h2>"
        f"<ul>{''.join(f'<li>{n}</li>' for n in measurement_notes(data, rounds))}</ul>",
        "</body></html>",
    ])


def _f(x, nd=2, suffix=""):
    return "" if x is None or (isinstance(x, float) and pd.isna(x)) else f"{x:.{nd}f}{suffix}"


def _table(df: pd.DataFrame, cols: list[Column], left: set[str] = frozenset()) -> str:
    head = "".join(f"<th class='{'l' if c in left else ''}'>{html.escape(t)}</th>" for c, t, _ in cols)
    body = []
    for _, r in df.iterrows():
        cells = "".join(f"<td class='{'l' if c in left else ''}'>{fn(r)}</td>" for c, _, fn in cols)
        body.append(f"<tr>{cells}</tr>")
    return f"<div class='scroll'><table><tr>{head}</tr>{''.join(body)}</table></div>"


def _summary_cards(data: ReportData) -> str:
    fp32, baselines, failed = data.fp32, data.baselines, data.failed
    best = fastest_within(data.pareto, fp32["val_accuracy"], 1.0)
    cards = [
        ("FP32 baseline", f"{fp32['latency_ms']:.3f} ms",
         f"val {fp32['val_accuracy']:.2f}% · test {fp32['test_accuracy']:.2f}% · {fp32['size_bytes'] / 1e6:.2f} MB"),
        ("uniform int8 (PTQ)", f"{baselines['int8']['latency_ms']:.3f} ms",
         f"val {baselines['int8']['val_accuracy']:.2f}% · {data.speed(baselines['int8'])} vs FP32")
        if "int8" in baselines else None,
        ("fastest within 1 pt (val)", f"{best['latency_ms']:.3f} ms" if best is not None else "none",
         f"trial {int(best['trial'])} · {data.speed(best)} · test {best['test_accuracy']:.2f}%"
         if best is not None else ""),
        ("trials", f"{len(data.done)} done · "
                   f"{int((failed['state'] == 'STOPPED').sum()) if len(failed) else 0} stopped early · "
                   f"{int((failed['state'] != 'STOPPED').sum()) if len(failed) else 0} failed",
         f"{data.meta.get('budget', '')} budget · {data.meta.get('wall_seconds', '?')} s wall"
         + (f" · {data.meta['trials_skipped']} skipped unbuilt ({_skip_reason(data.meta)})"
            if data.meta.get("trials_skipped") else "")),
    ]
    return "".join(f"<div class='card'>{t}<b>{v}</b><span class='sub'>{s}</span></div>"
                   for c in cards if c for t, v, s in [c])



def _skip_reason(meta: dict) -> str:
    """Why proposals were skipped before they were built: over the latency target, or screened
    (latency_model.screen)."""
    target = meta.get("target_latency_ms")
    screened = "slower than a measured model with their channels and precisions"
    return f"predicted over the {target:g} ms target, or {screened}" if target else f"predicted {screened}"

def _pareto_plot(data: ReportData) -> str:
    if not len(data.done):
        return "<p>No completed trials yet.</p>"
    fig = pareto_scatter(data.table, data.pareto, data.baselines)
    return fig.to_html(full_html=False, include_plotlyjs=True)  # the only figure that carries plotly.js


def _search_quality(data: ReportData) -> str:
    if not len(data.done):
        return ""
    fig, text = hypervolume_figure(data.table, data.baselines)
    return f"<h2>Search quality</h2><p class='sub'>{text}</p>" + fig.to_html(full_html=False, include_plotlyjs=False)


def _latency_model(data: ReportData) -> str:
    model = data.meta.get("latency_model")
    if not isinstance(model, dict) or "failed" in model:
        return (f"<h2>Latency model</h2><p class='sub'>Not built: {html.escape(model['failed'])}</p>"
                if isinstance(model, dict) else "")
    slow = [SlowChoice(**c).text() for c in model.get("slow_choices", [])]
    slow_html = ("<p class='sub'>Channel counts not offered to the search because a larger count of the same group "
                 "ran at least as fast in the layer table (so they could only lose accuracy):</p><ul>"
                 + "".join(f"<li>{html.escape(t)}</li>" for t in slow) + "</ul>") if slow else ""
    extra = slow_html + _allocated_html(data)
    made = prediction_figure(data.done, model) if len(data.done) else None
    if made is None:
        return f"<h2>Latency model</h2>{extra}" if extra else ""
    fig, text = made
    return (f"<h2>Latency model: predicted vs measured</h2><p class='sub'>{text}</p>"
            + fig.to_html(full_html=False, include_plotlyjs=False) + extra)


def _allocated_html(data: ReportData) -> str:
    """The warm-start configurations latency_model.allocate proposed, each with the trial that ran it (if one did)."""
    allocated = [Allocated(**a) for a in data.meta.get("sensitivity", {}).get("allocated", [])]
    if not allocated:
        return ""
    items = []
    lookup = TrialLookup(data.table)
    for a in allocated:
        ran = lookup.row_of(a.params)
        who = f"trial {int(ran['trial'])}" if ran is not None else "not run (the budget ended first)"
        items.append(f"<li>{who}: {html.escape(a.text())}</li>")
    return ("<p class='sub'>Proposed before the sampler, from the layer table and the sensitivity scan: each as "
            "fast as a uniform int8 configuration, its pruning placed where the scan lost the fewest points per "
            "millisecond saved:</p><ul>" + "".join(items) + "</ul>")


def _funnel_section(data: ReportData) -> str:
    """The candidates scored before the trials, the promoted ones and their trials; one line when the funnel was off
    or failed, nothing for a run from before it."""
    f = data.funnel
    if f is None:
        return ""
    line = f"<p>{html.escape(funnel_summary(f))}</p>"
    if f.status in ("off", "failed"):
        return f"<h2>Funnel</h2>{line}"
    fig = funnel_figure(f)
    # plotly.js is inlined once, by the accuracy-vs-latency plot, which a run with no completed trial does not draw
    plot = fig.to_html(full_html=False, include_plotlyjs=not len(data.done)) if fig is not None else ""
    settings = f.settings
    how = ("<p class='sub'>Before the trials, each candidate was pruned and fake-quantized as its trial would be, "
           f"its BatchNorm statistics re-estimated on {settings.get('bn_images', '?')} training images (no training), "
           f"and scored on a fixed sample of {settings.get('val_images', '?')} validation images. The best of each "
           "latency target (dashed lines) by the sample's loss was promoted and fine-tuned first, best of every "
           "target before any second best. Ringed: promoted; thick ring: its trial is on the final Pareto front. "
           "Rank: among the distinct models scored in that target.</p>")
    return f"<h2>Funnel: score many, fine-tune few</h2>{line}{how}{plot}{_promoted_table(data)}"


def _promoted_table(data: ReportData) -> str:
    f = data.funnel
    if f is None or not f.promoted:
        return ""
    rows = pd.DataFrame([promoted_cells(f, p) for p in f.promoted], columns=list(PROMOTED_HEADINGS))
    cols: list[Column] = [(h, h, lambda r, h=h: html.escape(r[h])) for h in PROMOTED_HEADINGS]
    return _table(rows, cols, left={"origin"})


def _where_the_time_went(data: ReportData) -> str:
    stage = stage_figure(data.done) if len(data.done) else None
    if stage is None:
        return ""
    fig, text = stage
    return f"<h2>Where the time went</h2><p class='sub'>{text}</p>" + fig.to_html(full_html=False,
                                                                                 include_plotlyjs=False)


def _model_columns(data: ReportData) -> list[Column]:
    """Columns of the Pareto table; the baselines table shares all but the first."""

    def kernel_cell(r):
        req, on = int(r.get("int8_requested", 0) or 0), int(r.get("int8_on_integer_kernel", 0) or 0)
        cls = "ok" if on == req else "bad"
        return f"<span class='{cls}'>{on}/{req}</span>"

    return [
        ("trial", "trial", lambda r: str(int(r["trial"]))),
        ("val_accuracy", "val acc %", lambda r: _f(r["val_accuracy"])),
        ("test_accuracy", "test acc %", lambda r: _f(r["test_accuracy"])),
        ("torch_test_accuracy", "PyTorch test %", lambda r: _f(r["torch_test_accuracy"])),
        ("latency_ms", "latency ms", lambda r: _f(r["latency_ms"], 3)),
        ("latency_p90_ms", "p90 ms", lambda r: _f(r["latency_p90_ms"], 3)),
        ("speedup", "speed-up", data.speed),
        ("size_bytes", "size MB", lambda r: _f(r["size_bytes"] / 1e6, 3)),
        ("kern", "int8 layers on integer kernels", kernel_cell),
        ("onnx", "file", lambda r: f"<code>{html.escape(str(r['onnx']))}</code>"),
    ]


def _pareto_table(data: ReportData, cols: list[Column]) -> str:
    return _table(data.pareto, cols, left={"onnx"}) if len(data.pareto) else "<p>No Pareto models.</p>"


def _baselines_table(data: ReportData, cols: list[Column]) -> str:
    """The measured baselines, the failed ones' errors, and whether any baseline dominates a Pareto model."""
    base_df = pd.DataFrame([{**b, "name": k} for k, b in data.baselines.items() if completed(b)])
    bcols = [("name", "baseline", lambda r: html.escape(BASELINE_LABELS.get(r["name"], r["name"])))] + cols[1:]
    out = _table(base_df, bcols, left={"onnx", "name"}) if len(base_df) else ""
    out += "".join(f"<p class='bad'>baseline {html.escape(k)} failed: "
                   f"{html.escape(str(b.get('error', '')))}</p>"
                   for k, b in data.baselines.items() if not completed(b))
    dominated_by = dominated_by_baselines(data.pareto, data.baselines)
    if len(data.pareto):
        out += ("<p class='ok'>No baseline dominates any Pareto model (validation accuracy, latency, size).</p>"
                if not dominated_by else
                "<p class='bad'>Pareto models dominated by a baseline: " + ", ".join(
                    f"trial {t} by {html.escape(BASELINE_LABELS.get(b, b))}" for t, b in dominated_by) + "</p>")
    return out


def _layer_table(data: ReportData) -> str:
    """Kept channels per group and precision per layer, one column per Pareto model."""
    space = data.meta.get("space", [])
    cfgs = {int(r["trial"]): pareto_config(r, space) for _, r in data.pareto.iterrows()}
    trials = list(cfgs)
    rows_html = []
    for s in space:
        if s["kind"] == "group":
            cells = "".join(f"<td>{cfgs[t]['kept'][s['name']][0]}/{s['channels']}</td>" for t in trials)
            n = len(s["members"])
            rows_html.append(f"<tr><td class='l'>group <code>{html.escape(s['name'])}</code> "
                             f"({n} layer{'s' if n > 1 else ''})</td>{cells}</tr>")
    for s in space:  # groups first, then layers, whatever order the space lists them in
        if s["kind"] == "layer":
            cells = "".join(f"<td class='{cfgs[t]['precision'][s['name']]}'>{cfgs[t]['precision'][s['name']]}</td>"
                            for t in trials)
            rows_html.append(f"<tr><td class='l'>layer <code>{html.escape(s['name'])}</code></td>{cells}</tr>")
    if "criterion" in data.pareto.columns:  # the space offered a choice of pruning criteria
        by_trial = dict(zip(data.pareto["trial"].astype(int), data.pareto["criterion"].fillna("l2"), strict=True))
        cells = "".join(f"<td>{html.escape(str(by_trial[t]))}</td>" for t in trials)
        rows_html.append(f"<tr><td class='l'>pruning criterion</td>{cells}</tr>")
    head = "".join(f"<th>trial {t}</th>" for t in trials)
    return (f"<div class='scroll'><table><tr><th class='l'>kept channels / precision</th>{head}</tr>"
            f"{''.join(rows_html)}</table></div>")


def _parity_section(data: ReportData) -> str:
    """Trials whose artifact disagrees with the PyTorch (fake-quant) model it was exported from; "" if none."""
    done = data.done
    if not len(done) or "torch_test_accuracy" not in done.columns:
        return ""
    gap = done["test_accuracy"] - done["torch_test_accuracy"]
    flagged = done.assign(gap=gap)[gap.abs() > PARITY_LIMIT]
    if not len(flagged):
        return ""
    on_front = set(data.pareto["trial"].astype(int))
    return (f"<h2 class='warn'>Parity: {len(flagged)} trial(s) where ONNX Runtime and PyTorch "
            f"disagree by more than {PARITY_LIMIT:g} point</h2><p class='sub'>Test accuracy of the "
            "ONNX Runtime artifact minus that of the fake-quantized PyTorch model it was exported from. "
            "The search ranks on the ONNX Runtime figure, so it is not misled; a gap means the "
            "fine-tune trained against a different quantization than the one shipped.</p>" + _table(
                flagged, [("trial", "trial", lambda r: str(int(r["trial"]))),
                          ("ort", "ONNX Runtime test %", lambda r: _f(r["test_accuracy"])),
                          ("pt", "PyTorch test %", lambda r: _f(r["torch_test_accuracy"])),
                          ("gap", "gap (points)", lambda r: f"<span class='bad'>{r['gap']:+.2f}</span>"),
                          ("pareto", "Pareto", lambda r: "yes" if int(r["trial"]) in on_front else "")]))


def _finals_section(data: ReportData) -> str:
    """The models `autocompress finalize` fine-tuned for longer, beside their trial as searched."""
    if not data.finals:
        return ""
    rows = []
    for f in data.finals:
        rows.append({"model": f"trial {f['trial']} as searched", "epochs": "", "onnx": "", **f["searched"]})
        rows.append({"model": f"final <code>{html.escape(f['name'])}</code>", "onnx": f["onnx"], **f["final"],
                     "epochs": f"{f['epochs_done']}/{f['epochs']}"})
        for r in rows[-2:]:
            r["speed"] = f"{f['fp32']['latency_ms'] / r['latency_ms']:.2f}x"
    cols: list[Column] = [
        ("model", "model", lambda r: r["model"]), ("epochs", "epochs", lambda r: r["epochs"]),
        ("val", "val %", lambda r: _f(r["val_accuracy"])), ("test", "test %", lambda r: _f(r["test_accuracy"])),
        ("lat", "latency ms", lambda r: _f(r["latency_ms"], 4)), ("speed", "vs FP32", lambda r: r["speed"]),
        ("size", "MB", lambda r: _f(r["size_bytes"] / 1e6, 3)), ("onnx", "file", lambda r: html.escape(r["onnx"]))]
    return ('<h2>Finalized models</h2><p class="sub">Each fine-tuned for longer on every training image by '
            "<code>autocompress finalize</code>; its latency, the trial's and FP32's were measured together, in "
            "alternating rounds.</p>" + _table(pd.DataFrame(rows), cols, left={"model", "onnx"}))


def _failures_section(data: ReportData) -> str:
    if not len(data.failed):
        return ""
    return "<h2>Failed and early-stopped trials</h2>" + _table(
        data.failed, [("trial", "trial", lambda r: str(int(r["trial"]))),
                      ("state", "state", lambda r: r["state"]),
                      ("error", "error", lambda r: html.escape(str(r.get("error", ""))))], left={"error"})
